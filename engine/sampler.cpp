// Token sampling (see sampler.h). The order of the logits processors follows Hugging Face's generate():
// repetition penalty, temperature, top-k, top-p, then a draw from the softmax.
#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

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
  QS_CHECK(std::isfinite(p.presence_penalty) && std::fabs(p.presence_penalty) <= 2, ErrorCode::kInvalidArgument,
           "presence_penalty must be in [-2, 2], got ", p.presence_penalty);
  QS_CHECK(std::isfinite(p.frequency_penalty) && std::fabs(p.frequency_penalty) <= 2, ErrorCode::kInvalidArgument,
           "frequency_penalty must be in [-2, 2], got ", p.frequency_penalty);
  if (p.grammar) {
    // The document ends itself (EOS once it is complete): a stop that cut it short, or generation past its
    // end, would hand back text that does not parse.
    QS_CHECK(!p.ignore_eos, ErrorCode::kInvalidArgument, "ignore_eos cannot be combined with json_schema");
    QS_CHECK(p.stop.empty() && p.stop_token_ids.empty(), ErrorCode::kInvalidArgument,
             "stop sequences and stop_token_ids cannot be combined with json_schema");
  }
}

void apply_presence_frequency_penalties(float* logits, int64_t V, const SamplingParams& params,
                                        const int32_t* generated, size_t n_generated) {
  if (params.presence_penalty == 0 && params.frequency_penalty == 0) return;
  // Sorting a copy counts repeats without a vocabulary-sized table per step.
  std::vector<int32_t> ids(generated, generated + n_generated);
  std::sort(ids.begin(), ids.end());
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j < ids.size() && ids[j] == ids[i]) ++j;
    if (ids[i] >= 0 && ids[i] < V) {
      logits[ids[i]] -= params.frequency_penalty * float(j - i) + params.presence_penalty;
    }
    i = j;
  }
}

void mask_logits(float* logits, int64_t V, const std::vector<uint64_t>& allowed) {
  const float minus_inf = -std::numeric_limits<float>::infinity();
  for (int64_t w = 0; w * 64 < V; ++w) {
    const uint64_t bits = size_t(w) < allowed.size() ? allowed[size_t(w)] : 0;
    if (bits == ~uint64_t(0)) continue;
    const int64_t end = std::min<int64_t>(V, (w + 1) * 64);
    for (int64_t t = w * 64; t < end; ++t) {
      if (!((bits >> (t - w * 64)) & 1)) logits[t] = minus_inf;
    }
  }
}

