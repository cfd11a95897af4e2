// Per-layer-group KV (engine/kv_cache.h WindowBlocks, KvCacheConfig::layer_group) on the tiny Gemma 3 fixture
// (layer 0 slides over 4 positions, layer 1 is global): greedy tokens are transformers' and the one-table path's
// alone, batched and with chunked prefill at contexts that cross the window many times; a sequence holds only a
// ring of sliding blocks; a small KV budget runs more sequences at once; a window outside the held blocks fails.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "engine/kv_cache.h"
#include "engine/load_engine.h"
#include "kernels/error.h"

namespace qs {
namespace {

// The fixture is tiny: one thread runs it faster than two on a shared machine.
class SingleThreaded : public ::testing::Environment {
 public:
  void SetUp() override { omp_set_num_threads(1); }
};
[[maybe_unused]] ::testing::Environment* const kSingleThreaded =
    ::testing::AddGlobalTestEnvironment(new SingleThreaded);

const std::string kGemma3 = std::string(QS_SOURCE_DIR) + "/tests/fixtures/models/gemma3";
constexpr int64_t kWindow = 4;   // the fixture's sliding_window
constexpr int64_t kBlock = 4;    // so the window is one block and a context of 120 crosses it 29 times

struct Greedy {
  std::vector<int32_t> prompt, expected;
};
const nlohmann::json& reference() {
  static const nlohmann::json ref = [] {
    std::ifstream in(kGemma3 + "/reference.json");
    return nlohmann::json::parse(in);
  }();
  return ref;
}
std::vector<Greedy> gemma_greedy() {
  std::vector<Greedy> out;
  for (const auto& g : reference()["greedy"]) out.push_back({g["prompt_ids"], g["new_ids"]});
  return out;
}
// A prompt of n tokens of the fixture's perplexity text, from `from`.
std::vector<int32_t> text_prompt(size_t from, size_t n) {
  const std::vector<int32_t> ids = reference()["ppl_ids"];
  return {ids.begin() + int64_t(from), ids.begin() + int64_t(from + n)};
}

EngineOptions options(bool groups) {
  EngineOptions o;
  o.kv_block_size = kBlock;
  o.kv_layer_groups = groups;
  return o;
}
LoadedEngine load(const EngineOptions& engine) {
  LoadEngineOptions o;
  o.model_path = kGemma3;
  o.device = "cpu";
  o.engine = engine;
  return load_engine(o);
}

SamplingParams greedy(size_t n) {
  SamplingParams p;
  p.temperature = 0;
  p.max_new_tokens = int32_t(n);
  p.ignore_eos = true;
  return p;
}

// Runs the requests all submitted at once; returns each one's tokens. `each_step` sees the engine after each step.
std::vector<std::vector<int32_t>> run_all(Engine& e, const std::vector<std::vector<int32_t>>& prompts, size_t new_tokens,
                                          const std::function<void(Engine&)>& each_step = {}) {
  std::vector<std::vector<int32_t>> got(prompts.size());
  std::vector<std::string> errors;
  for (size_t i = 0; i < prompts.size(); ++i) {
    e.submit(prompts[i], greedy(new_tokens), [&got, &errors, i](const GenerationEvent& ev) {
      got[i].insert(got[i].end(), ev.token_ids.begin(), ev.token_ids.end());
      if (ev.finish == FinishReason::kError) errors.push_back(ev.error);
    });
  }
  for (int i = 0; i < 5000 && e.has_work(); ++i) {
    e.step();
    if (each_step) each_step(e);
  }
  EXPECT_FALSE(e.has_work());
  EXPECT_TRUE(errors.empty()) << errors.front();
  EXPECT_EQ(e.stats().kv_blocks_used, 0);
  EXPECT_EQ(e.stats().kv_window_blocks_used, 0);
  return got;
}

TEST(KvLayerGroups, TheFixtureGetsTwoGroupsAndTheOneTablePathStaysAsItWas) {
  ASSERT_EQ(reference()["greedy"].size(), 3u);
  LoadedEngine grouped = load(options(true));
  EXPECT_EQ(grouped.engine->model().config().sliding_window, kWindow);
  EXPECT_GT(grouped.engine->stats().kv_window_blocks_total, 0);
  EXPECT_TRUE(grouped.engine->options().prefix_cache) << "prefix caching works with layer groups";
  EXPECT_NE(grouped.engine->kv_layout().find("two layer groups"), std::string::npos) << grouped.engine->kv_layout();
  LoadedEngine one = load(options(false));
  EXPECT_EQ(one.engine->stats().kv_window_blocks_total, 0);
  EXPECT_TRUE(one.engine->options().prefix_cache);
  EXPECT_TRUE(one.engine->kv_layout().empty());
}

TEST(KvLayerGroups, GreedyIsTransformersAloneBatchedAndChunked) {
  const std::vector<Greedy> refs = gemma_greedy();
  std::vector<std::vector<int32_t>> prompts;
  for (const Greedy& g : refs) prompts.push_back(g.prompt);
  for (bool groups : {true, false}) {
    SCOPED_TRACE(groups ? "layer groups" : "one table");
    for (const Greedy& g : refs) {   // alone
      LoadedEngine le = load(options(groups));
      EXPECT_EQ(run_all(*le.engine, {g.prompt}, g.expected.size())[0], g.expected);
    }
    LoadedEngine batched = load(options(groups));
    const auto together = run_all(*batched.engine, prompts, 16);
    EngineOptions o = options(groups);
    o.prefill_chunk = 3;
    o.max_batch_tokens = 5;
    LoadedEngine chunked = load(o);
    const auto in_chunks = run_all(*chunked.engine, prompts, 16);
    for (size_t i = 0; i < refs.size(); ++i) {
      EXPECT_EQ(together[i], refs[i].expected) << "batched, request " << i;
      EXPECT_EQ(in_chunks[i], refs[i].expected) << "chunked, request " << i;
    }
  }
}

TEST(KvLayerGroups, LongContextsAreTheOneTablePathsTokens) {
  // 70 + 50 tokens of the fixture's 128 positions: the window of 4 is crossed 29 times.
  std::vector<std::vector<int32_t>> prompts = {text_prompt(0, 70), text_prompt(80, 70), text_prompt(160, 66)};
  for (int64_t chunk : {256, 7}) {
    SCOPED_TRACE("prefill chunk " + std::to_string(chunk));
    std::vector<std::vector<int32_t>> got[2];
    for (bool groups : {true, false}) {
      EngineOptions o = options(groups);
      o.prefill_chunk = chunk;
      o.max_batch_tokens = chunk == 256 ? 512 : 16;
      LoadedEngine le = load(o);
      got[groups] = run_all(*le.engine, prompts, 50);
      LoadedEngine alone = load(o);
      EXPECT_EQ(run_all(*alone.engine, {prompts[0]}, 50)[0], got[groups][0]) << "alone vs batched";
    }
    EXPECT_EQ(got[1], got[0]);
  }
}

TEST(KvLayerGroups, ASequenceHoldsOnlyARingOfSlidingBlocks) {
  const std::vector<int32_t> prompt = text_prompt(0, 40);
  for (int64_t chunk : {256, 8}) {
    SCOPED_TRACE("prefill chunk " + std::to_string(chunk));
    EngineOptions o = options(true);
    o.prefill_chunk = chunk;
    LoadedEngine le = load(o);
    const int64_t longest = std::min<int64_t>(chunk, int64_t(prompt.size()));
    const int64_t bound = (kWindow + longest + kBlock - 1) / kBlock + 1;   // ceil((window + chunk) / block) + 1
    const int64_t decode_bound = (kWindow + 1 + kBlock - 1) / kBlock + 1;
    int64_t steps = 0, most = 0, most_global = 0;
    const auto got = run_all(*le.engine, {prompt}, 60, [&](Engine& e) {
      const EngineStats s = e.stats();
      if (s.running == 0) return;
      ++steps;
      most = std::max(most, s.kv_window_blocks_used);
      most_global = std::max(most_global, s.kv_blocks_used);
      EXPECT_LE(s.kv_window_blocks_used, bound) << "step " << steps;
      // Once the prompt is computed (a decode step each after it), the ring is a decode step's.
      if (steps > (int64_t(prompt.size()) + chunk - 1) / chunk) {
        EXPECT_LE(s.kv_window_blocks_used, decode_bound) << "step " << steps;
      }
    });
    EXPECT_EQ(most_global, 25) << "the global layers hold the whole 100 tokens";
    EXPECT_LE(most, bound);
    EXPECT_EQ(got[0].size(), 60u);
  }
}

// Prefix caching with the groups: a system prompt, then turns that begin with it, each after the one before has
// finished, and two at once while the first still decodes. Blocks of 2, so a hit shares the global blocks up to
// it and the two or three sliding blocks of its window (4). The tokens are those with the cache off.
TEST(KvLayerGroups, APrefixHitGivesTheTokensOfNoCache) {
  const std::vector<int32_t> system = text_prompt(0, 41);
  auto turn = [&](size_t from, size_t n) {
    std::vector<int32_t> p = system;
    const std::vector<int32_t> user = text_prompt(from, n);
    p.insert(p.end(), user.begin(), user.end());
    return p;
  };
  const std::vector<std::vector<int32_t>> turns = {turn(50, 9), turn(70, 4), turn(90, 13), turn(50, 9)};
  for (int64_t chunk : {256, 5}) {
    SCOPED_TRACE("prefill chunk " + std::to_string(chunk));
    std::vector<std::vector<int32_t>> got[2];
    int64_t hits[2] = {0, 0};
    for (bool cache : {false, true}) {
      EngineOptions o = options(true);
      o.kv_block_size = 2;
      o.prefix_cache = cache;
      o.prefill_chunk = chunk;
      LoadedEngine le = load(o);
      for (const auto& t : turns) got[cache].push_back(run_all(*le.engine, {t}, 20)[0]);
      // Two at once: both find the system prompt the turns above left cached.
      const auto together = run_all(*le.engine, {turns[1], turns[2]}, 20);
      got[cache].insert(got[cache].end(), together.begin(), together.end());
      hits[cache] = le.engine->stats().prefix_cache_hit_tokens;
      if (cache) {
        EXPECT_GT(le.engine->stats().kv_window_blocks_cached, 0);
      }
    }
    EXPECT_EQ(got[1], got[0]);
    EXPECT_EQ(hits[0], 0);
    // The second and third turns find the 40 system-prompt tokens in whole blocks of 2; the repeats find their
    // whole prompts but the last token's block (50, 45 and 54 tokens: 48, 44 and 52).
    EXPECT_EQ(hits[1], 40 + 40 + 48 + 44 + 52) << "hit tokens";
  }
}

// Runs `prompts` (max_new_tokens each) in a 32 KiB cache of 64-token contexts, 4-token chunks, with the groups and
// with one table: the most requests running at once and the tokens, [0] one table, [1] groups.
struct BudgetRun {
  int64_t most_running[2] = {0, 0};
  std::vector<std::vector<int32_t>> got[2];
};
BudgetRun run_in_32_kib(const std::vector<std::vector<int32_t>>& prompts, int32_t max_new_tokens) {
  BudgetRun r;
  for (bool groups : {true, false}) {
    EngineOptions o = options(groups);
    o.max_context = 64;
    o.prefill_chunk = 4;
    o.kv_cache_bytes = 32768;
    LoadedEngine le = load(o);
    r.got[groups] = run_all(*le.engine, prompts, max_new_tokens, [&](Engine& e) {
      r.most_running[groups] = std::max(r.most_running[groups], e.stats().running);
    });
    EXPECT_EQ(le.engine->options().kv_cache_bytes, 32768);
  }
  return r;
}

TEST(KvLayerGroups, ASmallBudgetRunsMoreSequencesAtOnce) {
  // Requests of 19 + 40 tokens in a context of 64: one table of 32 blocks (256 bytes a token) holds two; with the
  // groups (128 bytes a token each) a request takes 15 global blocks and a ring of 3 sliding ones, 512 bytes
  // each: three fit in the same 32 KiB.
  std::vector<std::vector<int32_t>> prompts;
  for (size_t i = 0; i < 5; ++i) prompts.push_back(text_prompt(i * 19, 19));
  const BudgetRun r = run_in_32_kib(prompts, 40);
  EXPECT_EQ(r.most_running[0], 2);
  EXPECT_EQ(r.most_running[1], 3);
  EXPECT_EQ(r.got[1], r.got[0]);
}

TEST(KvLayerGroups, ShortRequestsFitAsManyAsWithOneTable) {
  // Requests of 5 + 3 tokens (2 blocks) in 32 KiB: one table's 32 blocks hold 16; with the groups each takes 2
  // global blocks and a ring of 2 (never more than the sequence), 512 bytes each: 16 again. The two pools share
  // the budget, so the sliding one does not run out first.
  std::vector<std::vector<int32_t>> prompts;
  for (size_t i = 0; i < 20; ++i) prompts.push_back(text_prompt(i * 5, 5));
  const BudgetRun r = run_in_32_kib(prompts, 3);
  EXPECT_EQ(r.most_running[0], 16);
  EXPECT_EQ(r.most_running[1], 16);
  EXPECT_EQ(r.got[1], r.got[0]);
}

TEST(KvLayerGroups, ABudgetBelowOneSequenceIsRefusedWithTheNumbers) {
  EngineOptions o = options(true);
  o.max_context = 64;
  o.prefill_chunk = 4;
  o.kv_cache_bytes = 9727;   // one sequence: 16 global blocks + a ring of 3, 512 bytes each
  try {
    load(o);
    FAIL() << "a budget below one sequence was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("give at least 9728 bytes"), std::string::npos) << e.what();
  }
}

// Gemma 3 270M's KV shape (18 layers, 3 global; 1 KV head of 256; window 512; fp16) at 8,192 tokens, measured on
// a random model of that shape with a tiny hidden size (tools/make_gemma3_kv_shape.py DIR, then
// QUANTSERVE_GEMMA3_KV_SHAPE=DIR): the KV bytes a sequence holds at admission and while it decodes, and how many
// such sequences a 1 GiB cache runs at once, with one table and with layer groups. Skipped without the variable.
TEST(KvLayerGroups, Gemma3_270mShapeAt8kTokens) {
  const char* dir = std::getenv("QUANTSERVE_GEMMA3_KV_SHAPE");
  if (!dir || !*dir) GTEST_SKIP() << "set QUANTSERVE_GEMMA3_KV_SHAPE to a model made by tools/make_gemma3_kv_shape.py";
  omp_set_num_threads(2);
  constexpr int64_t kContext = 8192, kNew = 16;
  std::vector<int32_t> prompt(size_t(kContext - kNew));
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t(1 + i * 7 % 997);
  for (bool groups : {false, true}) {
    LoadEngineOptions lo;
    lo.model_path = dir;
    lo.device = "cpu";
    lo.engine.max_context = kContext;
    lo.engine.kv_cache_bytes = int64_t(1) << 30;
    lo.engine.kv_layer_groups = groups;
    LoadedEngine le = load_engine(lo);
    Engine& e = *le.engine;
    // How many 8k-token sequences run at once: admission takes all that fit before the first pass.
    std::vector<uint64_t> ids;
    for (int i = 0; i < 40; ++i) ids.push_back(e.submit(prompt, greedy(kNew), {}));
    e.step();
    const EngineStats at_once = e.stats();
    const int64_t admitted_bytes = at_once.kv_cache_used_bytes / at_once.running;
    for (uint64_t id : ids) e.cancel(id);
    while (e.has_work()) e.step();
    // One sequence to its end: its bytes at admission, and while it decodes (the ring shrinks once the prompt is in).
    int64_t decode_bytes = 0;
    const auto got = run_all(e, {prompt}, kNew, [&](Engine& en) {
      if (en.stats().running == 1) decode_bytes = en.stats().kv_cache_used_bytes;
    });
    EXPECT_EQ(got[0].size(), size_t(kNew));
    std::printf("gemma3-270m KV shape, %s: %lld sequences of %lld tokens at once in %.1f MiB; KV bytes a sequence "
                "holds: %lld (%.1f MB) admitted, %lld (%.1f MB) decoding\n",
                groups ? "layer groups" : "one table", (long long)at_once.running, (long long)kContext,
                double(e.options().kv_cache_bytes) / (1 << 20), (long long)admitted_bytes, double(admitted_bytes) / 1e6,
                (long long)decode_bytes, double(decode_bytes) / 1e6);
    if (!groups) {
      EXPECT_EQ(admitted_bytes, kContext * 18 * 1024);   // 151.0 MB
      EXPECT_EQ(at_once.running, 7);
    } else {
      EXPECT_EQ(admitted_bytes, 512 * 16 * 3 * 1024 + 49 * 16 * 15 * 1024);   // 25.2 + 12.0 MB
      EXPECT_EQ(decode_bytes, 512 * 16 * 3 * 1024 + 33 * 16 * 15 * 1024);     // 25.2 + 8.1 MB
      EXPECT_EQ(at_once.running, 28);
    }
  }
}

TEST(WindowBlocks, ARingCoversSlidesAndGivesBack) {
  KvBlockManager m(10, 4);
  EXPECT_EQ(WindowBlocks::ring_blocks(4, 1, 4, 1000), 2);      // a decode step: its window and its own block
  EXPECT_EQ(WindowBlocks::ring_blocks(4, 8, 4, 1000), 4);      // (4 + 8 - 2) / 4 + 2
  EXPECT_EQ(WindowBlocks::ring_blocks(512, 1, 16, 8192), 33);  // Gemma 3 270M decoding
  EXPECT_EQ(WindowBlocks::ring_blocks(512, 256, 16, 8192), 49);
  EXPECT_EQ(WindowBlocks::ring_blocks(512, 256, 16, 100), 7);  // never more than the whole sequence
  WindowBlocks w;
  ASSERT_TRUE(w.acquire(m, 4));
  EXPECT_EQ(m.promised(), 4);
  EXPECT_EQ(m.used(), 0) << "a ring is promised, its blocks taken as positions need them";
  EXPECT_EQ(w.held(), 0);
  ASSERT_TRUE(w.cover(m, 8));   // positions 0..7: blocks 0, 1
  EXPECT_EQ(w.held(), 2);
  EXPECT_EQ(m.used(), 2);
  EXPECT_EQ(w.slide(m, 8, 4), 1);   // the next query (8) sees 5..8: block 0 is out
  EXPECT_EQ(w.table()[0], KvBlockManager::kReleasedBlock);
  EXPECT_EQ(m.used(), 1) << "a block that slid out is back in the pool";
  ASSERT_TRUE(w.cover(m, 16));      // blocks 2, 3
  EXPECT_EQ(w.held(), 3);
  EXPECT_EQ(w.slide(m, 16, 4), 2);  // 13..16: blocks 1, 2 out
  ASSERT_TRUE(w.cover(m, 24));      // blocks 4, 5 take the places of 1 and 2
  EXPECT_EQ(w.held(), 3);
  EXPECT_EQ(m.used(), 3);
  EXPECT_EQ(m.promised(), 4) << "the ring never grows";
  EXPECT_FALSE(w.cover(m, 40)) << "a ring too small for a pass says so";
  EXPECT_EQ(w.held(), 4);
  w.shrink(m, 3);
  EXPECT_EQ(w.ring(), 4) << "never below the blocks held";
  EXPECT_EQ(w.slide(m, 24, 4), 2);
  w.shrink(m, 3);
  EXPECT_EQ(w.ring(), 3);
  EXPECT_EQ(m.promised(), 3);
  w.release(m);
  EXPECT_EQ(m.used(), 0);
  EXPECT_EQ(m.promised(), 0);
  WindowBlocks big;
  EXPECT_FALSE(big.acquire(m, 11)) << "more than the pool";
  EXPECT_EQ(m.promised(), 0);
  WindowBlocks a, b, c;
  ASSERT_TRUE(a.acquire(m, 4));
  ASSERT_TRUE(b.acquire(m, 6));
  EXPECT_FALSE(c.acquire(m, 1)) << "the rings promised never exceed the pool, filled or not";
  a.release(m);
  b.release(m);
}

// Two sequences with the same first 24 tokens, window 6 and blocks of 4 (the Gemma 3 case in small): the second
// finds the global blocks 0..5 and the sliding blocks of its first query's window (position 24 reads 19..24,
// blocks 4 and 5), shares them, and computes from position 24 on.
TEST(WindowBlocks, APrefixHitSharesTheLastWindowOfSlidingBlocks) {
  const uint64_t seed = 7;
  KvBlockManager global(20, 4, seed), sliding(12, 4, seed);
  std::vector<int32_t> prompt(30);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t(100 + i);
  // The first sequence computes all 30 positions in passes of 4, its ring sliding as it goes.
  std::vector<int32_t> table;
  ASSERT_TRUE(global.allocate(table, prompt, 0, 30).has_value());
  WindowBlocks first;
  const int64_t ring = WindowBlocks::ring_blocks(6, 4, 4, 30);
  ASSERT_TRUE(first.acquire(sliding, ring));
  for (int64_t n = 4; n <= 28; n += 4) {
    ASSERT_TRUE(first.cover(sliding, n));
    global.commit(table, prompt, n);
    sliding.commit(first.table(), prompt, n);
    first.slide(sliding, n, 6);
  }
  EXPECT_EQ(first.table()[0], KvBlockManager::kReleasedBlock) << "block 0 slid out long ago";
  const std::vector<int32_t> g = global.cached_blocks(prompt, 7), w = sliding.cached_blocks(prompt, 7);
  ASSERT_EQ(g.size(), 7u);
  for (int32_t b : g) EXPECT_NE(b, KvBlockManager::kReleasedBlock);
  // Every sliding block was hashed before it slid out (the pool has room, nothing was evicted).
  for (int32_t b : w) EXPECT_NE(b, KvBlockManager::kReleasedBlock);
  first.release(sliding);
  global.release(table);
  EXPECT_EQ(sliding.used(), 0);
  EXPECT_EQ(sliding.cached(), 7);

  // A hit of 6 blocks (at most 29 tokens looked up: the last is computed) needs sliding blocks [ (24+1-6)/4, 6 ).
  const WindowPrefixHit hit = window_prefix_hit(global.cached_blocks(prompt, 29 / 4),
                                                sliding.cached_blocks(prompt, 29 / 4), 6, 4);
  EXPECT_EQ(hit.blocks, 7);
  EXPECT_EQ(hit.first_sliding, (28 + 1 - 6) / 4);
  const WindowPrefixHit at_24 = window_prefix_hit(std::span<const int32_t>(g).first(6),
                                                  std::span<const int32_t>(w).first(6), 6, 4);
  EXPECT_EQ(at_24.blocks, 6);
  EXPECT_EQ(at_24.first_sliding, 4);
  WindowBlocks second;
  ASSERT_TRUE(second.acquire(sliding, ring, at_24.first_sliding, std::span<const int32_t>(w).subspan(4, 2)));
  EXPECT_EQ(second.held(), 2);
  EXPECT_EQ(second.table().size(), 6u);
  EXPECT_EQ(second.table()[3], KvBlockManager::kReleasedBlock);
  EXPECT_EQ(second.table()[4], w[4]);
  EXPECT_EQ(sliding.used(), 2) << "shared, not copied";
  ASSERT_TRUE(second.cover(sliding, 30));
  EXPECT_EQ(second.held(), 4);
  second.release(sliding);
  EXPECT_EQ(sliding.cached(), 7) << "the shared blocks are cached again, the unhashed ones free";
}

TEST(WindowBlocks, APrefixHitShrinksToWhereTheSlidingWindowIsCached) {
  constexpr int32_t kNone = KvBlockManager::kReleasedBlock;
  // Blocks of 4, window 6: a hit of h blocks needs sliding blocks [(4h - 5) / 4, h), the last two.
  const std::vector<int32_t> global = {1, 2, 3, 4, 5, 6};
  EXPECT_EQ(window_prefix_hit(global, std::vector<int32_t>{7, 8, 9, 10, 11, 12}, 6, 4).blocks, 6);
  // Block 4's sliding KV was evicted: h = 6 and 5 need it, h = 4 needs blocks 2 and 3.
  const WindowPrefixHit evicted = window_prefix_hit(global, std::vector<int32_t>{kNone, kNone, 9, 10, kNone, 12},
                                                    6, 4);
  EXPECT_EQ(evicted.blocks, 4);
  EXPECT_EQ(evicted.first_sliding, 2);
  // The old sliding blocks are not needed: only the window's.
  EXPECT_EQ(window_prefix_hit(global, std::vector<int32_t>{kNone, kNone, kNone, kNone, 11, 12}, 6, 4).blocks, 6);
  // The global pool's run ends at its first miss, whatever the sliding one has.
  EXPECT_EQ(window_prefix_hit(std::vector<int32_t>{1, 2, kNone, 4}, std::vector<int32_t>{7, 8, 9, 10}, 6, 4).blocks,
            2);
  EXPECT_EQ(window_prefix_hit(global, std::vector<int32_t>{kNone, kNone, kNone, kNone, kNone, kNone}, 6, 4).blocks,
            0);
  EXPECT_EQ(window_prefix_hit({}, {}, 6, 4).blocks, 0);
}

TEST(WindowBlocks, TheTwoPoolsShareOneBudget) {
  // Gemma 3 270M's shape in fp16, 16-token blocks: 18,432 bytes a token over all layers, 3,072 over the 3 global
  // ones, 15,360 over the 15 sliding ones; a ring of 49 at 8,192 tokens.
  const GroupedKvBlocks bytes = grouped_kv_cache_blocks(int64_t(1) << 30, 0, 18432, 3072, 15360, 16, 8192, 32, 49);
  EXPECT_EQ(bytes.budget_bytes, int64_t(1) << 30);
  EXPECT_EQ(bytes.global_blocks, (int64_t(1) << 30) / 49152);   // either pool can take the whole budget...
  EXPECT_EQ(bytes.window_blocks, 32 * 49);                       // ...but no more than max_batch_size rings
  // The default: the bytes one table would take for its tokens (65,536 of them here).
  const GroupedKvBlocks by_default = grouped_kv_cache_blocks(0, 0, 18432, 3072, 15360, 16, 8192, 32, 49);
  EXPECT_EQ(by_default.budget_bytes, int64_t(65536) * 18432);
  EXPECT_EQ(by_default.global_blocks, int64_t(65536) * 18432 / 49152);
  EXPECT_THROW(grouped_kv_cache_blocks(1 << 30, 4096, 18432, 3072, 15360, 16, 8192, 32, 49), Error);
  EXPECT_THROW(grouped_kv_cache_blocks(37208063, 0, 18432, 3072, 15360, 16, 8192, 32, 49), Error);
  EXPECT_EQ(grouped_kv_cache_blocks(37208064, 0, 18432, 3072, 15360, 16, 8192, 32, 49).budget_bytes, 37208064);
}

TEST(WindowBlocks, AWindowOutsideTheHeldBlocksFailsLoudly) {
  BatchLayout batch;
  batch.positions = {9};
  batch.seq_of_token = {0};
  batch.token_ids = {1};
  const std::vector<std::vector<int32_t>> held = {{KvBlockManager::kReleasedBlock, 5, 6}};
  EXPECT_NO_THROW(check_window_blocks_held(batch, held, 4, 4));   // 6..9: blocks 1, 2
  const std::vector<std::vector<int32_t>> early = {{KvBlockManager::kReleasedBlock, KvBlockManager::kReleasedBlock, 6}};
  try {
    check_window_blocks_held(batch, early, 4, 4);
    FAIL() << "block 1 was given back but position 9's window reads it";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInternal);
    EXPECT_NE(std::string(e.what()).find("position 9 would read KV blocks 1 to 2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("given back"), std::string::npos) << e.what();
  }
  const std::vector<std::vector<int32_t>> short_table = {{KvBlockManager::kReleasedBlock, 5}};
  EXPECT_THROW(check_window_blocks_held(batch, short_table, 4, 4), Error);   // position 9 has no block
}

TEST(WindowBlocks, TheCpuCacheKeepsEachGroupInItsOwnPool) {
  std::unique_ptr<Backend> cpu = make_cpu_backend(1);
  KvCacheConfig kc{2, 10, 4, 2, 16, DType::F16};
  kc.layer_group = {1, 0};
  kc.window_num_blocks = 3;
  EXPECT_EQ(kc.group_bytes_per_token(0), 128u);
  EXPECT_EQ(kc.group_bytes_per_token(1), 128u);
  std::unique_ptr<KvCache> cache = cpu->make_kv_cache(kc);
  EXPECT_EQ(cache->bytes(), 10u * 4 * 128 + 3u * 4 * 128);
  KvCacheConfig bad = kc;
  bad.layer_group = {1, 1};
  EXPECT_THROW(cpu->make_kv_cache(bad), Error);
}

}  // namespace
}  // namespace qs
