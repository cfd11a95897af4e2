// Sliding-window KV freeing (engine/kv_cache.h release_front) on the tiny Mistral fixture (window 4, every layer
// sliding): a sequence gives back the blocks that slid out of its window, another request is admitted into them
// while it still decodes, and both continuations stay exactly transformers' greedy ones.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "engine/kv_cache.h"
#include "engine/load_engine.h"

namespace qs {
namespace {

const std::string kMistral = std::string(QS_SOURCE_DIR) + "/tests/fixtures/models/mistral";

struct Greedy {
  std::vector<int32_t> prompt, expected;
};
std::vector<Greedy> mistral_greedy() {
  std::ifstream in(kMistral + "/reference.json");
  const nlohmann::json ref = nlohmann::json::parse(in);
  std::vector<Greedy> out;
  for (const auto& g : ref["greedy"]) out.push_back({g["prompt_ids"], g["new_ids"]});
  return out;
}

LoadedEngine load(bool prefix_cache) {
  LoadEngineOptions o;
  o.model_path = kMistral;
  o.device = "cpu";
  o.engine.kv_block_size = 4;
  o.engine.kv_cache_tokens = 48;   // 12 blocks: A (19 + 16 tokens) takes 9, B (10 + 16) needs 7
  o.engine.prefix_cache = prefix_cache;
  return load_engine(o);
}

SamplingParams greedy(size_t n) {
  SamplingParams p;
  p.temperature = 0;
  p.max_new_tokens = int32_t(n);
  p.ignore_eos = true;
  return p;
}

class SlidingWindowKv : public ::testing::TestWithParam<bool> {};

TEST_P(SlidingWindowKv, BlocksOutsideTheWindowAreReusedWhileTheSequenceRuns) {
  const std::vector<Greedy> refs = mistral_greedy();
  ASSERT_GE(refs.size(), 2u);
  const Greedy& a = refs[0];
  const Greedy& b = refs[1];
  ASSERT_EQ(a.prompt.size(), 19u);
  ASSERT_EQ(b.prompt.size(), 10u);
  LoadedEngine le = load(GetParam());
  Engine& e = *le.engine;
  ASSERT_EQ(e.model().config().sliding_window, 4);
  std::vector<int32_t> got_a, got_b;
  bool a_done = false, b_started_while_a_ran = false;
  e.submit(a.prompt, greedy(a.expected.size()), [&](const GenerationEvent& ev) {
    got_a.insert(got_a.end(), ev.token_ids.begin(), ev.token_ids.end());
    if (ev.finish != FinishReason::kNone) a_done = true;
  });
  e.submit(b.prompt, greedy(b.expected.size()), [&](const GenerationEvent& ev) {
    if (got_b.empty() && !ev.token_ids.empty() && !a_done) b_started_while_a_ran = true;
    got_b.insert(got_b.end(), ev.token_ids.begin(), ev.token_ids.end());
  });
  e.step();   // A's whole prompt: positions 0..18; the next query (19) sees 16..19, so blocks 0..3 are outside
  EXPECT_EQ(e.stats().running, 1);
  EXPECT_LT(e.stats().kv_blocks_used, 9) << "A still holds every block it reserved";
  for (int i = 0; i < 200 && e.has_work(); ++i) e.step();
  ASSERT_FALSE(e.has_work());
  EXPECT_TRUE(b_started_while_a_ran) << "B waited for A to finish: no block was given back";
  EXPECT_EQ(got_a, a.expected);   // A never read a block after giving it back (B wrote into it)
  EXPECT_EQ(got_b, b.expected);
  EXPECT_EQ(e.stats().kv_blocks_used, 0);
}

INSTANTIATE_TEST_SUITE_P(WithPrefixCache, SlidingWindowKv, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "on" : "off"; });

TEST(KvBlockManager, ReleaseFrontGivesBackWholeBlocksBeforeTheWindow) {
  KvBlockManager m(8, 4);
  std::vector<int32_t> t;
  ASSERT_TRUE(m.reserve(t, 32));   // 8 blocks
  EXPECT_EQ(m.release_front(t, 10, 0), 0);    // no window: nothing
  EXPECT_EQ(m.release_front(t, 10, 4), 1);    // next query 10 sees 7..10: block 0 (0..3) is out, block 1 (4..7) not
  EXPECT_EQ(t[0], KvBlockManager::kReleasedBlock);
  EXPECT_EQ(m.used(), 7);
  EXPECT_EQ(m.release_front(t, 10, 4), 0);    // idempotent
  EXPECT_EQ(m.release_front(t, 19, 4), 3);    // 16..19: blocks 1..3 out
  EXPECT_EQ(m.used(), 4);
  std::vector<int32_t> other;
  ASSERT_TRUE(m.reserve(other, 16));          // the four given back serve another sequence
  EXPECT_FALSE(m.reserve(other, 20));
  m.release(t);                               // skips the released entries
  EXPECT_EQ(m.used(), 4);
  m.release(other);
  EXPECT_EQ(m.used(), 0);
}

TEST(KvBlockManager, ReleaseFrontWithPrefixCachingKeepsTheBlockBeforeAnUnhashedOne) {
  KvBlockManager m(8, 4, /*prefix_cache_seed=*/7);
  std::vector<int32_t> t;
  std::vector<int32_t> tokens(32);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t(i);
  ASSERT_TRUE(m.allocate(t, tokens, 0, 32).has_value());
  m.commit(t, tokens, 10);                    // blocks 0, 1 hashed; block 2 (8..11) not yet full
  // Next query 10, window 1: blocks 0 and 1 are out of the window, but block 2's hash will need block 1's.
  EXPECT_EQ(m.release_front(t, 10, 1), 1);
  EXPECT_EQ(m.cached(), 1);                   // block 0, hashed: kept for prefix reuse
  m.commit(t, tokens, 12);                    // block 2 hashed, chained to block 1
  EXPECT_EQ(m.release_front(t, 12, 1), 1);    // block 1; block 2 waits for block 3's hash
  m.commit(t, tokens, 16);
  m.release(t);
  std::vector<int32_t> again;
  EXPECT_EQ(m.allocate(again, tokens, 16, 32), 16);   // the whole chain is still found: hashes were kept right
  m.release(again);
}

}  // namespace
}  // namespace qs
