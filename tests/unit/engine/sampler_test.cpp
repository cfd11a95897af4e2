// The sampler (engine/sampler.h): argument checks, greedy, top-k, top-p, seeds, repetition penalty, logprobs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "engine/sampler.h"
#include "kernels/error.h"

namespace qs {
namespace {

// V = vocab.

void expect_invalid(const std::function<void(SamplingParams&)>& mutate, const char* what) {
  SamplingParams p;
  mutate(p);
  try {
    validate_sampling(p);
    ADD_FAILURE() << what << " accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << what;
  }
}

TEST(Sampler, ValidateRejectsEachBadField) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  EXPECT_NO_THROW(validate_sampling(SamplingParams{}));
  expect_invalid([](SamplingParams& p) { p.temperature = -0.1f; }, "temperature -0.1");
  expect_invalid([&](SamplingParams& p) { p.temperature = nan; }, "temperature NaN");
  expect_invalid([&](SamplingParams& p) { p.temperature = inf; }, "temperature inf");
  expect_invalid([](SamplingParams& p) { p.top_k = -1; }, "top_k -1");
  expect_invalid([](SamplingParams& p) { p.top_p = 0.0f; }, "top_p 0");
  expect_invalid([](SamplingParams& p) { p.top_p = 1.01f; }, "top_p 1.01");
  expect_invalid([&](SamplingParams& p) { p.top_p = nan; }, "top_p NaN");
  expect_invalid([](SamplingParams& p) { p.repetition_penalty = 0.0f; }, "repetition_penalty 0");
  expect_invalid([](SamplingParams& p) { p.presence_penalty = 2.5f; }, "presence_penalty 2.5");
  expect_invalid([&](SamplingParams& p) { p.frequency_penalty = nan; }, "frequency_penalty NaN");
  expect_invalid([](SamplingParams& p) { p.repetition_penalty = -1.0f; }, "repetition_penalty -1");
  expect_invalid([&](SamplingParams& p) { p.repetition_penalty = nan; }, "repetition_penalty NaN");
  expect_invalid([](SamplingParams& p) { p.max_new_tokens = 0; }, "max_new_tokens 0");
  expect_invalid([](SamplingParams& p) { p.max_new_tokens = -5; }, "max_new_tokens -5");
  expect_invalid([](SamplingParams& p) { p.logprobs = -1; }, "logprobs -1");
  expect_invalid([](SamplingParams& p) { p.logprobs = 21; }, "logprobs 21");
  expect_invalid([](SamplingParams& p) { p.stop = {"ok", ""}; }, "an empty stop sequence");
  // The edges that are valid.
  SamplingParams edge;
  edge.temperature = 0;
  edge.top_p = 1.0f;
  edge.top_k = 0;
  edge.logprobs = 20;
  edge.max_new_tokens = 1;
  EXPECT_NO_THROW(validate_sampling(edge));
}

SampleResult sample(std::vector<float> logits, const SamplingParams& p, uint64_t seed = 1,
                    const std::vector<int32_t>& history = {}) {
  std::mt19937_64 rng(seed);
  return sample_token(logits.data(), int64_t(logits.size()), p, history, rng);
}

const std::vector<float> kTied = {0.1f, -2.0f, 0.5f, 3.0f, 1.0f, -0.5f, 2.0f, 3.0f, 0.0f, 3.0f};   // max at 3, 7, 9

TEST(Sampler, GreedyIsArgmaxWithLowestIdOnTies) {
  SamplingParams p;
  p.temperature = 0;
  EXPECT_EQ(sample(kTied, p).token, 3);
  EXPECT_EQ(sample({-5.0f, -1.0f, -3.0f}, p).token, 1);
  EXPECT_EQ(sample({7.0f}, p).token, 0);
}

TEST(Sampler, TopKOneIsGreedyAtAnyTemperature) {
  for (float temperature : {0.01f, 0.7f, 1.0f, 5.0f, 100.0f}) {
    for (uint64_t seed = 0; seed < 20; ++seed) {
      SamplingParams p;
      p.temperature = temperature;
      p.top_k = 1;
      ASSERT_EQ(sample(kTied, p, seed).token, 3) << "temperature " << temperature << " seed " << seed;
    }
  }
}

TEST(Sampler, TinyTopPIsArgmax) {
  const std::vector<float> logits = {0.1f, 2.9f, 0.5f, 3.0f, 1.0f};
  for (uint64_t seed = 0; seed < 50; ++seed) {
    SamplingParams p;
    p.temperature = 1.5f;
    p.top_p = 1e-6f;
    ASSERT_EQ(sample(logits, p, seed).token, 3) << "seed " << seed;
  }
}

std::vector<int32_t> draw(const std::vector<float>& logits, const SamplingParams& p, uint64_t seed, int n) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    std::vector<float> l = logits;
    out.push_back(sample_token(l.data(), int64_t(l.size()), p, {}, rng).token);
  }
  return out;
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDifferentTokens) {
  std::vector<float> logits(50);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = float(i % 7) * 0.3f;   // fairly flat
  SamplingParams p;
  p.temperature = 1.0f;
  const auto a = draw(logits, p, 1234, 64), b = draw(logits, p, 1234, 64), c = draw(logits, p, 1235, 64);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);   // 64 draws over ~50 tokens: equal by chance with negligible probability
}

