// KV-cache block manager (see kv_cache.h).
#include "engine/kv_cache.h"

#include <algorithm>

#include "kernels/error.h"

namespace qs {

std::optional<DType> parse_kv_cache_dtype(const std::string& name) {
  if (name == "fp32") return DType::F32;
  if (name == "fp16") return DType::F16;
  if (name == "bf16") return DType::BF16;
  if (name == "int8") return DType::I8;
  return std::nullopt;
}

const char* kv_cache_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "fp32";
    case DType::F16: return "fp16";
    case DType::BF16: return "bf16";
    case DType::I8: return "int8";
    default: return dtype_name(dtype);
  }
}

int64_t kv_cache_blocks(int64_t budget_bytes, int64_t budget_tokens, size_t bytes_per_token, int64_t block_size,
                        int64_t max_context, int64_t max_batch_size) {
  QS_CHECK(budget_bytes >= 0, ErrorCode::kInvalidArgument, "the KV-cache budget must be >= 0 bytes, got ",
           budget_bytes);
  QS_CHECK(budget_tokens >= 0, ErrorCode::kInvalidArgument, "the KV-cache capacity must be >= 0 tokens, got ",
           budget_tokens);
  QS_CHECK(budget_bytes == 0 || budget_tokens == 0, ErrorCode::kInvalidArgument,
           "give the KV-cache capacity in bytes or in tokens, not both (", budget_bytes, " bytes, ", budget_tokens,
           " tokens)");
  QS_CHECK(bytes_per_token > 0 && block_size > 0 && max_context > 0, ErrorCode::kInternal,
           "KV-cache sizing needs positive shapes");
  const int64_t block_bytes = int64_t(bytes_per_token) * block_size;
  const int64_t context_blocks = (max_context + block_size - 1) / block_size;
  if (budget_bytes > 0) {
    const int64_t blocks = budget_bytes / block_bytes;
    QS_CHECK(blocks >= context_blocks, ErrorCode::kInvalidArgument, "a KV-cache budget of ", budget_bytes,
             " bytes holds ", blocks * block_size, " tokens (", bytes_per_token,
             " bytes a token), fewer than one sequence of the maximum context of ", max_context,
             " tokens; give at least ", context_blocks * block_bytes, " bytes");
    return blocks;
  }
  int64_t tokens = budget_tokens;
  if (tokens == 0) {
    // Enough for every batch slot at a modest context; long contexts are still admitted one at a time.
    tokens = std::max<int64_t>(max_context, std::min<int64_t>(std::max<int64_t>(max_batch_size, 1) * max_context,
                                                              65536));
  }
  return (tokens + block_size - 1) / block_size;
}

GroupedKvBlocks grouped_kv_cache_blocks(int64_t budget_bytes, int64_t budget_tokens, size_t all_bytes_per_token,
                                        size_t global_bytes_per_token, size_t window_bytes_per_token,
                                        int64_t block_size, int64_t max_context, int64_t max_batch_size,
                                        int64_t ring_blocks) {
  QS_CHECK(global_bytes_per_token > 0 && window_bytes_per_token > 0 && ring_blocks > 0, ErrorCode::kInternal,
           "KV-cache sizing needs positive shapes");
  GroupedKvBlocks out;
  const int64_t global_block = int64_t(global_bytes_per_token) * block_size;
  const int64_t window_block = int64_t(window_bytes_per_token) * block_size;
  if (budget_bytes > 0) {
    QS_CHECK(budget_tokens == 0, ErrorCode::kInvalidArgument,
             "give the KV-cache capacity in bytes or in tokens, not both (", budget_bytes, " bytes, ", budget_tokens,
             " tokens)");
    const int64_t context_blocks = (max_context + block_size - 1) / block_size;
    const int64_t sequence_bytes = context_blocks * global_block + ring_blocks * window_block;
    QS_CHECK(budget_bytes >= sequence_bytes, ErrorCode::kInvalidArgument, "a KV-cache budget of ", budget_bytes,
             " bytes is less than one sequence of the maximum context of ", max_context, " tokens takes (",
             sequence_bytes, " bytes: ", context_blocks, " blocks of the global layers, ", ring_blocks,
             " of the sliding ones); give at least ", sequence_bytes, " bytes");
    out.budget_bytes = budget_bytes;
  } else {
    out.budget_bytes = kv_cache_blocks(0, budget_tokens, all_bytes_per_token, block_size, max_context,
                                       max_batch_size) * block_size * int64_t(all_bytes_per_token);
  }
  out.global_blocks = out.budget_bytes / global_block;
  // No more sequences than max_batch_size run, each with a ring of at most ring_blocks.
  out.window_blocks = std::min(out.budget_bytes / window_block, std::max<int64_t>(1, max_batch_size) * ring_blocks);
  return out;
}

