// The KV-cache block manager: hands out fixed-size blocks of the backend's paged KV memory to sequences.
#pragma once
#include <cstdint>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "kernels/dtype.h"

namespace qs {

// KV-cache storage dtypes by their flag names: "fp32", "fp16", "bf16", "int8" (F32, F16, BF16, I8); which of
// them a backend stores is Backend::supports_kv_cache_dtype. nullopt for any other name.
std::optional<DType> parse_kv_cache_dtype(const std::string& name);
const char* kv_cache_dtype_name(DType dtype);

// The blocks a KV cache gets, from a byte budget (budget_bytes > 0), a token count (budget_tokens > 0) or, with
// neither, the default: every batch slot at the max context, capped at 65,536 tokens but never less than one
// sequence of max_context. bytes_per_token is K and V over all layers at the cache's dtype. Throws
// kInvalidArgument (a sentence naming the numbers) for negative values, both given, or a byte budget too
// small for one sequence of max_context tokens.
int64_t kv_cache_blocks(int64_t budget_bytes, int64_t budget_tokens, size_t bytes_per_token, int64_t block_size,
                        int64_t max_context, int64_t max_batch_size);

class KvBlockManager {
 public:
  KvBlockManager(int64_t num_blocks, int64_t block_size);
  int64_t blocks_for(int64_t tokens) const { return (tokens + block_size_ - 1) / block_size_; }
  // Grows `table` so it holds `tokens` tokens; returns false (and changes nothing) if the blocks are not free.
  bool reserve(std::vector<int32_t>& table, int64_t tokens);
  // Returns a sequence's blocks to the pool; the one mutation besides reserve().
  void release(std::vector<int32_t>& table);
  int64_t used() const { return total() - int64_t(free_.size()); }
  int64_t total() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }

 private:
  int64_t num_blocks_;
  int64_t block_size_;
  std::vector<int32_t> free_;   // a stack: recently freed blocks are reused first (warm in cache)
};

}  // namespace qs