// Frequencies of n draws against the given probabilities, within 4 standard deviations.
void expect_distribution(const std::vector<float>& logits, const SamplingParams& p, const std::vector<double>& probs) {
  const int n = 20000;
  const auto tokens = draw(logits, p, 99, n);
  std::vector<int> counts(logits.size(), 0);
  for (int32_t t : tokens) counts[size_t(t)]++;
  for (size_t i = 0; i < probs.size(); ++i) {
    const double f = double(counts[i]) / n, sd = std::sqrt(probs[i] * (1 - probs[i]) / n);
    EXPECT_NEAR(f, probs[i], 4 * sd + 1e-9) << "token " << i;
  }
}

std::vector<double> softmax(const std::vector<double>& x) {
  double mx = -INFINITY, z = 0;
  for (double v : x) mx = std::max(mx, v);
  std::vector<double> p(x.size());
  for (size_t i = 0; i < x.size(); ++i) z += (p[i] = std::exp(x[i] - mx));
  for (auto& v : p) v /= z;
  return p;
}

TEST(Sampler, DrawsFollowTemperatureTopKAndTopP) {
  const std::vector<float> logits = {1.0f, 2.0f, 0.0f, 1.5f};
  SamplingParams p;
  p.temperature = 1.0f;
  expect_distribution(logits, p, softmax({1.0, 2.0, 0.0, 1.5}));
  p.temperature = 0.5f;
  expect_distribution(logits, p, softmax({2.0, 4.0, 0.0, 3.0}));
  p.temperature = 1.0f;
  p.top_k = 2;   // tokens 1 and 3 only, renormalised
  {
    const auto two = softmax({2.0, 1.5});
    expect_distribution(logits, p, {0.0, two[0], 0.0, two[1]});
  }
  p.top_k = 0;
  // Full probabilities are about {.17, .47, .06, .29}: top_p 0.6 keeps tokens 1 and 3 (0.47 < 0.6 <= 0.76).
  p.top_p = 0.6f;
  {
    const auto two = softmax({2.0, 1.5});
    expect_distribution(logits, p, {0.0, two[0], 0.0, two[1]});
  }
}

TEST(Sampler, RepetitionPenaltyDividesPositiveMultipliesNegativeOncePerId) {
  std::vector<float> logits = {2.0f, -1.0f, 4.0f, -3.0f, 0.5f};
  SamplingParams p;
  p.temperature = 0;
  p.repetition_penalty = 2.0f;
  std::mt19937_64 rng(1);
  // Ids 2 and 3 repeated, an out-of-range id ignored.
  const SampleResult r = sample_token(logits.data(), 5, p, {2, 3, 2, 3, 3, 1, 77, -1}, rng);
  EXPECT_EQ(logits, (std::vector<float>{2.0f, -2.0f, 2.0f, -6.0f, 0.5f}));
  EXPECT_EQ(r.token, 0);   // 2.0 beats the penalised 2.0 of id 2 on the lowest-id rule
  // A penalty below 1 favours repeats the same way.
  std::vector<float> l2 = {1.0f, -1.0f, 0.8f};
  p.repetition_penalty = 0.5f;
  const SampleResult r2 = sample_token(l2.data(), 3, p, {2, 1}, rng);
  EXPECT_EQ(l2, (std::vector<float>{1.0f, -0.5f, 1.6f}));
  EXPECT_EQ(r2.token, 2);
}

TEST(Sampler, PresenceAndFrequencyPenaltiesSubtractPerGeneratedCount) {
  std::vector<float> logits = {1.0f, 1.0f, 1.0f, 1.0f};
  SamplingParams p;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  // Id 1 once, id 2 three times, out-of-range ids ignored, id 0 and 3 untouched.
  const std::vector<int32_t> generated = {2, 1, 2, 9, -4, 2};
  apply_presence_frequency_penalties(logits.data(), 4, p, generated.data(), generated.size());
  EXPECT_EQ(logits, (std::vector<float>{1.0f, 0.25f, -0.25f, 1.0f}));
  // Negative values reward repeats; both 0 is a no-op.
  std::vector<float> l2 = {0.0f, 0.0f};
  p.presence_penalty = -1.0f;
  p.frequency_penalty = 0;
  apply_presence_frequency_penalties(l2.data(), 2, p, generated.data(), 2);   // {2, 1}
  EXPECT_EQ(l2, (std::vector<float>{0.0f, 1.0f}));
  SamplingParams off;
  apply_presence_frequency_penalties(l2.data(), 2, off, generated.data(), 2);
  EXPECT_EQ(l2, (std::vector<float>{0.0f, 1.0f}));
}

