// Prefix caching in the Engine on the tiny random-initialised fixtures (CPU, four architectures, Gemma 3's KV in
// layer groups) and on the real models: greedy outputs are the same token ids with the cache on as with it off —
// one request after another, batched, with chunked prefill, with requests sharing a prefix that another request
// still holds, under eviction — and the cache's statistics count what was reused.
#include <gtest/gtest.h>
#include <omp.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "engine/load_engine.h"
#include "engine/model_file.h"

namespace qs {
namespace {

// One thread: the fixtures are tiny (see engine_test.cpp).
class OneThread : public ::testing::Environment {
 public:
  void SetUp() override { omp_set_num_threads(1); }
};
[[maybe_unused]] ::testing::Environment* const kOneThread = ::testing::AddGlobalTestEnvironment(new OneThread);

// Token ids below the fixtures' vocabulary of 1,000, deterministic and varied.
std::vector<int32_t> tokens(uint32_t seed, size_t n) {
  std::vector<int32_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = int32_t((seed * 7919u + uint32_t(i) * 104729u + (uint32_t(i) * i) % 97u) % 997u) + 2;
  return v;
}
std::vector<int32_t> join(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// A 40-token system prompt (two full blocks of 16 and half of a third) and users' turns after it.
const std::vector<int32_t> kSystem = tokens(1, 40);
const std::vector<int32_t> kUserA = join(kSystem, tokens(2, 7));
const std::vector<int32_t> kUserB = join(kSystem, tokens(3, 12));
const std::vector<int32_t> kUserC = join(kSystem, tokens(4, 1));
const std::vector<int32_t> kOther = tokens(5, 35);

// A request of a scenario: its prompt, how many tokens it generates, and the engine step it is submitted before.
struct Request {
  std::vector<int32_t> prompt;
  int32_t new_tokens = 12;
  int submit_at_step = 0;
};

struct Outcome {
  std::vector<std::vector<int32_t>> ids;   // per request
  EngineStats stats;                       // after the last step
  int64_t max_blocks_used = 0;
};

// Runs the scenario on a fresh engine; every request is greedy and ignores EOS.
Outcome run_requests(const LoadEngineOptions& o, const std::vector<Request>& requests) {
  LoadedEngine le = load_engine(o);
  Engine& e = *le.engine;
  Outcome out;
  out.ids.resize(requests.size());
  size_t submitted = 0;
  for (int step = 0; step < 5000; ++step) {
    for (size_t i = 0; i < requests.size(); ++i) {
      if (requests[i].submit_at_step != step) continue;
      SamplingParams p;
      p.temperature = 0;
      p.max_new_tokens = requests[i].new_tokens;
      p.ignore_eos = true;
      e.submit(requests[i].prompt, p, [&out, i](const GenerationEvent& ev) {
        EXPECT_TRUE(ev.error.empty()) << ev.error;
        out.ids[i].insert(out.ids[i].end(), ev.token_ids.begin(), ev.token_ids.end());
      });
      ++submitted;
    }
    if (submitted == requests.size() && !e.has_work()) break;
    e.step();
    out.max_blocks_used = std::max(out.max_blocks_used, e.stats().kv_blocks_used);
  }
  EXPECT_FALSE(e.has_work());
  out.stats = e.stats();
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(out.ids[i].size(), size_t(requests[i].new_tokens)) << "request " << i;
  }
  return out;
}

class PrefixCacheEngine : public ::testing::TestWithParam<std::string> {
 protected:
  Outcome run(const std::vector<Request>& requests, EngineOptions options) {
    LoadEngineOptions o;
    o.model_path = std::string(QS_SOURCE_DIR) + "/tests/fixtures/models/" + GetParam();
    o.device = "cpu";
    o.engine = options;
    return run_requests(o, requests);
  }

