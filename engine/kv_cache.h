// The KV-cache block manager: hands out fixed-size blocks of the backend's paged KV memory to sequences.
#pragma once
#include <cstdint>
#include <cstddef>
#include <vector>

namespace qs {

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