// Greedy at vocabulary sizes (the vector argmax): the index std::max_element gives, for lengths around the
// vector widths, ties between vector lanes, maxima in the tail, -inf and NaN entries; and the logprob at 49k
// against a double log-softmax.
TEST(Sampler, GreedyAtVocabularySizeMatchesMaxElement) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  std::mt19937 gen(3);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  SamplingParams p;
  p.temperature = 0;
  for (int64_t V : {1, 3, 15, 16, 17, 31, 33, 100, 1000, 49152, 49157}) {
    std::vector<float> l(static_cast<size_t>(V));
    for (float& v : l) v = normal(gen);
    const auto expect_argmax = [&](const std::vector<float>& logits, const char* what) {
      const int32_t want = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
      EXPECT_EQ(sample(logits, p).token, want) << what << ", V " << V;
    };
    expect_argmax(l, "random");
    std::vector<float> tie = l;
    tie[size_t(V - 1)] = 100.0f;
    tie[size_t(V / 2)] = 100.0f;   // two equal maxima in different lanes: the first wins
    expect_argmax(tie, "tie");
    std::vector<float> tail = l;
    tail[size_t(V - 1)] = 50.0f;
    expect_argmax(tail, "max in the tail");
    std::vector<float> masked(size_t(V), -inf);
    expect_argmax(masked, "all -inf");
    masked[size_t(V - 1)] = -1e30f;
    expect_argmax(masked, "one finite");
    std::vector<float> with_nan = l;
    with_nan[size_t(V / 3)] = nan;
    expect_argmax(with_nan, "a NaN");
    with_nan[0] = nan;
    expect_argmax(with_nan, "a NaN first");
  }
  std::vector<float> l(49152);
  for (float& v : l) v = normal(gen);
  std::vector<double> ld(l.begin(), l.end());
  double m = *std::max_element(ld.begin(), ld.end()), s = 0;
  for (double v : ld) s += std::exp(v - m);
  SamplingParams lp = p;
  lp.logprobs = 1;
  const SampleResult r = sample(l, lp);
  EXPECT_NEAR(r.logprob, ld[size_t(r.token)] - m - std::log(s), 1e-5);
  EXPECT_EQ(sample(l, p).logprob, 0.0f);   // not asked for: not computed
}

TEST(Sampler, LogprobsAreLogSoftmaxAndTopNIsSorted) {
  const std::vector<float> logits = {0.3f, 2.0f, -1.0f, 2.0f, 1.2f, -0.4f, 0.9f};
  std::vector<double> ld(logits.begin(), logits.end());
  const auto probs = softmax(ld);
  for (float temperature : {0.0f, 0.8f}) {
    SamplingParams p;
    p.temperature = temperature;
    p.logprobs = 4;
    const SampleResult r = sample(logits, p, 5);
    EXPECT_NEAR(r.logprob, std::log(probs[size_t(r.token)]), 1e-5);
    ASSERT_EQ(r.top.size(), 4u);
    const std::vector<int32_t> expected_ids = {1, 3, 4, 6};   // ties keep the lower id first
    for (size_t i = 0; i < r.top.size(); ++i) {
      EXPECT_EQ(r.top[i].token, expected_ids[i]);
      EXPECT_NEAR(r.top[i].logprob, std::log(probs[size_t(r.top[i].token)]), 1e-5);
      if (i > 0) {
        EXPECT_GE(r.top[i - 1].logprob, r.top[i].logprob);
      }
    }
  }
  // Asking for more than V gives all V, whose probabilities sum to 1.
  SamplingParams p;
  p.temperature = 0;
  p.logprobs = 20;
  const SampleResult all = sample(logits, p);
  ASSERT_EQ(all.top.size(), logits.size());
  double total = 0;
  for (const auto& t : all.top) total += std::exp(double(t.logprob));
  EXPECT_NEAR(total, 1.0, 1e-5);
  // No logprobs asked: no top list.
  p.logprobs = 0;
  EXPECT_TRUE(sample(logits, p).top.empty());
}