  // The scenario with the cache on and off: the same token ids for every request. Returns the cached run.
  Outcome same_with_and_without(const std::vector<Request>& requests, EngineOptions options = {}) {
    options.prefix_cache = false;
    off_ = run(requests, options);
    const Outcome& off = off_;
    options.prefix_cache = true;
    const Outcome on = run(requests, options);
    for (size_t i = 0; i < requests.size(); ++i) EXPECT_EQ(on.ids[i], off.ids[i]) << "request " << i;
    EXPECT_EQ(off.stats.prefix_cache_hit_tokens, 0);
    EXPECT_EQ(off.stats.prefix_cache_queried_tokens, 0);
    EXPECT_EQ(off.stats.kv_blocks_cached, 0);
    int64_t prompt_tokens = 0;
    for (const Request& r : requests) prompt_tokens += int64_t(r.prompt.size());
    EXPECT_EQ(on.stats.prefix_cache_queried_tokens, prompt_tokens);
    EXPECT_EQ(on.stats.kv_blocks_used, 0) << "every block is back once the requests ended";
    return on;
  }
  Outcome off_;   // the last scenario's run with the cache off
};

TEST_P(PrefixCacheEngine, OneAfterAnotherReusesTheSystemPrompt) {
  // Each request is submitted after the one before has finished (12 tokens: prefill + 11 decode steps).
  const Outcome on = same_with_and_without({{kUserA, 12, 0}, {kUserB, 12, 20}, {kUserC, 12, 40}, {kUserA, 12, 60}});
  // B and C find the system prompt's two full blocks, and so does A again: its third cached block ends with
  // A's first generated token, and at most 46 of its 47 prompt tokens are looked up.
  EXPECT_EQ(on.stats.prefix_cache_hit_tokens, 32 + 32 + 32);
  EXPECT_GT(on.stats.kv_blocks_cached, 0);
}

TEST_P(PrefixCacheEngine, APromptFullyCachedStillComputesItsLastToken) {
  const std::vector<int32_t> exact = tokens(6, 32);   // two whole blocks
  const Outcome on = same_with_and_without({{exact, 4, 0}, {exact, 4, 10}, {join(exact, {9}), 4, 20}});
  // The repeat may take only 31 tokens from the cache: whole blocks, so one; the last block is computed again.
  // The longer prompt then finds both blocks.
  EXPECT_EQ(on.stats.prefix_cache_hit_tokens, 16 + 32);
}

TEST_P(PrefixCacheEngine, BatchedRequestsSharingAPrefix) {
  // A first, then B, C, A' and an unrelated prompt in one batch while A is still decoding (its blocks pinned).
  const Outcome on = same_with_and_without(
      {{kUserA, 16, 0}, {kUserB, 12, 3}, {kUserC, 12, 3}, {kOther, 10, 3}, {kUserA, 8, 3}});
  EXPECT_EQ(on.stats.prefix_cache_hit_tokens, 32 * 3);
  // B, C and A' hold A's two system-prompt blocks with A instead of copies of their own.
  EXPECT_EQ(on.max_blocks_used, off_.max_blocks_used - 3 * 2);
}

TEST_P(PrefixCacheEngine, ChunkedPrefillSharesOnlyWhatIsWritten) {
  EngineOptions o;
  o.prefill_chunk = 5;
  o.max_batch_tokens = 9;
  // B arrives while A's prefill is half done (A's first block is full and committed, its second is not).
  const Outcome on = same_with_and_without({{kUserA, 6, 0}, {kUserB, 6, 4}, {kUserC, 6, 30}}, o);
  EXPECT_EQ(on.stats.prefix_cache_hit_tokens, 16 + 32);
}

TEST_P(PrefixCacheEngine, SubmittedTogetherBothComputeAndBothAreRight) {
  // Neither has committed a block when the other is admitted: no sharing, two copies, one of them cached.
  const Outcome on = same_with_and_without({{kUserA, 6, 0}, {kUserB, 6, 0}, {kUserC, 6, 20}});
  EXPECT_EQ(on.stats.prefix_cache_hit_tokens, 32);
}

TEST_P(PrefixCacheEngine, EvictionUnderPressureKeepsOutputsRight) {
  EngineOptions o;
  o.kv_cache_tokens = 128;   // 8 blocks: one 60-token request takes 4
  o.max_batch_size = 2;
  const Outcome on = same_with_and_without({{kUserA, 12, 0},
                                            {kOther, 25, 20},   // with A's blocks cached, fits by evicting
                                            {tokens(7, 50), 12, 20},
                                            {kUserB, 12, 60},
                                            {kUserA, 12, 90}},
                                           o);
  // The third request evicts all of A's cached blocks, so B finds nothing; A's repeat finds B's system prompt.
  // gemma3's KV is in layer groups: the same budget holds twice the global blocks (one of its two layers is
  // global) and nothing is evicted, so B finds A's system prompt too.
  EXPECT_EQ(on.stats.prefix_cache_hit_tokens, GetParam() == "gemma3" ? 64 : 32);
  EXPECT_LE(on.max_blocks_used, 8);
}

TEST_P(PrefixCacheEngine, AFollowUpTurnReusesGeneratedBlocks) {
  // A conversation's next turn: the first turn's prompt, its answer and a new message. Blocks filled by
  // decoding are cached like prompt blocks.
  const Outcome first = run({{kUserA, 20, 0}}, {});
  const std::vector<int32_t> next_turn = join(join(kUserA, first.ids[0]), tokens(8, 5));
  const Outcome on = same_with_and_without({{kUserA, 20, 0}, {next_turn, 8, 30}});
  // 47 + 19 computed tokens = 4 full blocks of 16.
  EXPECT_EQ(on.stats.prefix_cache_hit_tokens, 64);
}

// gemma3: its KV cache is in two layer groups (the sliding layers' ring beside the global layers' blocks).
INSTANTIATE_TEST_SUITE_P(Fixtures, PrefixCacheEngine, ::testing::Values("llama", "gpt2", "gpt_neox", "gemma3"));

// A real model in int8 for the tests below, and a library's system prompt of `rules` rules followed by each
// question, `new_tokens` each, submitted `spacing` steps apart (so decode steps share passes with prefill chunks).
struct LibraryChat {
  LoadEngineOptions load;
  std::vector<Request> requests;
};
LibraryChat library_chat(const std::string& path, int rules, const std::vector<std::string>& questions,
                         int32_t new_tokens, int spacing) {
  LibraryChat chat;
  chat.load.model_path = path;
  chat.load.device = "cpu";
  chat.load.load.precision = Precision::kInt8;
  std::string system = "You are a careful assistant for a public library. ";
  for (int i = 0; i < rules; ++i) {
    system += "Rule " + std::to_string(i + 1) + ": answer questions about books, opening hours, membership and "
              "events politely, and say so when you do not know. ";
  }
  const Tokenizer tokenizer(ModelFile::open(path)->tokenizer_spec());
  for (const std::string& question : questions) {
    chat.requests.push_back({tokenizer.encode(system + "\nQuestion: " + question + "\nAnswer:"), new_tokens,
                             int(chat.requests.size()) * spacing});
  }
  return chat;
}

// The default model (SmolLM2-135M, real weights) in int8 on 2 threads: the greedy ids are the same with the
// prefix cache on and off and with prefill chunks of other sizes. Its int8 GEMMs sum exactly in int32 and its
// per-token activation quantization turns any last-bit difference into a rounding flip, so this holds only
// because the attention gives a position the same bits whatever pass computes it (kernels/cpu/attention_paged.h).
TEST(PrefixCacheDefaultModel, Int8GreedyIdsDoNotDependOnCacheOrChunks) {
  const std::string path = default_model_path();
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent (bash scripts/setup.sh fetches it)";
  // A system prompt past one key chunk (256 keys) and three users' questions after it.
  LibraryChat chat = library_chat(path, 14, {"When does the library open on Sundays?",
                                             "Can I borrow e-books with my card?",
                                             "Which events are there for children this month?"}, 16, 5);
  LoadEngineOptions& o = chat.load;
  const std::vector<Request>& requests = chat.requests;
  ASSERT_GT(requests[0].prompt.size(), 300u);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(2);   // key ranges split among threads in decode, not in a long prefill

  EngineOptions options;
  options.prefix_cache = false;
  o.engine = options;
  const Outcome off = run_requests(o, requests);
  EXPECT_EQ(off.stats.prefix_cache_hit_tokens, 0);
  options.prefix_cache = true;
  o.engine = options;
  const Outcome on = run_requests(o, requests);
  EXPECT_GE(on.stats.prefix_cache_hit_tokens, 2 * 256) << "the second and third find the system prompt";
  for (size_t i = 0; i < requests.size(); ++i) EXPECT_EQ(on.ids[i], off.ids[i]) << "cache on, request " << i;
  // Prefill chunks of an odd size (with the cache on, a hit's remainder is chunked too).
  options.prefill_chunk = 37;
  options.max_batch_tokens = 40;
  o.engine = options;
  const Outcome chunked = run_requests(o, requests);
  for (size_t i = 0; i < requests.size(); ++i) EXPECT_EQ(chunked.ids[i], off.ids[i]) << "chunks of 37, request " << i;
  omp_set_num_threads(saved);
}

// Gemma 3 270M (setup.sh --extra-models), its KV cache in layer groups: a system prompt past the sliding window
// of 512, so a hit shares the global blocks up to it and the last 32 sliding blocks before it, while the sliding
// blocks of its start have been evicted or are simply not needed. Same ids with the cache on and off, int8.
TEST(PrefixCacheGemma3, GreedyIdsDoNotDependOnTheCache) {
  const std::string path = std::string(QS_SOURCE_DIR) + "/models/gemma-3-270m-q4_k_m.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent (bash scripts/setup.sh --extra-models)";
  // The second is submitted while the first decodes: its decode step shares a pass with the second's prefill.
  LibraryChat chat = library_chat(path, 24, {"When does the library open on Sundays?",
                                             "Can I borrow e-books with my card?"}, 10, 4);
  LoadEngineOptions& o = chat.load;
  const std::vector<Request>& requests = chat.requests;
  ASSERT_GT(requests[0].prompt.size(), 600u) << "past the window of 512";
  const int saved = omp_get_max_threads();
  omp_set_num_threads(2);
  EngineOptions options;
  options.prefix_cache = false;
  o.engine = options;
  const Outcome off = run_requests(o, requests);
  options.prefix_cache = true;
  o.engine = options;
  const Outcome on = run_requests(o, requests);
  EXPECT_GE(on.stats.prefix_cache_hit_tokens, 592) << "the second finds the system prompt";
  EXPECT_GT(on.stats.kv_window_blocks_cached, 0);
  for (size_t i = 0; i < requests.size(); ++i) EXPECT_EQ(on.ids[i], off.ids[i]) << "cache on, request " << i;
  omp_set_num_threads(saved);
}

}  // namespace
}  // namespace qs
