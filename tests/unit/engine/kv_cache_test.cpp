// The KV-cache block manager (engine/kv_cache.h): block accounting, atomic reservation, release.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <vector>

#include "engine/kv_cache.h"

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

}  // namespace
}  // namespace qs
