// The KV-cache block manager (engine/kv_cache.h): block accounting, atomic reservation, release; and how the
// cache is sized (byte budget, tokens, default) and its dtype named.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <vector>

#include "engine/kv_cache.h"
#include "kernels/backend.h"
#include "kernels/error.h"

namespace qs {
namespace {

TEST(KvBlockManager, BlocksFor) {
  KvBlockManager m(8, 16);
  EXPECT_EQ(m.total(), 8);
  EXPECT_EQ(m.block_size(), 16);
  EXPECT_EQ(m.used(), 0);
  EXPECT_EQ(m.blocks_for(0), 0);
  EXPECT_EQ(m.blocks_for(1), 1);
  EXPECT_EQ(m.blocks_for(16), 1);
  EXPECT_EQ(m.blocks_for(17), 2);
  EXPECT_EQ(m.blocks_for(128), 8);
}

TEST(KvBlockManager, ReserveGrowsAndReleaseReturns) {
  KvBlockManager m(8, 16);
  std::vector<int32_t> a, b;
  ASSERT_TRUE(m.reserve(a, 20));
  EXPECT_EQ(a.size(), 2u);
  EXPECT_EQ(m.used(), 2);
  ASSERT_TRUE(m.reserve(a, 10));   // already enough: nothing changes
  EXPECT_EQ(a.size(), 2u);
  ASSERT_TRUE(m.reserve(a, 33));   // grows by one
  EXPECT_EQ(a.size(), 3u);
  ASSERT_TRUE(m.reserve(b, 80));
  EXPECT_EQ(b.size(), 5u);
  EXPECT_EQ(m.used(), 8);
  std::set<int32_t> ids(a.begin(), a.end());
  ids.insert(b.begin(), b.end());
  EXPECT_EQ(ids.size(), 8u) << "no block handed out twice";
  EXPECT_EQ(*ids.begin(), 0);
  EXPECT_EQ(*ids.rbegin(), 7);
  m.release(a);
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(m.used(), 5);
  m.release(b);
  EXPECT_EQ(m.used(), 0);
  std::vector<int32_t> c;
  ASSERT_TRUE(m.reserve(c, 128));   // everything, after it all came back
  EXPECT_EQ(m.used(), 8);
}

TEST(KvBlockManager, ReserveFailsAtomically) {
  KvBlockManager m(4, 16);
  std::vector<int32_t> a, b;
  ASSERT_TRUE(m.reserve(a, 48));   // 3 of 4 blocks
  EXPECT_FALSE(m.reserve(b, 20));  // needs 2, 1 free
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(m.used(), 3);
  const std::vector<int32_t> a_before = a;
  EXPECT_FALSE(m.reserve(a, 80));  // growing by 2 with 1 free: a stays as it was
  EXPECT_EQ(a, a_before);
  EXPECT_EQ(m.used(), 3);
  EXPECT_TRUE(m.reserve(b, 16));   // exactly the free block
  EXPECT_EQ(m.used(), 4);
  EXPECT_FALSE(m.reserve(b, 17));
  EXPECT_EQ(b.size(), 1u);
}

// SmolLM2-135M: 30 layers, 3 KV heads of 64; fp16 K and V are 23,040 bytes a token, a block of 16 is 368,640.
KvCacheConfig smollm2(DType dtype) { return KvCacheConfig{30, 0, 16, 3, 64, dtype}; }

TEST(KvCacheSizing, BytesPerToken) {
  EXPECT_EQ(smollm2(DType::F16).bytes_per_token(), 23040u);
  EXPECT_EQ(smollm2(DType::F32).bytes_per_token(), 46080u);
}

TEST(KvCacheSizing, ByteBudgetIsWholeBlocks) {
  const size_t per_token = smollm2(DType::F16).bytes_per_token();
  // 1 GiB / 368,640 B a block = 2912 blocks (46,592 tokens), the rest of the budget unused.
  EXPECT_EQ(kv_cache_blocks(int64_t(1) << 30, 0, per_token, 16, 8192, 32), 2912);
  // Exactly one sequence of the max context fits.
  EXPECT_EQ(kv_cache_blocks(512 * 368640, 0, per_token, 16, 8192, 32), 512);
}

TEST(KvCacheSizing, TokensAndDefault) {
  const size_t per_token = smollm2(DType::F16).bytes_per_token();
  EXPECT_EQ(kv_cache_blocks(0, 100, per_token, 16, 8192, 32), 7);        // rounded up to whole blocks
  EXPECT_EQ(kv_cache_blocks(0, 0, per_token, 16, 8192, 32), 4096);       // 32 x 8192 capped at 65,536 tokens
  EXPECT_EQ(kv_cache_blocks(0, 0, per_token, 16, 1024, 4), 256);         // 4 slots x 1024
  EXPECT_EQ(kv_cache_blocks(0, 0, per_token, 16, 131072, 32), 8192);     // never less than one max-context sequence
}

TEST(KvCacheSizing, BadBudgetsAreSentences) {
  const size_t per_token = smollm2(DType::F16).bytes_per_token();
  auto message = [&](int64_t bytes, int64_t tokens) -> std::string {
    try {
      kv_cache_blocks(bytes, tokens, per_token, 16, 8192, 32);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      return e.what();
    }
    return "no error";
  };
  EXPECT_NE(message(1000, 0).find("fewer than one sequence of the maximum context of 8192 tokens; give at least "
                                  "188743680 bytes"),
            std::string::npos)
      << message(1000, 0);
  EXPECT_NE(message(-1, 0).find(">= 0 bytes"), std::string::npos);
  EXPECT_NE(message(0, -5).find(">= 0 tokens"), std::string::npos);
  EXPECT_NE(message(1 << 30, 64).find("not both"), std::string::npos);
}

TEST(KvCacheDtype, Names) {
  EXPECT_EQ(parse_kv_cache_dtype("fp16"), DType::F16);
  EXPECT_EQ(parse_kv_cache_dtype("fp32"), DType::F32);
  EXPECT_FALSE(parse_kv_cache_dtype("f16").has_value());
  EXPECT_FALSE(parse_kv_cache_dtype("").has_value());
  EXPECT_STREQ(kv_cache_dtype_name(DType::F16), "fp16");
}

// The CPU backend stores fp32 and fp16, commits memory only as blocks are written, and refuses other dtypes.
TEST(KvCacheMemory, CpuCommitsAsBlocksAreWritten) {
  auto backend = make_cpu_backend(1);
  EXPECT_EQ(backend->default_kv_cache_dtype(), DType::F16);
  EXPECT_TRUE(backend->supports_kv_cache_dtype(DType::F32));
  EXPECT_FALSE(backend->supports_kv_cache_dtype(DType::BF16));
  KvCacheConfig kc{2, 1000, 16, 2, 64, DType::F16};   // 16 KiB a block
  auto cache = backend->make_kv_cache(kc);
  EXPECT_EQ(cache->bytes(), 1000u * 16 * kc.bytes_per_token());
  EXPECT_EQ(cache->committed_bytes(), 0u);
  const int64_t NH = 2, row = (NH + 2 * 2) * 64;
  std::vector<float> qkv(size_t(3 * row), 0.5f), out(size_t(3 * NH * 64));
  BatchLayout batch;
  batch.token_ids = {0, 0, 0};
  batch.positions = {0, 1, 2};
  batch.seq_of_token = {0, 0, 0};
  batch.block_tables = {{1}};   // block 1: the committed part reaches the highest block written
  batch.seq_lens = {3};
  backend->begin_batch(batch);
  for (int64_t layer = 0; layer < 2; ++layer) {
    backend->attention(Tensor{out.data(), 3, NH * 64, DType::F32}, Tensor{qkv.data(), 3, row, DType::F32}, *cache,
                       layer, NH, 2, 64);
  }
  EXPECT_EQ(cache->committed_bytes(), 2u * 16 * kc.bytes_per_token());   // blocks 0 and 1 (whole pages)
  for (float v : out) EXPECT_FLOAT_EQ(v, 0.5f);
  KvCacheConfig bad = kc;
  bad.dtype = DType::BF16;
  EXPECT_THROW(backend->make_kv_cache(bad), Error);
}

}  // namespace
}  // namespace qs
