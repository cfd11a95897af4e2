// The KV-cache block manager (engine/kv_cache.h): block accounting, atomic reservation, release, prefix caching
// (chain hashes, reference counts, LRU eviction, pinning); and how the cache is sized (byte budget, tokens,
// default) and its dtype named.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
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

// Prefix caching on blocks of 4 tokens.
constexpr uint64_t kSeed = 12345;
std::vector<int32_t> iota_tokens(int32_t from, size_t n) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), from);
  return v;
}
std::vector<int32_t> first_n(const std::vector<int32_t>& v, size_t n) { return {v.begin(), v.begin() + int64_t(n)}; }
std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}
// A sequence's whole life in the manager: allocated for its prompt + `extra` tokens, the prompt committed
// (as the engine does after the pass that computes it), released. Returns the cached prompt tokens it found.
int64_t run_sequence(KvBlockManager& m, const std::vector<int32_t>& prompt, int64_t extra = 0) {
  std::vector<int32_t> table;
  const std::optional<int64_t> cached = m.allocate(table, prompt, int64_t(prompt.size()) - 1,
                                                   int64_t(prompt.size()) + extra);
  EXPECT_TRUE(cached.has_value());
  m.commit(table, prompt, int64_t(prompt.size()));
  m.release(table);
  return cached.value_or(-1);
}

TEST(PrefixCache, ChainHashesShareOnlyTheSamePrefix) {
  KvBlockManager m(16, 4, kSeed);
  ASSERT_TRUE(m.prefix_caching());
  const std::vector<int32_t> a = iota_tokens(100, 10);   // blocks [100..103] [104..107], 2 tokens over
  EXPECT_EQ(run_sequence(m, a), 0);
  EXPECT_EQ(m.cached(), 2) << "the two full blocks stay cached, the partial one is freed";
  EXPECT_EQ(m.used(), 0);
  EXPECT_EQ(run_sequence(m, concat(first_n(a, 8), {1, 2, 3})), 8) << "both full blocks shared";
  EXPECT_EQ(run_sequence(m, concat(first_n(a, 6), {1, 2, 3, 4, 5})), 4) << "the second block differs";
  // The second block's tokens alone, after another first block, are a different chain.
  EXPECT_EQ(run_sequence(m, concat({7, 7, 7, 7}, {a.begin() + 4, a.end()})), 0);
  EXPECT_EQ(run_sequence(m, {a.begin() + 4, a.end()}), 0) << "position matters: not the first block";
}

TEST(PrefixCache, AtMostMaxCachedTokensAreShared) {
  KvBlockManager m(16, 4, kSeed);
  const std::vector<int32_t> p = iota_tokens(0, 8);   // exactly two blocks
  EXPECT_EQ(run_sequence(m, p), 0);
  // The same prompt again: only 7 tokens may come from the cache (the last is computed for its logits), so the
  // last block is recomputed into a fresh block and the cached one is not written.
  std::vector<int32_t> table;
  EXPECT_EQ(m.allocate(table, p, 7, 12), 4);
  ASSERT_EQ(table.size(), 3u);
  std::vector<int32_t> other;
  EXPECT_EQ(m.allocate(other, p, 8, 8), 8) << "the cached second block is still there";
  EXPECT_NE(other[1], table[1]);
  m.release(table);
  m.release(other);
}

TEST(PrefixCache, SharedBlocksAreCountedAndPinnedUntilTheLastHolderEnds) {
  KvBlockManager m(8, 4, kSeed);
  const std::vector<int32_t> p = iota_tokens(0, 9);
  std::vector<int32_t> a, b;
  ASSERT_EQ(m.allocate(a, p, 8, 12), 0);
  m.commit(a, p, 9);
  ASSERT_EQ(m.allocate(b, p, 8, 12), 8);   // shares a's two full blocks (a still runs)
  EXPECT_EQ(b[0], a[0]);
  EXPECT_EQ(b[1], a[1]);
  EXPECT_NE(b[2], a[2]);
  EXPECT_EQ(m.used(), 4) << "two shared + one each";
  m.release(a);
  EXPECT_EQ(m.used(), 3) << "b still holds the shared blocks";
  EXPECT_EQ(m.cached(), 0);
  // Everything else is asked for: the blocks b holds are not taken.
  std::vector<int32_t> c;
  ASSERT_TRUE(m.reserve(c, 20));
  EXPECT_FALSE(m.reserve(c, 24));
  for (int32_t block : c) EXPECT_TRUE(std::find(b.begin(), b.end(), block) == b.end());
  m.release(c);
  m.release(b);
  EXPECT_EQ(m.cached(), 2);
  EXPECT_EQ(m.used(), 0);
  EXPECT_EQ(run_sequence(m, p), 8);
}

