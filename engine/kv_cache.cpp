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

KvBlockManager::KvBlockManager(int64_t num_blocks, int64_t block_size)
    : num_blocks_(num_blocks), block_size_(block_size) {
  free_.reserve(size_t(num_blocks));
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(int32_t(b));
}

bool KvBlockManager::reserve(std::vector<int32_t>& table, int64_t tokens) {
  const int64_t need = blocks_for(tokens) - int64_t(table.size());
  if (need <= 0) return true;
  if (need > int64_t(free_.size())) return false;
  for (int64_t i = 0; i < need; ++i) {
    table.push_back(free_.back());
    free_.pop_back();
  }
  return true;
}

void KvBlockManager::release(std::vector<int32_t>& table) {
  for (auto it = table.rbegin(); it != table.rend(); ++it) free_.push_back(*it);
  table.clear();
}

}  // namespace qs