namespace {
// exp(x) for x <= 0 in float, within ~2e-7 relative: 2^(x log2 e) as 2^n times a degree-7 polynomial of the
// fraction, |f| <= ln 2 / 2. In SSE2, four at a time (x86-64 always has it; the compiler does not vectorize this
// on its own, for the compares), which is what makes a softmax over a 49k vocabulary cheap: std::exp in double
// costs ~0.5 ms a token there. Below -87 (under the smallest normal float), -inf (a masked token) and NaN: 0.
#if defined(__SSE2__)
inline __m128 exp_nonpositive4(__m128 x_in) {
  const __m128 lo = _mm_set1_ps(-87.0f);
  const __m128 x = _mm_max_ps(x_in, lo);   // NaN -> -87
  const __m128 t = _mm_mul_ps(x, _mm_set1_ps(1.44269504088896341f));
  const __m128i ni = _mm_cvtps_epi32(t);   // round to nearest
  const __m128 f = _mm_mul_ps(_mm_sub_ps(t, _mm_cvtepi32_ps(ni)), _mm_set1_ps(0.693147180559945309f));
  __m128 p = _mm_set1_ps(1.98412698e-4f);   // Taylor of e^f to degree 7: error < 4e-8 at ln 2 / 2
  p = _mm_add_ps(_mm_mul_ps(p, f), _mm_set1_ps(1.38888889e-3f));
  p = _mm_add_ps(_mm_mul_ps(p, f), _mm_set1_ps(8.33333333e-3f));
  p = _mm_add_ps(_mm_mul_ps(p, f), _mm_set1_ps(4.16666667e-2f));
  p = _mm_add_ps(_mm_mul_ps(p, f), _mm_set1_ps(1.66666667e-1f));
  p = _mm_add_ps(_mm_mul_ps(p, f), _mm_set1_ps(0.5f));
  p = _mm_add_ps(_mm_mul_ps(p, f), _mm_set1_ps(1.0f));
  p = _mm_add_ps(_mm_mul_ps(p, f), _mm_set1_ps(1.0f));
  p = _mm_castsi128_ps(_mm_add_epi32(_mm_castps_si128(p), _mm_slli_epi32(ni, 23)));
  return _mm_and_ps(p, _mm_cmpgt_ps(x_in, lo));
}
#endif

inline float exp_nonpositive(float x) {
#if defined(__SSE2__)
  return _mm_cvtss_f32(exp_nonpositive4(_mm_set_ss(x)));
#else
  return x > -87.0f ? std::exp(x) : 0.0f;
#endif
}

// The loops below over the whole vocabulary (49k entries for SmolLM2) run once per sampled token; written as
// plain loops they are latency-bound (a serial chain of double adds, a branchy max_element) and cost more than
// a batch-16 decode step's share of the forward pass. So: four independent vector accumulators each.

// The largest of x[0..n), n > 0, as std::max_element finds it; NaNs are skipped by the vector loop, so where one
// is present the answer comes from std::max_element itself (whose NaN behaviour the callers have always had).
float max_value(const float* x, int64_t n) {
  int64_t i = 0;
  float m = -std::numeric_limits<float>::infinity();
#if defined(__SSE2__)
  if (n >= 16) {
    __m128 m0 = _mm_set1_ps(m), m1 = m0, m2 = m0, m3 = m0, nan = _mm_setzero_ps();
    for (; i + 16 <= n; i += 16) {
      const __m128 a = _mm_loadu_ps(x + i), b = _mm_loadu_ps(x + i + 4);
      const __m128 c = _mm_loadu_ps(x + i + 8), d = _mm_loadu_ps(x + i + 12);
      // maxps returns its second operand where either is NaN: the accumulator stays a number.
      m0 = _mm_max_ps(a, m0), m1 = _mm_max_ps(b, m1), m2 = _mm_max_ps(c, m2), m3 = _mm_max_ps(d, m3);
      nan = _mm_or_ps(nan, _mm_or_ps(_mm_or_ps(_mm_cmpunord_ps(a, a), _mm_cmpunord_ps(b, b)),
                                     _mm_or_ps(_mm_cmpunord_ps(c, c), _mm_cmpunord_ps(d, d))));
    }
    if (_mm_movemask_ps(nan) != 0) return *std::max_element(x, x + n);
    alignas(16) float lanes[4];
    _mm_store_ps(lanes, _mm_max_ps(_mm_max_ps(m0, m1), _mm_max_ps(m2, m3)));
    m = std::max({lanes[0], lanes[1], lanes[2], lanes[3]});
  }
#endif
  for (; i < n; ++i) {
    if (std::isnan(x[i])) return *std::max_element(x, x + n);
    m = std::max(m, x[i]);
  }
  return m;
}

// The index std::max_element(x, x + n) returns: the first of the largest values.
int32_t argmax(const float* x, int64_t n) {
  const float m = max_value(x, n);
  if (std::isnan(m)) return int32_t(std::max_element(x, x + n) - x);
  for (int64_t i = 0; i < n; ++i) {   // the first entry equal to the maximum (+0 and -0 compare equal, as there)
    if (x[i] == m) return int32_t(i);
  }
  return int32_t(std::max_element(x, x + n) - x);   // not reached: some entry is the maximum
}

// out[i] = exp_nonpositive(scale * (x[i] - m)) for i < n; returns the sum of the out[i], added in double.
double exp_shifted_sum(float* out, const float* x, float m, float scale, int64_t n) {
  int64_t i = 0;
  double sum = 0;
#if defined(__SSE2__)
  const __m128 mv = _mm_set1_ps(m), sv = _mm_set1_ps(scale);
  __m128d s0 = _mm_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
  for (; i + 8 <= n; i += 8) {
    const __m128 e0 = exp_nonpositive4(_mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(x + i), mv), sv));
    const __m128 e1 = exp_nonpositive4(_mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(x + i + 4), mv), sv));
    _mm_storeu_ps(out + i, e0);
    _mm_storeu_ps(out + i + 4, e1);
    s0 = _mm_add_pd(s0, _mm_cvtps_pd(e0));
    s1 = _mm_add_pd(s1, _mm_cvtps_pd(_mm_movehl_ps(e0, e0)));
    s2 = _mm_add_pd(s2, _mm_cvtps_pd(e1));
    s3 = _mm_add_pd(s3, _mm_cvtps_pd(_mm_movehl_ps(e1, e1)));
  }
  alignas(16) double lanes[2];
  _mm_store_pd(lanes, _mm_add_pd(_mm_add_pd(s0, s1), _mm_add_pd(s2, s3)));
  sum = lanes[0] + lanes[1];
#endif
  for (; i < n; ++i) {
    out[i] = exp_nonpositive((x[i] - m) * scale);
    sum += double(out[i]);
  }
  return sum;
}

