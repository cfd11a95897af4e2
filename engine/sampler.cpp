// Token sampling (see sampler.h). The order of the logits processors follows Hugging Face's generate():
// repetition penalty, temperature, top-k, top-p, then a draw from the softmax.
#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/error.h"

namespace qs {

void validate_sampling(const SamplingParams& p) {
  QS_CHECK(std::isfinite(p.temperature) && p.temperature >= 0, ErrorCode::kInvalidArgument,
           "temperature must be >= 0 (0 means greedy), got ", p.temperature);
  QS_CHECK(p.top_k >= 0, ErrorCode::kInvalidArgument, "top_k must be >= 0 (0 means off), got ", p.top_k);
  QS_CHECK(std::isfinite(p.top_p) && p.top_p > 0 && p.top_p <= 1, ErrorCode::kInvalidArgument,
           "top_p must be in (0, 1], got ", p.top_p);
  QS_CHECK(std::isfinite(p.repetition_penalty) && p.repetition_penalty > 0, ErrorCode::kInvalidArgument,
           "repetition_penalty must be > 0 (1 means off), got ", p.repetition_penalty);
  QS_CHECK(p.max_new_tokens > 0, ErrorCode::kInvalidArgument, "max_new_tokens must be > 0, got ", p.max_new_tokens);
  QS_CHECK(p.logprobs >= 0 && p.logprobs <= 20, ErrorCode::kInvalidArgument, "logprobs must be in [0, 20], got ",
           p.logprobs);
  for (const auto& s : p.stop) {
    QS_CHECK(!s.empty(), ErrorCode::kInvalidArgument, "stop sequences must not be empty");
  }
}

namespace {
// log(sum(exp(x))) over V entries, stable.
double log_sum_exp(const float* x, int64_t V) {
  const float m = *std::max_element(x, x + V);
  double s = 0;
  for (int64_t i = 0; i < V; ++i) s += std::exp(double(x[i] - m));
  return double(m) + std::log(s);
}
}  // namespace

SampleResult sample_token(float* logits, int64_t V, const SamplingParams& p, const std::vector<int32_t>& history,
                          std::mt19937_64& rng) {
  if (p.repetition_penalty != 1.0f) {
    // Each seen token once, as HF's gather/scatter does.
    std::vector<int32_t> seen(history);
    std::sort(seen.begin(), seen.end());
    seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
    for (int32_t id : seen) {
      if (id < 0 || id >= V) continue;
      float& l = logits[id];
      l = l < 0 ? l * p.repetition_penalty : l / p.repetition_penalty;
    }
  }
  SampleResult r;
  const double lse = log_sum_exp(logits, V);
  if (p.logprobs > 0) {
    std::vector<int32_t> idx(static_cast<size_t>(V));
    std::iota(idx.begin(), idx.end(), 0);
    const int64_t n = std::min<int64_t>(p.logprobs, V);
    std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (int64_t i = 0; i < n; ++i) r.top.push_back({idx[size_t(i)], float(double(logits[idx[size_t(i)]]) - lse)});
  }
  if (p.temperature == 0.0f) {
    r.token = int32_t(std::max_element(logits, logits + V) - logits);
    r.logprob = float(double(logits[r.token]) - lse);
    return r;
  }
  // Candidates sorted by logit, descending (stable on id).
  std::vector<int32_t> cand(static_cast<size_t>(V));
  std::iota(cand.begin(), cand.end(), 0);
  int64_t keep = V;
  if (p.top_k > 0 && p.top_k < V) keep = p.top_k;
  std::partial_sort(cand.begin(), cand.begin() + keep, cand.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  cand.resize(size_t(keep));
  std::vector<double> probs(cand.size());
  const double top = double(logits[cand[0]]) / p.temperature;
  double sum = 0;
  for (size_t i = 0; i < cand.size(); ++i) {
    probs[i] = std::exp(double(logits[cand[i]]) / p.temperature - top);
    sum += probs[i];
  }
  if (p.top_p < 1.0f) {
    // Keep the smallest prefix whose mass reaches top_p (always at least one token).
    double cum = 0;
    size_t n = 0;
    while (n < probs.size()) {
      cum += probs[n] / sum;
      ++n;
      if (cum >= p.top_p) break;
    }
    probs.resize(n);
    cand.resize(n);
    sum = std::accumulate(probs.begin(), probs.end(), 0.0);
  }
  std::uniform_real_distribution<double> uniform(0.0, sum);
  const double u = uniform(rng);
  double acc = 0;
  size_t chosen = probs.size() - 1;
  for (size_t i = 0; i < probs.size(); ++i) {
    acc += probs[i];
    if (u < acc) {
      chosen = i;
      break;
    }
  }
  r.token = cand[chosen];
  r.logprob = float(double(logits[r.token]) - lse);
  return r;
}

}  // namespace qs