TEST(PrefixCache, LeastRecentlyReleasedIsEvictedFirstAndAPrefixOutlivesItsTail) {
  KvBlockManager m(4, 4, kSeed);
  const std::vector<int32_t> x = iota_tokens(0, 9), y = iota_tokens(50, 5);
  EXPECT_EQ(run_sequence(m, x), 0);   // caches x0 x1 (x1 released before x0: a tail goes first)
  EXPECT_EQ(run_sequence(m, y), 0);   // caches y0
  EXPECT_EQ(m.cached(), 3);
  // One fresh block beyond the free one: the oldest cached block goes, x's tail x1.
  std::vector<int32_t> t;
  ASSERT_TRUE(m.reserve(t, 8));
  EXPECT_EQ(m.cached(), 2);
  m.release(t);
  EXPECT_EQ(run_sequence(m, y), 4);
  EXPECT_EQ(run_sequence(m, x), 4) << "x0 survived, x1 was evicted";
  // Every block asked for at once: all cached ones are evicted.
  std::vector<int32_t> all;
  ASSERT_TRUE(m.reserve(all, 16)) << "cached blocks are evicted before an allocation is refused";
  EXPECT_EQ(m.cached(), 0);
  m.release(all);
  EXPECT_EQ(run_sequence(m, x), 0);
}

TEST(PrefixCache, ExhaustionWithEverythingPinnedIsRefusedAndChangesNothing) {
  KvBlockManager m(4, 4, kSeed);
  const std::vector<int32_t> p = iota_tokens(0, 8);
  std::vector<int32_t> a;
  ASSERT_EQ(m.allocate(a, p, 7, 12), 0);   // 3 of 4 blocks
  m.commit(a, p, 8);
  EXPECT_EQ(run_sequence(m, iota_tokens(70, 4)), 0);   // its full block is cached in the fourth
  EXPECT_EQ(m.cached(), 1);
  std::vector<int32_t> b;
  EXPECT_FALSE(m.allocate(b, iota_tokens(90, 6), 5, 8).has_value()) << "2 needed: 1 cached, the rest pinned";
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(m.cached(), 1) << "a refused allocation evicts nothing";
  EXPECT_EQ(m.used(), 3);
  // Sharing a's pinned blocks needs only one fresh block: that fits, by evicting the cached one.
  ASSERT_EQ(m.allocate(b, p, 8, 9), 8);
  EXPECT_EQ(m.cached(), 0);
  EXPECT_EQ(m.used(), 4);
  m.release(a);
  m.release(b);
  EXPECT_EQ(m.used(), 0);
}

TEST(PrefixCache, ABlockComputedTwiceIsCachedOnce) {
  KvBlockManager m(8, 4, kSeed);
  const std::vector<int32_t> p = iota_tokens(0, 5);
  std::vector<int32_t> a, b;
  ASSERT_EQ(m.allocate(a, p, 4, 5), 0);
  ASSERT_EQ(m.allocate(b, p, 4, 5), 0);   // admitted before a's pass committed anything
  m.commit(a, p, 5);
  m.commit(b, p, 5);
  m.release(a);
  m.release(b);
  EXPECT_EQ(m.cached(), 1) << "b's copy is freed, not cached";
  EXPECT_EQ(m.used(), 0);
  EXPECT_EQ(run_sequence(m, p), 4);
}

TEST(PrefixCache, CommitHashesOnlyWrittenFullBlocksAndDecodedOnesToo) {
  KvBlockManager m(8, 4, kSeed);
  std::vector<int32_t> tokens = iota_tokens(0, 6);
  std::vector<int32_t> a;
  ASSERT_EQ(m.allocate(a, tokens, 5, 16), 0);
  m.commit(a, tokens, 3);   // a chunk of 3 prompt tokens: no block is full
  tokens.push_back(40);     // decoded tokens...
  tokens.push_back(41);
  m.commit(a, tokens, 7);   // ...fill the second block but one
  m.commit(a, tokens, 8);   // now it is full
  m.release(a);
  EXPECT_EQ(m.cached(), 2);
  EXPECT_EQ(run_sequence(m, concat(tokens, {9})), 8) << "a follow-up prompt reuses generated blocks too";
}

TEST(PrefixCache, OffFreesEverythingAndSharesNothing) {
  KvBlockManager m(8, 4);
  EXPECT_FALSE(m.prefix_caching());
  const std::vector<int32_t> p = iota_tokens(0, 9);
  EXPECT_EQ(run_sequence(m, p), 0);
  EXPECT_EQ(m.cached(), 0);
  EXPECT_EQ(run_sequence(m, p), 0);
  EXPECT_EQ(m.used(), 0);
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
  EXPECT_EQ(parse_kv_cache_dtype("bf16"), DType::BF16);
  EXPECT_EQ(parse_kv_cache_dtype("int8"), DType::I8);
}

// The CPU backend stores fp32 and fp16, commits memory only as blocks are written, and refuses other dtypes.
TEST(KvCacheMemory, CpuCommitsAsBlocksAreWritten) {
  auto backend = make_cpu_backend(1);
  EXPECT_EQ(backend->default_kv_cache_dtype(), DType::F16);
  EXPECT_TRUE(backend->supports_kv_cache_dtype(DType::F32));
  EXPECT_TRUE(backend->supports_kv_cache_dtype(DType::BF16));
  EXPECT_TRUE(backend->supports_kv_cache_dtype(DType::I8));
  EXPECT_FALSE(backend->supports_kv_cache_dtype(DType::U8));
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
  bad.dtype = DType::I32;
  EXPECT_THROW(backend->make_kv_cache(bad), Error);
}

}  // namespace
}  // namespace qs
