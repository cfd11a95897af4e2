// The Engine on the tiny random-initialised Llama fixture (CPU): request validation, stop conditions, cancel,
// seeded sampling, stats, continuous batching and batch limits. Known continuations are the fixture's
// greedy references (Hugging Face transformers, reference.json).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <deque>
#include <functional>
#include <string>
#include <vector>

#include "engine/load_engine.h"
#include "kernels/cpu/gemv.h"
#include "kernels/error.h"

namespace qs {
namespace {

// The fixture is tiny: one thread runs it faster than two, and on a shared machine OpenMP barriers between
// busy cores would dominate the run time.
class SingleThreaded : public ::testing::Environment {
 public:
  void SetUp() override { omp_set_num_threads(1); }
};
[[maybe_unused]] ::testing::Environment* const kSingleThreaded =
    ::testing::AddGlobalTestEnvironment(new SingleThreaded);

const std::string kLlama = std::string(QS_SOURCE_DIR) + "/tests/fixtures/models/llama";

// The fixture's greedy references: prompt ids and the 16 tokens transformers generates after them.
const std::vector<int32_t> kPrompt1 = {862, 221, 441, 274, 75, 296, 299, 960, 287, 79, 88, 221, 74, 527, 80, 277, 270, 310, 264};
const std::vector<int32_t> kGreedy1 = {746, 736, 609, 242, 721, 782, 68, 493, 223, 391, 912, 299, 333, 956, 435, 39};
const std::vector<int32_t> kPrompt2 = {862, 796, 442, 291, 341, 80, 442, 287, 495, 83};
const std::vector<int32_t> kGreedy2 = {343, 709, 731, 222, 88, 88, 911, 313, 426, 87, 90, 180, 271, 588, 66, 245};
const std::vector<int32_t> kPrompt3 = {55, 72, 283, 430, 290, 308, 80, 488};
const std::vector<int32_t> kGreedy3 = {625, 66, 22, 186, 947, 769, 365, 460, 590, 644, 807, 365, 105, 877, 828, 500};

LoadedEngine load(const EngineOptions& engine = {}) {
  LoadEngineOptions o;
  o.model_path = kLlama;
  o.device = "cpu";
  o.engine = engine;
  return load_engine(o);
}

std::vector<int32_t> first(const std::vector<int32_t>& v, size_t n) { return {v.begin(), v.begin() + int64_t(n)}; }

SamplingParams greedy(int32_t max_new_tokens) {
  SamplingParams p;
  p.temperature = 0;
  p.max_new_tokens = max_new_tokens;
  p.ignore_eos = true;
  return p;
}

// Everything the engine reported for one request.
struct RequestLog {
  std::vector<int32_t> ids;
  std::string text;
  std::vector<std::string> pieces;
  std::vector<GenerationEvent> events;
  FinishReason finish = FinishReason::kNone;
  int events_after_finish = 0;
  bool done() const { return finish != FinishReason::kNone; }
};
EventCallback into(RequestLog& r) {
  return [&r](const GenerationEvent& ev) {
    if (r.done()) ++r.events_after_finish;
    r.ids.insert(r.ids.end(), ev.token_ids.begin(), ev.token_ids.end());
    r.text += ev.text;
    r.pieces.push_back(ev.text);
    r.events.push_back(ev);
    if (ev.finish != FinishReason::kNone) r.finish = ev.finish;
  };
}

void run_to_completion(Engine& e, int max_steps = 2000) {
  for (int i = 0; i < max_steps && e.has_work(); ++i) e.step();
  ASSERT_FALSE(e.has_work()) << "engine did not drain in " << max_steps << " steps";
}

void expect_error(const std::function<void()>& f, ErrorCode code, const char* what) {
  try {
    f();
    ADD_FAILURE() << what << ": no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << what << ": " << e.what();
  }
}

// --group-size auto: groups of 32 for int8-weight-only where the backend has group kernels and every linear's
// in-features are whole groups, one scale per row otherwise, nothing for the other precisions; a number given is
// kept (check_group_size judges it). The fixture (all dimensions multiples of 32) loads in groups by default.
TEST(Engine, GroupSizeAutoIsGroupsOf32WhereTheyFit) {
  ModelConfig c;
  c.hidden_size = 64, c.num_heads = 4, c.head_dim = 16, c.intermediate_size = 160;
  EXPECT_EQ(resolve_group_size(kGroupSizeAuto, Precision::kInt8WeightOnly, true, c), kInt8WeightGroup);
  EXPECT_EQ(resolve_group_size(kGroupSizeAuto, Precision::kInt8WeightOnly, false, c), 0);   // no group kernels
  EXPECT_EQ(resolve_group_size(kGroupSizeAuto, Precision::kInt8, true, c), kInt8WeightGroup);
  EXPECT_EQ(resolve_group_size(kGroupSizeAuto, Precision::kInt8Smooth, true, c), kInt8WeightGroup);
  EXPECT_EQ(resolve_group_size(kGroupSizeAuto, Precision::kInt8, false, c), 0);   // no VNNI: no W8A8 groups
  EXPECT_EQ(resolve_group_size(kGroupSizeAuto, Precision::kInt8Mixed, true, c), 0);
  EXPECT_EQ(resolve_group_size(kGroupSizeAuto, Precision::kFp16, true, c), 0);
  EXPECT_EQ(resolve_group_size(0, Precision::kInt8WeightOnly, true, c), 0);
  EXPECT_EQ(resolve_group_size(64, Precision::kInt8WeightOnly, true, c), 64);
  for (int64_t ModelConfig::*dim : {&ModelConfig::hidden_size, &ModelConfig::head_dim, &ModelConfig::intermediate_size}) {
    ModelConfig odd = c;
    odd.*dim += 4;   // 68 / 20 (x 4 heads = 80) / 164: not whole groups
    EXPECT_EQ(resolve_group_size(kGroupSizeAuto, Precision::kInt8WeightOnly, true, odd), 0);
  }
  LoadEngineOptions o;
  o.model_path = kLlama;
  o.load.precision = Precision::kInt8WeightOnly;
  EXPECT_EQ(load_engine(o).engine->model().report().group_size, kInt8WeightGroup);
  o.load.precision = Precision::kInt8;   // W8A8 groups where the CPU has their VNNI kernel
  EXPECT_EQ(load_engine(o).engine->model().report().group_size, cpu::gemv_vnni_available() ? kInt8WeightGroup : 0);
  o.load.precision = Precision::kInt8Mixed;
  EXPECT_EQ(load_engine(o).engine->model().report().group_size, 0);
}

TEST(Engine, SubmitRejectsBadRequests) {
  LoadedEngine le = load();
  Engine& e = *le.engine;
  ASSERT_EQ(e.options().max_context, 128);
  RequestLog r;
  expect_error([&] { e.submit({}, greedy(4), into(r)); }, ErrorCode::kInvalidArgument, "empty prompt");
  expect_error([&] { e.submit({5, -1}, greedy(4), into(r)); }, ErrorCode::kInvalidArgument, "id -1");
  expect_error([&] { e.submit({5, 1000}, greedy(4), into(r)); }, ErrorCode::kInvalidArgument, "id == vocab");
  expect_error([&] { e.submit(kPrompt2, greedy(119), into(r)); }, ErrorCode::kInvalidArgument, "10 + 119 > 128");
  SamplingParams bad = greedy(4);
  bad.top_p = 0;
  expect_error([&] { e.submit(kPrompt2, bad, into(r)); }, ErrorCode::kInvalidArgument, "top_p 0");
  EXPECT_EQ(e.stats().waiting, 0);
  EXPECT_FALSE(e.has_work());
  EXPECT_TRUE(r.events.empty());
  // Exactly the context is fine.
  e.submit(kPrompt2, greedy(118), into(r));
  EXPECT_EQ(e.stats().waiting, 1);
}

// Not kResourceExhausted: that says "retry later", and this request can never run.
TEST(Engine, RequestLargerThanTheWholeKvCacheIsInvalidNamingTheLimit) {
  EngineOptions o;
  o.kv_cache_tokens = 32;   // two blocks of 16
  LoadedEngine le = load(o);
  Engine& e = *le.engine;
  EXPECT_EQ(e.stats().kv_blocks_total, 2);
  RequestLog r;
  expect_error([&] { e.submit(kPrompt2, greedy(40), into(r)); }, ErrorCode::kInvalidArgument,
               "the whole cache has 2 (32 tokens");
  EXPECT_FALSE(e.has_work());
  RequestLog ok;
  e.submit(kPrompt2, greedy(22), into(ok));   // 32 tokens: exactly the cache
  run_to_completion(e);
  EXPECT_EQ(ok.ids.size(), 22u);
  EXPECT_EQ(first(ok.ids, 16), kGreedy2);
  EXPECT_EQ(ok.finish, FinishReason::kLength);
  EXPECT_EQ(e.stats().kv_blocks_used, 0);
}

TEST(Engine, RequestsThatDoNotFitYetWaitForBlocks) {
  EngineOptions o;
  o.kv_cache_tokens = 64;   // four blocks: A takes 3, B needs 2
  LoadedEngine le = load(o);
  Engine& e = *le.engine;
  RequestLog a, b;
  e.submit(kPrompt1, greedy(16), into(a));   // 35 tokens: 3 blocks
  e.submit(kPrompt2, greedy(12), into(b));   // 22 tokens: 2 blocks
  e.step();
  EXPECT_EQ(e.stats().running, 1);
  EXPECT_EQ(e.stats().waiting, 1);
  EXPECT_EQ(e.stats().kv_blocks_used, 3);
  run_to_completion(e);
  EXPECT_EQ(a.ids, kGreedy1);
  EXPECT_EQ(b.ids, first(kGreedy2, 12));
  EXPECT_EQ(e.stats().kv_blocks_used, 0);
}

TEST(Engine, GenerateOnceAndMaxNewTokens) {
  LoadedEngine le = load();
  Engine& e = *le.engine;
  const GenerateResult r = generate_once(e, kPrompt3, greedy(16));
  EXPECT_EQ(r.token_ids, kGreedy3);
  EXPECT_EQ(r.finish, FinishReason::kLength);
  EXPECT_EQ(r.prompt_tokens, int32_t(kPrompt3.size()));
  EXPECT_FALSE(r.text.empty());
  for (int32_t n : {1, 5}) {
    RequestLog run;
    e.submit(kPrompt1, greedy(n), into(run));
    run_to_completion(e);
    EXPECT_EQ(run.ids, first(kGreedy1, size_t(n)));
    EXPECT_EQ(run.finish, FinishReason::kLength);
    EXPECT_EQ(run.events.back().generated_tokens, n);
    EXPECT_EQ(run.events.back().prompt_tokens, int32_t(kPrompt1.size()));
    EXPECT_EQ(run.events_after_finish, 0);
    EXPECT_EQ(run.events.size(), size_t(n)) << "one event per token";
  }
  EXPECT_EQ(e.stats().kv_blocks_used, 0);
}

TEST(Engine, ChunkedPrefillGivesTheSameTokens) {
  EngineOptions o;
  o.prefill_chunk = 4;
  o.max_batch_tokens = 7;
  LoadedEngine le = load(o);
  RequestLog a, b;
  le.engine->submit(kPrompt1, greedy(8), into(a));
  le.engine->submit(kPrompt2, greedy(8), into(b));
  while (le.engine->has_work()) {
    le.engine->step();
    ASSERT_LE(le.engine->stats().last_batch_tokens, 7);
  }
  EXPECT_EQ(a.ids, first(kGreedy1, 8));
  EXPECT_EQ(b.ids, first(kGreedy2, 8));
}

TEST(Engine, EosFinishesUnlessIgnored) {
  // Among 64 seeds (sampled in one batch), find one whose continuation reaches EOS before the limit with
  // ignore_eos on; without it, the same seed must stop right at that EOS.
  EngineOptions o;
  o.max_batch_size = 64;
  LoadedEngine le = load(o);
  Engine& e = *le.engine;
  const int32_t eos = e.tokenizer().eos_id();
  ASSERT_GE(eos, 0);
  SamplingParams p;
  p.temperature = 3.0f;   // flat enough that EOS comes up
  p.max_new_tokens = 40;
  p.ignore_eos = true;
  std::deque<RequestLog> runs(64);
  for (size_t i = 0; i < runs.size(); ++i) {
    p.seed = 1 + i;
    e.submit(kPrompt3, p, into(runs[i]));
  }
  run_to_completion(e);
  std::vector<int32_t> with_eos;
  size_t eos_at = 0;
  for (size_t i = 0; i < runs.size() && with_eos.empty(); ++i) {
    ASSERT_EQ(runs[i].finish, FinishReason::kLength);
    ASSERT_EQ(runs[i].ids.size(), 40u);
    const auto it = std::find(runs[i].ids.begin(), runs[i].ids.end() - 1, eos);
    if (it != runs[i].ids.end() - 1) {
      with_eos = runs[i].ids;
      eos_at = size_t(it - runs[i].ids.begin());
      p.seed = 1 + i;
    }
  }
  ASSERT_FALSE(with_eos.empty()) << "no seed reached EOS";
  p.ignore_eos = false;
  const GenerateResult r = generate_once(e, kPrompt3, p);
  EXPECT_EQ(r.finish, FinishReason::kEos);
  EXPECT_EQ(r.token_ids, first(with_eos, eos_at + 1));
  EXPECT_EQ(e.stats().kv_blocks_used, 0);
}

TEST(Engine, StopSequences) {
  LoadedEngine le = load();
  Engine& e = *le.engine;
  const GenerateResult full = generate_once(e, kPrompt1, greedy(16));
  ASSERT_EQ(full.token_ids, kGreedy1);
  const std::string& text = full.text;
  ASSERT_GT(text.size(), 12u) << text;
  // A stop string from the middle of the known continuation (it spans tokens), one at its very start, and
  // one that never occurs: the output ends right before the first occurrence, which is not output.
  ASSERT_NE(text.find(" does"), std::string::npos) << text;
  for (size_t at : {size_t(6), size_t(0), text.find(" does") + 3}) {
    const std::string stop = text.substr(at, 5);
    const std::string expected = text.substr(0, text.find(stop));
    SCOPED_TRACE("stop '" + stop + "' in '" + text + "'");
    SamplingParams p = greedy(16);
    p.stop = {"never-in-this-text", stop};
    RequestLog streamed;
    e.submit(kPrompt1, p, into(streamed));
    run_to_completion(e);
    EXPECT_EQ(streamed.finish, FinishReason::kStop);
    EXPECT_EQ(streamed.text, expected);
    for (const auto& piece : streamed.pieces) EXPECT_EQ(piece.find(stop), std::string::npos);
    EXPECT_LT(streamed.ids.size(), kGreedy1.size());
    EXPECT_EQ(streamed.ids, first(kGreedy1, streamed.ids.size()));
    const GenerateResult unary = generate_once(e, kPrompt1, p);
    EXPECT_EQ(unary.text, streamed.text);
    EXPECT_EQ(unary.finish, FinishReason::kStop);
    EXPECT_EQ(unary.token_ids, streamed.ids);
  }
  SamplingParams never = greedy(16);
  never.stop = {"never-in-this-text"};
  const GenerateResult r = generate_once(e, kPrompt1, never);
  EXPECT_EQ(r.text, text);
  EXPECT_EQ(r.finish, FinishReason::kLength);
  EXPECT_EQ(e.stats().kv_blocks_used, 0);
}

TEST(Engine, EarliestOfSeveralStopSequencesWins) {
  // Two stop strings completed by the same token: the output ends before the one that starts first, whatever
  // their order in the request.
  LoadedEngine le = load();
  Engine& e = *le.engine;
  const std::string t0 = e.tokenizer().token_bytes(kGreedy1[0]), t1 = e.tokenizer().token_bytes(kGreedy1[1]);
  const GenerateResult full = generate_once(e, kPrompt1, greedy(16));
  ASSERT_EQ(full.text.compare(0, t0.size() + t1.size(), t0 + t1), 0) << full.text;
  ASSERT_GE(t0.size(), 3u);
  ASSERT_GE(t1.size(), 2u);
  const std::string early = t0.substr(t0.size() - 2) + t1.substr(0, 1), late = t1.substr(1);
  ASSERT_EQ(full.text.find(early), t0.size() - 2);
  ASSERT_EQ(full.text.find(late), t0.size() + 1);
  for (const auto& stops : {std::vector<std::string>{late, early}, std::vector<std::string>{early, late}}) {
    SamplingParams p = greedy(16);
    p.stop = stops;
    const GenerateResult r = generate_once(e, kPrompt1, p);
    EXPECT_EQ(r.finish, FinishReason::kStop);
    EXPECT_EQ(r.text, t0.substr(0, t0.size() - 2)) << "stops '" << stops[0] << "', '" << stops[1] << "'";
    EXPECT_EQ(r.token_ids, first(kGreedy1, 2));
  }
}

TEST(Engine, StopTokenKeepsTextHeldBackForAStopSequence) {
  // The text before a stop token is all output, also the tail held back because it began a stop string.
  LoadedEngine le = load();
  Engine& e = *le.engine;
  const std::string t0 = e.tokenizer().token_bytes(kGreedy1[0]), t1 = e.tokenizer().token_bytes(kGreedy1[1]);
  ASSERT_NE(kGreedy1[2], kGreedy1[0]);
  ASSERT_NE(kGreedy1[2], kGreedy1[1]);
  SamplingParams p = greedy(16);
  p.stop = {t1.substr(t1.size() - 1) + "\x01"};   // its first character ends the text so far; it never completes
  p.stop_token_ids = {kGreedy1[2]};
  RequestLog streamed;
  e.submit(kPrompt1, p, into(streamed));
  run_to_completion(e);
  EXPECT_EQ(streamed.finish, FinishReason::kStop);
  EXPECT_EQ(streamed.ids, first(kGreedy1, 3));
  EXPECT_EQ(streamed.text, t0 + t1);
  EXPECT_EQ(generate_once(e, kPrompt1, p).text, t0 + t1);
}

TEST(Engine, StopTokenIds) {
  LoadedEngine le = load();
  Engine& e = *le.engine;
  const GenerateResult full = generate_once(e, kPrompt1, greedy(16));
  // The first token from the fourth on that has not appeared before it.
  size_t j = 3;
  while (std::find(kGreedy1.begin(), kGreedy1.begin() + int64_t(j), kGreedy1[j]) != kGreedy1.begin() + int64_t(j)) ++j;
  SamplingParams p = greedy(16);
  p.stop_token_ids = {999, kGreedy1[j]};
  const GenerateResult r = generate_once(e, kPrompt1, p);
  EXPECT_EQ(r.finish, FinishReason::kStop);
  EXPECT_EQ(r.token_ids, first(kGreedy1, j + 1));
  EXPECT_EQ(full.text.compare(0, r.text.size(), r.text), 0) << "'" << r.text << "' is not a prefix of '" << full.text << "'";
  EXPECT_EQ(e.stats().kv_blocks_used, 0);
}

TEST(Engine, CancelWaitingAndRunning) {
  EngineOptions o;
  o.max_batch_size = 1;
  LoadedEngine le = load(o);
  Engine& e = *le.engine;
  RequestLog a, b;
  const uint64_t ia = e.submit(kPrompt1, greedy(50), into(a));
  const uint64_t ib = e.submit(kPrompt2, greedy(50), into(b));
  EXPECT_NE(ia, ib);
  e.step();
  EXPECT_EQ(e.stats().running, 1);
  EXPECT_EQ(e.stats().waiting, 1);
  EXPECT_GT(e.stats().kv_blocks_used, 0);
  e.cancel(ib);   // waiting: finished now
  EXPECT_EQ(b.finish, FinishReason::kCancelled);
  EXPECT_TRUE(b.ids.empty());
  EXPECT_EQ(e.stats().waiting, 0);
  e.step();
  const size_t before = a.ids.size();
  EXPECT_GE(before, 1u);
  e.cancel(ia);   // running: finished at the next step
  e.step();
  EXPECT_EQ(a.finish, FinishReason::kCancelled);
  EXPECT_EQ(a.ids.size(), before) << "no token after the cancel";
  EXPECT_EQ(e.stats().running, 0);
  EXPECT_EQ(e.stats().kv_blocks_used, 0);
  EXPECT_FALSE(e.has_work());
  e.cancel(12345);   // unknown: nothing happens
  e.step();
  EXPECT_EQ(a.events_after_finish + b.events_after_finish, 0);
}

SamplingParams seeded(uint64_t seed, int32_t max_new_tokens = 24) {
  SamplingParams p;
  p.temperature = 1.5f;
  p.top_k = 50;
  p.top_p = 0.95f;
  p.seed = seed;
  p.max_new_tokens = max_new_tokens;
  p.ignore_eos = true;
  return p;
}

TEST(Engine, SeededSamplingIsReproducibleAndIndependentOfTheBatch) {
  LoadedEngine e1 = load(), e2 = load();
  const GenerateResult r1 = generate_once(*e1.engine, kPrompt2, seeded(777));
  const GenerateResult r2 = generate_once(*e2.engine, kPrompt2, seeded(777));
  EXPECT_EQ(r1.token_ids, r2.token_ids);
  EXPECT_EQ(r1.text, r2.text);
  const GenerateResult other = generate_once(*e1.engine, kPrompt2, seeded(778));
  EXPECT_NE(other.token_ids, r1.token_ids);
  const GenerateResult g = generate_once(*e1.engine, kPrompt2, greedy(24));
  EXPECT_NE(r1.token_ids, g.token_ids) << "sampling at temperature 1.5 should not be greedy";

  // The same request with 7 others in the batch (other prompts, seeds and lengths; submitted around it).
  std::deque<RequestLog> runs(8);
  const std::vector<int32_t>* prompts[] = {&kPrompt1, &kPrompt3, &kPrompt1, &kPrompt2, &kPrompt3, &kPrompt1, &kPrompt3, &kPrompt2};
  const size_t target = 3;
  for (size_t i = 0; i < runs.size(); ++i) {
    const SamplingParams p = i == target ? seeded(777) : seeded(100 + i, int32_t(10 + 3 * i));
    e2.engine->submit(*prompts[i], p, into(runs[i]));
  }
  int64_t widest = 0;
  while (e2.engine->has_work()) {
    e2.engine->step();
    widest = std::max(widest, e2.engine->stats().last_batch_size);
  }
  EXPECT_EQ(widest, 8);
  EXPECT_EQ(runs[target].ids, r1.token_ids);
  EXPECT_EQ(runs[target].text, r1.text);
}

TEST(Engine, StatsCounts) {
  EngineOptions o;
  o.max_batch_size = 2;
  o.kv_cache_tokens = 160;
  LoadedEngine le = load(o);
  Engine& e = *le.engine;
  EngineStats s = e.stats();
  EXPECT_EQ(s.kv_blocks_total, 10);
  EXPECT_EQ(s.steps, 0);
  RequestLog a, b, c;
  e.submit(kPrompt1, greedy(4), into(a));   // 23 tokens: 2 blocks
  e.submit(kPrompt2, greedy(4), into(b));   // 14 tokens: 1 block
  e.submit(kPrompt3, greedy(4), into(c));
  s = e.stats();
  EXPECT_EQ(s.waiting, 3);
  EXPECT_EQ(s.running, 0);
  EXPECT_EQ(s.kv_blocks_used, 0);
  e.step();
  s = e.stats();
  EXPECT_EQ(s.steps, 1);
  EXPECT_EQ(s.running, 2);
  EXPECT_EQ(s.waiting, 1);
  EXPECT_EQ(s.last_batch_size, 2);
  EXPECT_EQ(s.last_batch_tokens, int64_t(kPrompt1.size() + kPrompt2.size()));
  EXPECT_EQ(s.kv_blocks_used, 3);
  e.step();
  s = e.stats();
  EXPECT_EQ(s.steps, 2);
  EXPECT_EQ(s.last_batch_size, 2);
  EXPECT_EQ(s.last_batch_tokens, 2);   // two decode tokens
  int steps = 2;
  while (e.has_work()) {
    e.step();
    ++steps;
  }
  s = e.stats();
  EXPECT_EQ(s.steps, steps);
  EXPECT_EQ(s.running, 0);
  EXPECT_EQ(s.waiting, 0);
  EXPECT_EQ(s.kv_blocks_used, 0);
  EXPECT_EQ(a.ids, first(kGreedy1, 4));
  EXPECT_EQ(b.ids, first(kGreedy2, 4));
  EXPECT_EQ(c.ids, first(kGreedy3, 4));
}

TEST(Engine, ContinuousBatchingJoinsMidDecode) {
  LoadedEngine le = load();
  Engine& e = *le.engine;
  RequestLog a, b;
  e.submit(kPrompt1, greedy(16), into(a));
  for (int i = 0; i < 4; ++i) e.step();   // prefill + 3 decodes
  ASSERT_EQ(a.ids.size(), 4u);
  e.submit(kPrompt2, greedy(12), into(b));
  e.step();
  // B's prefill and A's decode token in one pass.
  EXPECT_EQ(e.stats().last_batch_size, 2);
  EXPECT_EQ(e.stats().last_batch_tokens, int64_t(1 + kPrompt2.size()));
  EXPECT_EQ(a.ids.size(), 5u);
  EXPECT_EQ(b.ids.size(), 1u);
  run_to_completion(e);
  EXPECT_EQ(a.ids, kGreedy1);
  EXPECT_EQ(b.ids, first(kGreedy2, 12));
  EXPECT_EQ(a.finish, FinishReason::kLength);
  EXPECT_EQ(b.finish, FinishReason::kLength);
}

TEST(Engine, MaxBatchSizeIsRespectedAndWaitingRequestsGetAdmitted) {
  EngineOptions o;
  o.max_batch_size = 2;
  LoadedEngine le = load(o);
  Engine& e = *le.engine;
  std::deque<RequestLog> runs(5);
  const std::vector<int32_t>* prompts[] = {&kPrompt1, &kPrompt2, &kPrompt3, &kPrompt1, &kPrompt2};
  const std::vector<int32_t>* expected[] = {&kGreedy1, &kGreedy2, &kGreedy3, &kGreedy1, &kGreedy2};
  for (size_t i = 0; i < runs.size(); ++i) e.submit(*prompts[i], greedy(int32_t(3 + i)), into(runs[i]));
  int64_t max_waiting = 0;
  for (int i = 0; i < 500 && e.has_work(); ++i) {
    e.step();
    const EngineStats s = e.stats();
    ASSERT_LE(s.running, 2);
    ASSERT_LE(s.last_batch_size, 2);
    max_waiting = std::max(max_waiting, s.waiting);
  }
  EXPECT_FALSE(e.has_work());
  EXPECT_EQ(max_waiting, 3);
  for (size_t i = 0; i < runs.size(); ++i) {
    EXPECT_EQ(runs[i].finish, FinishReason::kLength) << i;
    EXPECT_EQ(runs[i].ids, first(*expected[i], 3 + i)) << i;
  }
}

TEST(Engine, LogprobsInEvents) {
  LoadedEngine le = load();
  SamplingParams p = greedy(5);
  p.logprobs = 3;
  RequestLog r;
  le.engine->submit(kPrompt3, p, into(r));
  run_to_completion(*le.engine);
  ASSERT_EQ(r.ids, first(kGreedy3, 5));
  for (const auto& ev : r.events) {
    ASSERT_EQ(ev.logprobs.size(), ev.token_ids.size());
    ASSERT_EQ(ev.top_logprobs.size(), ev.token_ids.size());
    for (size_t i = 0; i < ev.token_ids.size(); ++i) {
      EXPECT_EQ(ev.logprobs[i].token, ev.token_ids[i]);
      ASSERT_EQ(ev.top_logprobs[i].size(), 3u);
      EXPECT_EQ(ev.top_logprobs[i][0].token, ev.token_ids[i]) << "greedy picks the top token";
      EXPECT_FLOAT_EQ(ev.top_logprobs[i][0].logprob, ev.logprobs[i].logprob);
      EXPECT_LE(ev.logprobs[i].logprob, 0.0f);
      EXPECT_GE(ev.top_logprobs[i][0].logprob, ev.top_logprobs[i][1].logprob);
    }
  }
}

}  // namespace
}  // namespace qs
