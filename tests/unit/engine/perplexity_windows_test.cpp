// The windows `quantserve perplexity` scores a text in (engine/perplexity.h): Hugging Face's sliding windows and
// llama.cpp's non-overlapping chunks with the second half scored, and llama.cpp's method on the Llama fixture.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "engine/load_engine.h"
#include "engine/perplexity.h"
#include "kernels/error.h"

namespace qs {
namespace {

using W = PerplexityWindow;
constexpr PerplexityMethod kHf = PerplexityMethod::kSlidingWindow;
constexpr PerplexityMethod kLlamaCpp = PerplexityMethod::kLlamaCpp;

bool same(const std::vector<W>& a, const std::vector<W>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].start != b[i].start || a[i].length != b[i].length || a[i].first_scored != b[i].first_scored) return false;
  return true;
}

std::string show(const std::vector<W>& ws) {
  std::ostringstream s;
  for (const W& w : ws) s << "(" << w.start << "," << w.length << "," << w.first_scored << ")";
  return s.str();
}

int64_t predicted(const std::vector<W>& ws) {
  int64_t n = 0;
  for (const W& w : ws) n += w.start + w.length - w.first_scored;
  return n;
}

void expect_invalid(int64_t n, int64_t context, int64_t stride, PerplexityMethod m, const std::string& words) {
  try {
    perplexity_windows(n, context, stride, m);
    FAIL() << "context " << context << " stride " << stride << " accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
  }
}

TEST(PerplexityWindows, SlidingWindowScoresEachTokenAtMostOnce) {
  // 2048 tokens, windows of 512 every 256 (bench/quality_report.py's): 7 windows, the last one ends the text.
  const auto ws = perplexity_windows(2048, 512, 256, kHf);
  ASSERT_EQ(ws.size(), 7u) << show(ws);
  EXPECT_TRUE(same({ws.front()}, {{0, 512, 1}})) << show(ws);
  EXPECT_TRUE(same({ws[1]}, {{256, 512, 512}})) << show(ws);
  EXPECT_TRUE(same({ws.back()}, {{1536, 512, 1792}})) << show(ws);
  EXPECT_EQ(predicted(ws), 2047);
  // A remainder is a clipped last window; stride 0 or past the window means non-overlapping windows, whose first
  // tokens are context only (nothing before them in the window to predict them from).
  EXPECT_TRUE(same(perplexity_windows(10, 4, 2, kHf), {{0, 4, 1}, {2, 4, 4}, {4, 4, 6}, {6, 4, 8}}))
      << show(perplexity_windows(10, 4, 2, kHf));
  EXPECT_TRUE(same(perplexity_windows(11, 4, 2, kHf), {{0, 4, 1}, {2, 4, 4}, {4, 4, 6}, {6, 4, 8}, {8, 3, 10}}))
      << show(perplexity_windows(11, 4, 2, kHf));
  EXPECT_TRUE(same(perplexity_windows(10, 4, 0, kHf), {{0, 4, 1}, {4, 4, 5}, {8, 2, 9}}));
  EXPECT_TRUE(same(perplexity_windows(10, 4, 9, kHf), {{0, 4, 1}, {4, 4, 5}, {8, 2, 9}}));
  // Shorter than one window: one window of the whole text.
  EXPECT_TRUE(same(perplexity_windows(3, 512, 256, kHf), {{0, 3, 1}}));
  EXPECT_TRUE(perplexity_windows(0, 512, 256, kHf).empty());
}

TEST(PerplexityWindows, LlamaCppScoresTheSecondHalfOfWholeChunks) {
  // llama.cpp with -c 512 on 2048 tokens: 4 chunks, positions 257..511 of each predicted (255 a chunk).
  const auto ws = perplexity_windows(2048, 512, 0, kLlamaCpp);
  EXPECT_TRUE(same(ws, {{0, 512, 257}, {512, 512, 769}, {1024, 512, 1281}, {1536, 512, 1793}})) << show(ws);
  EXPECT_EQ(predicted(ws), 4 * 255);
  // The remainder after the last whole chunk is dropped, as llama.cpp drops it (n_chunk = tokens / n_ctx).
  EXPECT_TRUE(same(perplexity_windows(2048 + 511, 512, 0, kLlamaCpp), ws));
  EXPECT_EQ(perplexity_windows(2048 + 512, 512, 0, kLlamaCpp).size(), 5u);
  // An odd context: first = n_ctx/2 rounds down.
  EXPECT_TRUE(same(perplexity_windows(7, 7, 0, kLlamaCpp), {{0, 7, 4}}));
  EXPECT_TRUE(same(perplexity_windows(8, 4, 0, kLlamaCpp), {{0, 4, 3}, {4, 4, 7}}));
  // Shorter than one chunk: nothing to score. Context 2 scores nothing either (n_ctx - 1 - n_ctx/2 = 0).
  EXPECT_TRUE(perplexity_windows(511, 512, 0, kLlamaCpp).empty());
  EXPECT_TRUE(perplexity_windows(0, 512, 0, kLlamaCpp).empty());
  EXPECT_EQ(predicted(perplexity_windows(10, 2, 0, kLlamaCpp)), 0);
}