TEST(Sampler, LogprobsReflectTheRepetitionPenalty) {
  const std::vector<float> logits = {1.0f, 3.0f, 0.0f};
  SamplingParams p;
  p.temperature = 0;
  p.logprobs = 3;
  p.repetition_penalty = 3.0f;
  const SampleResult r = sample(logits, p, 1, {1});
  const auto probs = softmax({1.0, 1.0, 0.0});
  EXPECT_EQ(r.token, 0);
  EXPECT_NEAR(r.logprob, std::log(probs[0]), 1e-5);
  EXPECT_EQ(r.top[0].token, 0);
  EXPECT_EQ(r.top[1].token, 1);
}

// At a real vocabulary size (49,152, SmolLM2's), the sampler sorts only the head of the order it reads; it
// must draw what the textbook algorithm draws: sort every token by logit, cut to top-k, cut to the top-p
// prefix, draw u in [0, mass) and walk. Written here in double with std::exp; the sampler's float exp
// differs from it by ~2e-7 relative, so a draw can only differ when u lands within that of a boundary.
std::vector<int32_t> sorted_by_logit(const std::vector<float>& logits) {
  std::vector<int32_t> ids(logits.size());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(i);
  std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
    return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b);
  });
  return ids;
}

// The weights exp((logit - max) / temperature) of the sorted candidates, cut to top-k and top-p.
std::vector<double> textbook_weights(const std::vector<float>& logits, const std::vector<int32_t>& ids,
                                     const SamplingParams& p) {
  const int64_t V = int64_t(logits.size());
  const int64_t keep = p.top_k > 0 && p.top_k < V ? p.top_k : V;
  std::vector<double> w(static_cast<size_t>(keep));
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) {
    w[size_t(i)] = std::exp((double(logits[size_t(ids[size_t(i)])]) - logits[size_t(ids[0])]) / p.temperature);
    sum += w[size_t(i)];
  }
  if (p.top_p < 1.0f) {
    double cum = 0;
    size_t n = 0;
    while (n < w.size()) {
      cum += w[n++] / sum;
      if (cum >= p.top_p) break;
    }
    w.resize(n);
  }
  return w;
}

int32_t textbook_sample(const std::vector<int32_t>& ids, const std::vector<double>& w, std::mt19937_64& rng) {
  double sum = 0;
  for (double v : w) sum += v;
  const double u = std::uniform_real_distribution<double>(0.0, sum)(rng);
  double acc = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    acc += w[i];
    if (u < acc) return ids[i];
  }
  return ids[w.size() - 1];
}

TEST(Sampler, LargeVocabularyDrawsWhatAFullSortDraws) {
  const size_t V = 49152;
  std::mt19937 gen(5);
  std::normal_distribution<float> normal(0.0f, 2.5f);
  std::vector<float> logits(V);
  for (auto& l : logits) l = normal(gen);
  for (size_t i = 0; i < V; i += 97) logits[i] = -std::numeric_limits<float>::infinity();   // masked tokens
  const std::vector<int32_t> ids = sorted_by_logit(logits);
  struct Case { float temperature; int32_t top_k; float top_p; };
  const Case cases[] = {{1.0f, 0, 1.0f}, {0.7f, 50, 1.0f}, {0.8f, 0, 0.9f}, {1.3f, 40, 0.95f}, {0.5f, 2000, 0.5f},
                        {2.0f, 0, 0.99f}};
  for (const Case& c : cases) {
    SamplingParams p;
    p.temperature = c.temperature;
    p.top_k = c.top_k;
    p.top_p = c.top_p;
    const std::vector<double> w = textbook_weights(logits, ids, p);
    std::mt19937_64 ours(77), theirs(77);
    int differ = 0;
    for (int i = 0; i < 50; ++i) {
      std::vector<float> l = logits;
      const int32_t got = sample_token(l.data(), int64_t(V), p, {}, ours).token;
      ASSERT_NE(got % 97, 0) << "a masked token was drawn";
      differ += got != textbook_sample(ids, w, theirs);
    }
    EXPECT_LE(differ, 1) << "temperature " << c.temperature << " top_k " << c.top_k << " top_p " << c.top_p;
  }
}

TEST(Sampler, LargeVocabularyLogprobIsTheLogSoftmax) {
  const size_t V = 49152;
  std::mt19937 gen(6);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  std::vector<float> logits(V);
  for (auto& l : logits) l = normal(gen);
  logits[123] = -std::numeric_limits<float>::infinity();
  double mx = -INFINITY, z = 0;
  for (float l : logits) mx = std::max(mx, double(l));
  for (float l : logits) z += std::exp(double(l) - mx);
  SamplingParams p;
  p.temperature = 0;
  p.logprobs = 3;
  const SampleResult r = sample(logits, p);
  EXPECT_NEAR(r.logprob, double(logits[size_t(r.token)]) - mx - std::log(z), 1e-5);
  for (const auto& t : r.top) EXPECT_NEAR(t.logprob, double(logits[size_t(t.token)]) - mx - std::log(z), 1e-5);
}

}  // namespace
}  // namespace qs
