// The KV-cache block manager: hands out fixed-size blocks of the backend's paged KV memory to sequences and
// caches full blocks of prompts for reuse (prefix caching).
#pragma once
#include <cstdint>
#include <cstddef>
#include <list>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/backend.h"
#include "kernels/dtype.h"

namespace qs {

// KV-cache storage dtypes by their flag names: "fp32", "fp16", "bf16", "int8" (F32, F16, BF16, I8); which of
// them a backend stores is Backend::supports_kv_cache_dtype. nullopt for any other name.
std::optional<DType> parse_kv_cache_dtype(const std::string& name);
inline constexpr const char* kKvCacheDtypeNames = "fp32, fp16, bf16, int8";   // for error messages and --help
const char* kv_cache_dtype_name(DType dtype);

// The blocks a KV cache gets, from a byte budget (budget_bytes > 0), a token count (budget_tokens > 0) or, with
// neither, the default: every batch slot at the max context, capped at 65,536 tokens but never less than one
// sequence of max_context. bytes_per_token is K and V over all layers at the cache's dtype. Throws
// kInvalidArgument (a sentence naming the numbers) for negative values, both given, or a byte budget too
// small for one sequence of max_context tokens.
int64_t kv_cache_blocks(int64_t budget_bytes, int64_t budget_tokens, size_t bytes_per_token, int64_t block_size,
                        int64_t max_context, int64_t max_batch_size);

// The two pools of a KV cache in layer groups (KvCacheConfig::layer_group): the global layers' blocks, which a
// sequence holds for its whole length, and the sliding layers', of which it holds a ring (WindowBlocks).
// The two pools share one byte budget: admission fits a sequence's global blocks and ring into what the budget
// has left, so any mix of long and short requests can use all of it, and neither pool runs out first.
struct GroupedKvBlocks {
  int64_t budget_bytes = 0;    // what the blocks sequences hold may take, both pools together
  int64_t global_blocks = 0;   // the global layers' pool: the whole budget in its blocks
  int64_t window_blocks = 0;   // the sliding layers' pool: likewise, but no more than max_batch_size rings
};
// As kv_cache_blocks, for the two groups: a byte budget as given; a token budget (or the default) is the bytes
// one table for all layers would take for it (all_bytes_per_token), so no mix of requests fits fewer sequences
// than it would with one table. Throws kInvalidArgument, naming the numbers, for a budget below one sequence of
// max_context: its whole length of global blocks and `ring_blocks` (WindowBlocks::ring_blocks) sliding ones.
// The global pool is mapped for the whole budget, the sliding one for as much of it as max_batch_size sequences'
// rings can hold; on the CPU only the blocks written are committed.
GroupedKvBlocks grouped_kv_cache_blocks(int64_t budget_bytes, int64_t budget_tokens, size_t all_bytes_per_token,
                                        size_t global_bytes_per_token, size_t window_bytes_per_token,
                                        int64_t block_size, int64_t max_context, int64_t max_batch_size,
                                        int64_t ring_blocks);

// Hands out fixed-size blocks of the paged KV memory to sequences, and keeps full blocks for reuse by later
// prompts that begin with the same tokens (automatic prefix caching, as vLLM and SGLang do):
//  - a block becomes cached once all its tokens are written (commit()): it is named by a chain hash of its
//    token ids and the previous block's hash, seeded with what else decides its contents (model, precision,
//    KV dtype), so equal hashes mean equal KV;
//  - allocate() shares the longest run of cached blocks a new prompt begins with (reference count + 1): those
//    tokens are not computed again; a shared block is never written, since it is full and only positions past
//    a sequence's cached prefix are written;
//  - a block no sequence holds stays cached in an LRU list while memory allows; fresh blocks come from uncached
//    (free) ones first, then the least recently released cached block is evicted, so an allocation fails only
//    when free + cached blocks do not cover it. A block a sequence holds is never evicted.
// Without a seed (prefix caching off), released blocks are free at once and nothing is hashed.
class KvBlockManager {
 public:
  KvBlockManager(int64_t num_blocks, int64_t block_size, std::optional<uint64_t> prefix_cache_seed = std::nullopt);
  int64_t blocks_for(int64_t tokens) const { return (tokens + block_size_ - 1) / block_size_; }
  // Gives a new sequence (empty `table`) blocks for `tokens` tokens: first the cached blocks that hold the
  // longest run of whole blocks `prompt` begins with, but no more than its first `max_cached_tokens` tokens,
  // then fresh ones. Returns how many leading prompt tokens are already in the KV cache (whole blocks), or
  // nullopt if the blocks do not fit, in which case nothing changes.
  std::optional<int64_t> allocate(std::vector<int32_t>& table, std::span<const int32_t> prompt,
                                  int64_t max_cached_tokens, int64_t tokens);
  // For each of the first `blocks` whole blocks of `prompt`: the cached block that holds it (same chain hash,
  // parent and tokens) or kReleasedBlock, whether or not the blocks before it are cached. Empty without prefix
  // caching. Changes nothing.
  std::vector<int32_t> cached_blocks(std::span<const int32_t> prompt, int64_t blocks) const;
  // Grows `table` with fresh blocks so it holds `tokens` tokens; false (and nothing changes) if they do not fit.
  bool reserve(std::vector<int32_t>& table, int64_t tokens);
  // Records that the first `computed` of `tokens` are written into `table`'s blocks: each block that is now
  // full gets its chain hash and can be shared from then on. No-op without prefix caching.
  void commit(const std::vector<int32_t>& table, std::span<const int32_t> tokens, int64_t computed);
  // Returns a sequence's blocks. One that no sequence holds any more joins the LRU list if it is cached, else it
  // is free; the table is walked from its last block, so a prefix is evicted after its continuations. Entries
  // already given back by release_front() are skipped.
  void release(std::vector<int32_t>& table);
  // Sliding-window attention in every layer: a sequence whose next position is `next_position` never reads a
  // key before next_position + 1 - window again, so it gives back each leading block wholly before that (as
  // release() does: cached ones join the LRU list), leaving kReleasedBlock in its table entry so positions still
  // index the table. With prefix caching a block is kept until the block after it is hashed (commit() chains
  // each block's hash to the previous one's). Returns how many blocks it gave back. A backend's windowed
  // attention must not read a block before its earliest query's window (neither the CPU's nor the CUDA one does).
  int64_t release_front(std::vector<int32_t>& table, int64_t next_position, int64_t window);
  static constexpr int32_t kReleasedBlock = -1;
  // Rings (WindowBlocks): a pool whose sequences each hold at most a fixed number of blocks at once promises each
  // its ring at admission, and take_ring_block() then never fails: the rings promised never exceed the pool, and
  // a sequence's ring counts every block its table holds, shared ones too, so the blocks no sequence holds
  // (free or cached) are always at least the rings' empty places. A pool serves rings or allocate() / reserve(),
  // not both: those would take blocks promised to rings (they refuse while any ring is promised).
  bool promise_ring(int64_t blocks);           // false (nothing changes) if the rings would exceed the pool
  void unpromise_ring(int64_t blocks);
  int64_t promised() const { return promised_; }
  int32_t take_ring_block();                   // a fresh block for a ring's empty place
  void share(int32_t block);                   // one holder more for a cached block (found by cached_blocks())
  void give_back(int32_t block);               // one holder fewer: to the LRU list (cached) or the free stack
  int64_t used() const { return total() - free_blocks() - cached(); }   // held by sequences
  int64_t cached() const { return int64_t(lru_.size()); }              // held by none, kept for reuse
  int64_t total() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  bool prefix_caching() const { return seed_.has_value(); }