TEST(PerplexityWindows, BadArgumentsAreRefusedWithASentence) {
  expect_invalid(100, 1, 0, kHf, "at least 2");
  expect_invalid(100, 0, 0, kLlamaCpp, "at least 2");
  expect_invalid(100, 16, 8, kLlamaCpp, "takes no stride");
  EXPECT_EQ(parse_perplexity_method("llama.cpp"), kLlamaCpp);
  EXPECT_EQ(parse_perplexity_method("sliding-window"), kHf);
  EXPECT_STREQ(perplexity_method_name(kLlamaCpp), "llama.cpp");
  try {
    parse_perplexity_method("llamacpp");
    FAIL() << "an unknown method accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("one of: sliding-window, llama.cpp"), std::string::npos) << e.what();
  }
}

// The Llama fixture on the CPU, one thread (it is tiny).
LoadedEngine load_llama_fixture() {
  omp_set_num_threads(1);
  LoadEngineOptions o;
  o.model_path = std::string(QS_SOURCE_DIR) + "/tests/fixtures/models/llama";
  o.device = "cpu";
  return load_engine(o);
}

// n token ids of the fixture's vocabulary that no run of them repeats soon: the tests' text.
std::vector<int32_t> text_ids(int n) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back(int32_t((37 * i + 11) % 900 + 20));
  return ids;
}

// On the Llama fixture: two chunks and a remainder score as the two chunks scored alone, each with its first
// token replaced (llama.cpp's BOS), and text without a whole chunk is refused.
TEST(PerplexityLlamaCpp, ChunksScoreAloneWithTheirFirstTokenReplaced) {
  LoadedEngine loaded = load_llama_fixture();
  auto& model = const_cast<Model&>(loaded.engine->model());
  const int64_t ctx = 16;
  const std::vector<int32_t> ids = text_ids(2 * ctx + 5);
  PerplexityOptions opts;
  opts.method = kLlamaCpp;
  opts.chunk_first_token = 1;
  const PerplexityResult both = compute_perplexity(model, ids, ctx, 0, nullptr, opts);
  EXPECT_EQ(both.windows, 2);
  EXPECT_EQ(both.predicted_tokens, 2 * (ctx - 1 - ctx / 2));

  double nll = 0;
  for (int c = 0; c < 2; ++c) {
    std::vector<int32_t> chunk(ids.begin() + c * ctx, ids.begin() + (c + 1) * ctx);
    chunk[0] = 1;
    PerplexityOptions alone;
    alone.method = kLlamaCpp;
    const PerplexityResult r = compute_perplexity(model, chunk, ctx, 0, nullptr, alone);
    EXPECT_EQ(r.predicted_tokens, ctx - 1 - ctx / 2);
    nll += r.mean_nll / 2;
  }
  EXPECT_NEAR(both.mean_nll, nll, 1e-9);
  // The replacement reaches the context: without it the second chunk's scores differ.
  opts.chunk_first_token = -1;
  EXPECT_GT(std::fabs(compute_perplexity(model, ids, ctx, 0, nullptr, opts).mean_nll - both.mean_nll), 1e-7);

  const std::vector<int32_t> short_text(ids.begin(), ids.begin() + ctx - 1);
  EXPECT_THROW(compute_perplexity(model, short_text, ctx, 0, nullptr, opts), Error);
}