namespace {
// splitmix64's finalizer: every input bit reaches every output bit.
uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
}  // namespace

KvBlockManager::KvBlockManager(int64_t num_blocks, int64_t block_size, std::optional<uint64_t> prefix_cache_seed)
    : num_blocks_(num_blocks), block_size_(block_size), seed_(prefix_cache_seed), blocks_(size_t(num_blocks)) {
  free_.reserve(size_t(num_blocks));
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(int32_t(b));
  if (seed_) block_tokens_.resize(size_t(num_blocks * block_size));
}

uint64_t KvBlockManager::chain_hash(uint64_t parent, const int32_t* tokens) const {
  uint64_t h = mix64(parent ^ 0x9e3779b97f4a7c15ULL);
  for (int64_t i = 0; i < block_size_; ++i) h = mix64(h + uint64_t(uint32_t(tokens[i])));
  return h;
}

uint64_t KvBlockManager::prefix_hash(std::span<const int32_t> tokens, int64_t blocks) const {
  uint64_t h = *seed_;
  for (int64_t i = 0; i < blocks; ++i) h = chain_hash(h, tokens.data() + i * block_size_);
  return h;
}

void KvBlockManager::forget(int32_t block) {
  Block& b = blocks_[size_t(block)];
  if (b.indexed) index_.erase(b.hash);
  b.hashed = b.indexed = false;
}

int32_t KvBlockManager::take_fresh() {
  int32_t block;
  if (!free_.empty()) {
    block = free_.back();
    free_.pop_back();
  } else {
    block = lru_.front();   // allocate() checked that free + cached blocks suffice
    lru_.pop_front();
    forget(block);
  }
  blocks_[size_t(block)].refs = 1;
  return block;
}

std::vector<int32_t> KvBlockManager::cached_blocks(std::span<const int32_t> prompt, int64_t blocks) const {
  std::vector<int32_t> found;
  if (!seed_) return found;
  blocks = std::min<int64_t>(blocks, int64_t(prompt.size()) / block_size_);
  uint64_t parent = *seed_;
  for (int64_t i = 0; i < blocks; ++i) {
    const int32_t* block_prompt = prompt.data() + i * block_size_;
    const uint64_t h = chain_hash(parent, block_prompt);
    const auto it = index_.find(h);
    // The hash is 64 bits: the tokens and the parent are compared too, so a collision is a miss, not wrong KV.
    const bool same = it != index_.end() && blocks_[size_t(it->second)].parent == parent &&
                      std::equal(block_prompt, block_prompt + block_size_,
                                 block_tokens_.begin() + int64_t(it->second) * block_size_);
    found.push_back(same ? it->second : kReleasedBlock);
    parent = h;
  }
  return found;
}

std::optional<int64_t> KvBlockManager::allocate(std::vector<int32_t>& table, std::span<const int32_t> prompt,
                                                int64_t max_cached_tokens, int64_t tokens) {
  QS_CHECK(table.empty(), ErrorCode::kInternal, "allocate() is for a new sequence's empty block table");
  QS_CHECK(promised_ == 0, ErrorCode::kInternal, "allocate() on a pool that serves rings");
  std::vector<int32_t> shared = cached_blocks(prompt, std::max<int64_t>(0, max_cached_tokens) / block_size_);
  shared.erase(std::find(shared.begin(), shared.end(), kReleasedBlock), shared.end());   // the leading run
  int64_t shared_unheld = 0;   // shared blocks now in the LRU list: they stop being available to others
  for (int32_t block : shared) shared_unheld += blocks_[size_t(block)].refs == 0;
  const int64_t fresh = std::max<int64_t>(0, blocks_for(tokens) - int64_t(shared.size()));
  if (fresh > free_blocks() + cached() - shared_unheld) return std::nullopt;
  for (int32_t block : shared) {
    share(block);
    table.push_back(block);
  }
  for (int64_t i = 0; i < fresh; ++i) table.push_back(take_fresh());
  return int64_t(shared.size()) * block_size_;
}

void KvBlockManager::share(int32_t block) {
  Block& b = blocks_[size_t(block)];
  QS_CHECK(b.indexed, ErrorCode::kInternal, "only a cached block can be shared (block ", block, ")");
  if (b.refs++ == 0) lru_.erase(b.lru);
}