 private:
  struct Block {
    int32_t refs = 0;                 // sequences holding it
    bool hashed = false;              // full, with `hash` (and its tokens in block_tokens_)
    bool indexed = false;             // the block index_ names for `hash` (a duplicate is hashed but not indexed)
    uint64_t hash = 0;
    uint64_t parent = 0;              // the previous block's hash (the seed for a prompt's first block)
    std::list<int32_t>::iterator lru; // valid while refs == 0 and indexed
  };
  int64_t free_blocks() const { return int64_t(free_.size()); }
  uint64_t chain_hash(uint64_t parent, const int32_t* tokens) const;
  // A fresh block for a sequence: a free (uncached) one if any, else the least recently used cached one, evicted.
  int32_t take_fresh();
  void forget(int32_t block);   // drops a block's hash and index entry
  // The chain hash of the first `blocks` whole blocks of `tokens` (the seed for none).
  uint64_t prefix_hash(std::span<const int32_t> tokens, int64_t blocks) const;

  int64_t num_blocks_;
  int64_t block_size_;
  std::optional<uint64_t> seed_;
  std::vector<Block> blocks_;
  std::vector<int32_t> block_tokens_;             // (num_blocks, block_size): each hashed block's token ids
  std::vector<int32_t> free_;                     // a stack: recently freed blocks are reused first (warm)
  std::list<int32_t> lru_;                        // cached blocks no sequence holds, least recently used first
  std::unordered_map<uint64_t, int32_t> index_;   // chain hash -> cached block
  int64_t promised_ = 0;                          // blocks of the rings promised to sequences (promise_ring)
};

// Before a pass over sliding-window layers: each token's window starts in a block its sequence still holds and
// its own position has a block (the released ones are a prefix of the table, so the rest of the window is held
// too). A block given back too early would be read after another sequence wrote into it, and give wrong tokens
// without a word; instead this throws kInternal naming the position and blocks, and the pass's requests fail.
// `tables` are what the sliding layers read: batch.block_tables when every layer slides, window_block_tables
// with layer groups.
void check_window_blocks_held(const BatchLayout& batch, const std::vector<std::vector<int32_t>>& tables,
                              int64_t window, int64_t block_size);

// One sequence's blocks for the sliding layers of a model that also has global ones (Gemma 3), from the sliding
// group's own KvBlockManager: a ring of a fixed number of blocks promised at admission, what a window plus the
// longest chunk the sequence computes in one pass can touch, not its whole length; a running sequence never waits
// for memory. The table is indexed by position / block_size as the global table is. After each pass the blocks
// wholly before the next query's window leave the table (kReleasedBlock in their place, as release_front) and go
// back to the pool (cached ones to its LRU list), and the next positions take fresh ones in their ring's places.
// With prefix caching the sliding group's blocks are hashed like the global ones, so a later prompt that begins
// with the same tokens can share the last window of blocks before its hit (window_prefix_hit).
class WindowBlocks {
 public:
  // Blocks a sequence of `tokens` in all, computed `chunk` at a time at most, can hold at once with a window of
  // `window`: the positions of a pass and the window of its first: floor((window + chunk - 2) / BS) + 2 (at most
  // ceil((window + chunk) / BS) + 1), and never more than the whole sequence's.
  static int64_t ring_blocks(int64_t window, int64_t chunk, int64_t block_size, int64_t tokens);
  // At admission: promises a ring of `blocks` in `m` and, for a prefix hit, shares `shared`, the cached blocks
  // of positions from block `first_shared` on (the blocks before are never read again); false (and nothing
  // changes) if the ring does not fit. The shared blocks take places in the ring.
  bool acquire(KvBlockManager& m, int64_t blocks, int64_t first_shared = 0, std::span<const int32_t> shared = {});
  // Before a pass: the table holds positions < tokens, its new blocks in the ring's empty places. False when the
  // ring is full (it was sized too small): the table is left short, and the pass's window check fails the request.
  bool cover(KvBlockManager& m, int64_t tokens);
  // After a pass: blocks wholly before the window of next_position go back to `m`. Returns how many.
  int64_t slide(KvBlockManager& m, int64_t next_position, int64_t window);
  // Shrinks the ring to `blocks` (a sequence whose prompt is computed needs only a decode step's ring), never
  // below the blocks the table holds.
  void shrink(KvBlockManager& m, int64_t blocks);
  // Gives every block and the ring back to `m` (the end of the sequence).
  void release(KvBlockManager& m);
  const std::vector<int32_t>& table() const { return table_; }
  int64_t held() const { return held_; }   // blocks in the table now
  int64_t ring() const { return ring_; }

 private:
  std::vector<int32_t> table_;   // kReleasedBlock before the window
  int64_t ring_ = 0;
  int64_t held_ = 0;
  int64_t released_ = 0;         // table_[0, released_) are kReleasedBlock
};

// A prefix hit for a model with sliding layers beside global ones: the most whole blocks h of a prompt such that
// the global layers have all of blocks [0, h) cached and the sliding layers the blocks of the first uncached
// position's window, [first, h) with first = max(0, h * BS + 1 - window) / BS; `global` and `sliding` are the
// two pools' cached_blocks() of the prompt. A sliding layer's K/V depend on the layers below over their windows,
// so only blocks computed in full for the same tokens (the chain hash) can stand for them. Returns {h, first}.
struct WindowPrefixHit {
  int64_t blocks = 0;
  int64_t first_sliding = 0;
};
WindowPrefixHit window_prefix_hit(std::span<const int32_t> global, std::span<const int32_t> sliding, int64_t window,
                                  int64_t block_size);

}  // namespace qs