// The standard errors: the perplexity's from the trace's own per-token NLLs (sample deviation / sqrt(n), times the
// perplexity), and a compared run's paired Δ from the differences at each position, recomputed here in two passes.
// A run compared with itself has Δ 0 with error 0; one with the other chunk-first token has a Δ whose error is
// below the two perplexities' own (the pairing cancels the text's own spread).
TEST(PerplexityStandardError, MatchesThePerTokenNlls) {
  LoadedEngine loaded = load_llama_fixture();
  auto& model = const_cast<Model&>(loaded.engine->model());
  const std::vector<int32_t> ids = text_ids(70);
  PerplexityOptions opts;
  opts.method = kLlamaCpp;
  PerplexityTrace reference;
  reference.keep_logprobs = true;
  const PerplexityResult r = compute_perplexity(model, ids, 16, 0, &reference, opts);
  ASSERT_EQ(int64_t(reference.nll.size()), r.predicted_tokens);
  const auto spread = [](const std::vector<double>& v) {
    double mean = 0, ss = 0;
    for (double x : v) mean += x / double(v.size());
    for (double x : v) ss += (x - mean) * (x - mean);
    return std::make_pair(mean, std::sqrt(ss / double(v.size() - 1) / double(v.size())));
  };
  const auto [mean, se] = spread(reference.nll);
  EXPECT_NEAR(mean, r.mean_nll, 1e-6);
  EXPECT_NEAR(r.nll_stderr, se, 1e-6 * se);
  EXPECT_GT(r.nll_stderr, 0.01);
  EXPECT_NEAR(r.perplexity_stderr, r.perplexity * r.nll_stderr, 1e-9 * r.perplexity);

  PerplexityTrace self;
  self.reference = &reference;
  compute_perplexity(model, ids, 16, 0, &self, opts);
  const NllDelta none = paired_nll_delta(self);
  EXPECT_EQ(self.compared, r.predicted_tokens);
  EXPECT_EQ(none.mean, 0.0);
  EXPECT_EQ(none.stderr_mean, 0.0);

  PerplexityTrace other;
  other.reference = &reference;
  opts.chunk_first_token = 1;
  const PerplexityResult changed = compute_perplexity(model, ids, 16, 0, &other, opts);
  std::vector<double> deltas;
  for (size_t i = 0; i < other.nll.size(); ++i) deltas.push_back(other.nll[i] - reference.nll[i]);
  const auto [delta_mean, delta_se] = spread(deltas);
  const NllDelta d = paired_nll_delta(other);
  EXPECT_NEAR(d.mean, changed.mean_nll - r.mean_nll, 1e-9);
  EXPECT_NEAR(d.mean, delta_mean, 1e-6);
  EXPECT_NEAR(d.stderr_mean, delta_se, 1e-6 * delta_se);
  EXPECT_GT(d.stderr_mean, 0.0);
  EXPECT_LT(d.stderr_mean, r.nll_stderr);
  EXPECT_NEAR(d.perplexity_percent, 100.0 * (changed.perplexity / r.perplexity - 1.0), 1e-6);
}

// keep_logits (perplexity --save-logits) keeps, for every scored position, the very row it was scored from:
// its argmax is the trace's top-1 and its log-sum-exp less the next token's logit is the trace's NLL.
TEST(PerplexityTrace, KeptLogitsAreTheRowsEachPositionWasScoredFrom) {
  LoadedEngine loaded = load_llama_fixture();
  auto& model = const_cast<Model&>(loaded.engine->model());
  const std::vector<int32_t> ids = text_ids(40);
  PerplexityTrace trace;
  trace.keep_logits = true;
  const PerplexityResult r = compute_perplexity(model, ids, 16, 8, &trace);
  const int64_t V = model.config().vocab_size;
  ASSERT_EQ(int64_t(trace.logits.size()), r.predicted_tokens * V);
  // The scored positions in order: the first window's from 1 on, each later one's new tokens.
  std::vector<int64_t> scored;
  for (const PerplexityWindow& w : perplexity_windows(int64_t(ids.size()), 16, 8, PerplexityMethod::kSlidingWindow))
    for (int64_t p = w.first_scored; p < w.start + w.length; ++p) scored.push_back(p);
  ASSERT_EQ(int64_t(scored.size()), r.predicted_tokens);
  for (int64_t i = 0; i < r.predicted_tokens; ++i) {
    const float* row = trace.logits.data() + i * V;
    EXPECT_EQ(int32_t(std::max_element(row, row + V) - row), trace.top1[size_t(i)]) << i;
    double z = 0;
    const float m = *std::max_element(row, row + V);
    for (int64_t v = 0; v < V; ++v) z += std::exp(double(row[v] - m));
    EXPECT_NEAR(double(m) + std::log(z) - double(row[ids[size_t(scored[size_t(i)])]]), trace.nll[size_t(i)], 1e-9) << i;
  }
  PerplexityTrace without;
  compute_perplexity(model, ids, 16, 8, &without);
  EXPECT_TRUE(without.logits.empty());
}

}  // namespace
}  // namespace qs