bool KvBlockManager::promise_ring(int64_t blocks) {
  if (blocks < 0 || promised_ + blocks > num_blocks_) return false;
  promised_ += blocks;
  return true;
}

void KvBlockManager::unpromise_ring(int64_t blocks) {
  QS_CHECK(blocks >= 0 && blocks <= promised_, ErrorCode::kInternal, "unpromise_ring(", blocks, ") with ",
           promised_, " promised");
  promised_ -= blocks;
}

int32_t KvBlockManager::take_ring_block() {
  // Never empty while promise_ring's bound holds (see kv_cache.h); a broken bound must not read an empty list.
  QS_CHECK(free_blocks() + cached() > 0, ErrorCode::kInternal, "a ring's promised block is not in the pool (",
           promised_, " promised of ", num_blocks_, ")");
  return take_fresh();
}

bool KvBlockManager::reserve(std::vector<int32_t>& table, int64_t tokens) {
  QS_CHECK(promised_ == 0, ErrorCode::kInternal, "reserve() on a pool that serves rings");
  const int64_t need = blocks_for(tokens) - int64_t(table.size());
  if (need <= 0) return true;
  if (need > free_blocks() + cached()) return false;
  for (int64_t i = 0; i < need; ++i) table.push_back(take_fresh());
  return true;
}

void KvBlockManager::commit(const std::vector<int32_t>& table, std::span<const int32_t> tokens, int64_t computed) {
  if (!seed_) return;
  const int64_t full = std::min<int64_t>(std::min<int64_t>(computed, int64_t(tokens.size())) / block_size_,
                                         int64_t(table.size()));
  // Hashed blocks are a prefix of the table (shared ones, then those committed at earlier steps).
  int64_t first = full;
  while (first > 0 && table[size_t(first - 1)] != kReleasedBlock && !blocks_[size_t(table[size_t(first - 1)])].hashed)
    --first;
  for (int64_t i = first; i < full; ++i) {
    const int32_t block = table[size_t(i)];
    QS_CHECK(block != kReleasedBlock, ErrorCode::kInternal, "commit: block ", i,
             " of a sequence was released before being hashed");
    Block& b = blocks_[size_t(block)];
    // The previous block's hash; a window ring may have given that block back already, and the chain is the
    // tokens' alone.
    const int32_t previous = i == 0 ? kReleasedBlock : table[size_t(i - 1)];
    b.parent = i == 0 ? *seed_ : previous != kReleasedBlock ? blocks_[size_t(previous)].hash : prefix_hash(tokens, i);
    const int32_t* block_tokens = tokens.data() + i * block_size_;
    b.hash = chain_hash(b.parent, block_tokens);
    b.hashed = true;
    std::copy(block_tokens, block_tokens + block_size_, block_tokens_.begin() + int64_t(block) * block_size_);
    // Another sequence may have computed the same block meanwhile (both were admitted before either committed):
    // the first stays the one later prompts find; this one is freed when its sequence ends.
    b.indexed = index_.emplace(b.hash, block).second;
  }
}

void KvBlockManager::give_back(int32_t block) {
  Block& b = blocks_[size_t(block)];
  if (--b.refs > 0) return;
  if (b.indexed) {
    b.lru = lru_.insert(lru_.end(), block);
  } else {
    forget(block);
    free_.push_back(block);
  }
}

void KvBlockManager::release(std::vector<int32_t>& table) {
  for (auto it = table.rbegin(); it != table.rend(); ++it)
    if (*it != kReleasedBlock) give_back(*it);
  table.clear();
}

int64_t KvBlockManager::release_front(std::vector<int32_t>& table, int64_t next_position, int64_t window) {
  if (window <= 0) return 0;
  // Blocks [0, end) hold only positions < next_position + 1 - window.
  int64_t end = std::max<int64_t>(0, next_position + 1 - window) / block_size_;
  end = std::min<int64_t>(end, int64_t(table.size()));
  // With prefix caching the first block kept must be hashed already: its hash chains to the last released one's.
  auto hashed = [&](int64_t i) {
    return size_t(i) < table.size() && table[size_t(i)] != kReleasedBlock && blocks_[size_t(table[size_t(i)])].hashed;
  };
  while (seed_ && end > 0 && !hashed(end)) --end;
  int64_t released = 0;
  for (int64_t i = end - 1; i >= 0 && table[size_t(i)] != kReleasedBlock; --i) {
    give_back(table[size_t(i)]);
    table[size_t(i)] = kReleasedBlock;
    ++released;
  }
  return released;
}