// log(sum(exp(x))) over V entries, stable; float exponentials summed in double.
double log_sum_exp(const float* x, int64_t V) {
  const float m = max_value(x, V);
  if (!std::isfinite(m)) {   // all -inf (or a +inf / NaN logit): the slow formula says what it means
    double s = 0;
    for (int64_t i = 0; i < V; ++i) s += std::exp(double(x[i] - m));
    return double(m) + std::log(s);
  }
  float e[1024];
  double s = 0;
  for (int64_t i = 0; i < V; i += 1024) s += exp_shifted_sum(e, x + i, m, 1.0f, std::min<int64_t>(1024, V - i));
  return double(m) + std::log(s);
}

// The candidates in descending logit order (ties by id), sorted only as far as someone has looked: the
// first sorted() entries are the top ones in order, the rest are all below them, unordered. Sampling at
// a 49k vocabulary rarely needs more than the first few hundred.
class Candidates {
 public:
  Candidates(const float* logits, int64_t n) : logits_(logits), ids_(static_cast<size_t>(n)) {
    std::iota(ids_.begin(), ids_.end(), 0);
  }
  size_t size() const { return ids_.size(); }
  int32_t operator[](size_t i) {
    if (i >= sorted_) sort_to(std::max(i + 1, std::min(size(), std::max<size_t>(64, 4 * sorted_))));
    return ids_[i];
  }

 private:
  void sort_to(size_t k) {
    const auto better = [this](int32_t a, int32_t b) {
      return logits_[a] > logits_[b] || (logits_[a] == logits_[b] && a < b);
    };
    // A heap of the k - sorted() best: one comparison for most of the vocabulary. Past a quarter of it,
    // sorting the rest outright is cheaper.
    if (4 * k > ids_.size()) k = ids_.size();
    if (k == ids_.size()) {
      std::sort(ids_.begin() + long(sorted_), ids_.end(), better);
    } else {
      std::partial_sort(ids_.begin() + long(sorted_), ids_.begin() + long(k), ids_.end(), better);
    }
    sorted_ = k;
  }
  const float* logits_;
  std::vector<int32_t> ids_;
  size_t sorted_ = 0;
};
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
  // The chosen token's logprob is reported only where asked for; the log-sum-exp is a pass over the vocabulary.
  const double lse = p.logprobs > 0 ? log_sum_exp(logits, V) : 0.0;
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
    r.token = argmax(logits, V);
    if (p.logprobs > 0) r.logprob = float(double(logits[r.token]) - lse);
    return r;
  }
  // Candidates by logit, descending (stable on id): top-k, then the smallest prefix whose mass reaches top_p,
  // then a draw walking that prefix. Only as much of the order as these read is sorted.
  int64_t keep = V;
  if (p.top_k > 0 && p.top_k < V) keep = p.top_k;
  // Unnormalised probabilities exp((logit - max) / temperature): over the whole vocabulary in one vectorized
  // pass when every token is a candidate, else only for the top-k, as they are read.
  const float max_logit = max_value(logits, V);
  const float inv_temperature = 1.0f / p.temperature;
  thread_local std::vector<float> weights;
  double sum = 0;
  if (keep == V) {
    weights.resize(size_t(V));
    sum = exp_shifted_sum(weights.data(), logits, max_logit, inv_temperature, V);
  }
  const auto weight = [&](int32_t id) {
    return double(keep == V ? weights[size_t(id)] : exp_nonpositive((logits[id] - max_logit) * inv_temperature));
  };
  Candidates cand(logits, V);
  if (keep != V) {
    for (int64_t i = 0; i < keep; ++i) sum += weight(cand[size_t(i)]);
  }
  if (p.top_p < 1.0f) {
    // Keep the smallest prefix whose mass reaches top_p (always at least one token).
    double cum = 0, kept = 0;
    int64_t n = 0;
    while (n < keep) {
      const double w = weight(cand[size_t(n)]);
      cum += w / sum;
      kept += w;
      ++n;
      if (cum >= p.top_p) break;
    }
    keep = n;
    sum = kept;
  }
  std::uniform_real_distribution<double> uniform(0.0, sum);
  const double u = uniform(rng);
  double acc = 0;
  int64_t chosen = keep - 1;
  for (int64_t i = 0; i < keep; ++i) {
    acc += weight(cand[size_t(i)]);
    if (u < acc) {
      chosen = i;
      break;
    }
  }
  r.token = cand[size_t(chosen)];
  if (p.logprobs > 0) r.logprob = float(double(logits[r.token]) - lse);
  return r;
}

}  // namespace qs