void check_window_blocks_held(const BatchLayout& batch, const std::vector<std::vector<int32_t>>& tables,
                              int64_t window, int64_t block_size) {
  for (size_t t = 0; t < batch.positions.size(); ++t) {
    const std::vector<int32_t>& table = tables[size_t(batch.seq_of_token[t])];
    const int64_t oldest = std::max<int64_t>(0, batch.positions[t] + 1 - window);
    const size_t block = size_t(oldest / block_size), last = size_t(batch.positions[t] / block_size);
    if (last < table.size() && table[block] != KvBlockManager::kReleasedBlock) continue;
    const bool given_back = block < table.size() && table[block] == KvBlockManager::kReleasedBlock;
    QS_FAIL(ErrorCode::kInternal, "position ", batch.positions[t], " would read KV blocks ", block, " to ", last,
            " of its table of ", table.size(), ", not all held (", given_back ? "given back" : "never taken", ")");
  }
}

int64_t WindowBlocks::ring_blocks(int64_t window, int64_t chunk, int64_t block_size, int64_t tokens) {
  QS_CHECK(window > 0 && chunk > 0 && block_size > 0 && tokens > 0, ErrorCode::kInternal,
           "a window ring needs a positive window, chunk, block size and length");
  // A pass over [n, n + chunk) after the blocks before n + 1 - window were given back holds blocks
  // floor((n + 1 - window) / BS) .. floor((n + chunk - 1) / BS).
  const int64_t ring = (window + chunk - 2) / block_size + 2;
  return std::min(ring, (tokens + block_size - 1) / block_size);
}

bool WindowBlocks::acquire(KvBlockManager& m, int64_t blocks, int64_t first_shared,
                           std::span<const int32_t> shared) {
  QS_CHECK(ring_ == 0 && table_.empty(), ErrorCode::kInternal, "a window ring is acquired once, when admitted");
  QS_CHECK(int64_t(shared.size()) <= blocks && first_shared >= 0, ErrorCode::kInternal, "a ring of ", blocks,
           " blocks cannot hold ", shared.size(), " shared ones");
  if (!m.promise_ring(blocks)) return false;
  ring_ = blocks;
  table_.assign(size_t(first_shared), KvBlockManager::kReleasedBlock);
  for (int32_t block : shared) {
    m.share(block);
    table_.push_back(block);
  }
  released_ = first_shared;
  held_ = int64_t(shared.size());
  return true;
}

bool WindowBlocks::cover(KvBlockManager& m, int64_t tokens) {
  const size_t need = size_t(m.blocks_for(tokens));
  while (table_.size() < need) {
    if (held_ >= ring_) return false;
    table_.push_back(m.take_ring_block());
    ++held_;
  }
  return true;
}

int64_t WindowBlocks::slide(KvBlockManager& m, int64_t next_position, int64_t window) {
  // Blocks [0, end) hold only positions < next_position + 1 - window.
  const int64_t end = std::min<int64_t>(std::max<int64_t>(0, next_position + 1 - window) / m.block_size(),
                                        int64_t(table_.size()));
  int64_t released = 0;
  for (; released_ < end; ++released_, ++released) {
    m.give_back(table_[size_t(released_)]);
    table_[size_t(released_)] = KvBlockManager::kReleasedBlock;
    --held_;
  }
  return released;
}

void WindowBlocks::shrink(KvBlockManager& m, int64_t blocks) {
  const int64_t to = std::max(blocks, held_);
  if (to >= ring_) return;
  m.unpromise_ring(ring_ - to);
  ring_ = to;
}

void WindowBlocks::release(KvBlockManager& m) {
  m.release(table_);
  m.unpromise_ring(ring_);
  ring_ = held_ = released_ = 0;
}

WindowPrefixHit window_prefix_hit(std::span<const int32_t> global, std::span<const int32_t> sliding, int64_t window,
                                  int64_t block_size) {
  auto first_of = [&](int64_t h) { return std::max<int64_t>(0, h * block_size + 1 - window) / block_size; };
  int64_t h = 0;
  while (h < int64_t(std::min(global.size(), sliding.size())) && global[size_t(h)] != KvBlockManager::kReleasedBlock)
    ++h;
  for (; h > 0; --h) {
    const int64_t first = first_of(h);
    bool held = true;
    for (int64_t i = first; i < h && held; ++i) held = sliding[size_t(i)] != KvBlockManager::kReleasedBlock;
    if (held) return {h, first};
  }
  return {};
}

}  // namespace qs
