// The CPU reference ops (see cpu_ops.h), parallel over tokens with OpenMP.
#include "kernels/cpu/cpu_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include <immintrin.h>

#include "kernels/cpu/exp2_poly.h"

namespace qs::cpu {

// A parallel region costs a fork/join (~1 us with both threads idle, far more when the other thread has to be
// scheduled first); below 16k elements these ops take less than that, so small batches (decode) run them on the
// calling thread. A decode step otherwise forks 2 norms and RoPE in each layer for a few hundred floats each.
constexpr int64_t kParallelElements = 16384;

void layernorm_forward(float* out, const float* in, const float* weight, const float* bias, int64_t T, int64_t C,
                       float eps) {
#pragma omp parallel for schedule(static) if (T * C > kParallelElements)
  for (int64_t t = 0; t < T; ++t) {
    const float* x = in + t * C;
    float* y = out + t * C;
    float mean = 0;
    for (int64_t c = 0; c < C; ++c) mean += x[c];
    mean /= float(C);
    float var = 0;
    for (int64_t c = 0; c < C; ++c) {
      const float d = x[c] - mean;
      var += d * d;
    }
    var /= float(C);
    const float rstd = 1.0f / std::sqrt(var + eps);
    for (int64_t c = 0; c < C; ++c) {
      y[c] = (x[c] - mean) * rstd * weight[c] + (bias ? bias[c] : 0.0f);
    }
  }
}

void rmsnorm_forward(float* out, const float* in, const float* weight, int64_t T, int64_t C, float eps) {
#pragma omp parallel for schedule(static) if (T * C > kParallelElements)
  for (int64_t t = 0; t < T; ++t) {
    const float* x = in + t * C;
    float* y = out + t * C;
    float ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += x[c] * x[c];
    const float rms = 1.0f / std::sqrt(ss / float(C) + eps);
    for (int64_t c = 0; c < C; ++c) y[c] = weight[c] * (x[c] * rms);
  }
}

void add_forward(float* out, const float* a, const float* b, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

namespace {
inline float gelu_tanh(float x) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  return 0.5f * x * (1.0f + std::tanh(kSqrt2OverPi * (x + 0.044715f * x * x * x)));
}
inline float gelu_erf(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.7071067811865476f)); }
inline float silu(float x) { return x / (1.0f + std::exp(-x)); }
}  // namespace

void apply_activation(float* x, int64_t n, Activation act) {
  switch (act) {
    case Activation::kNone:
      return;
    case Activation::kGeluTanh:
#pragma omp parallel for schedule(static) if (n > 16384)
      for (int64_t i = 0; i < n; ++i) x[i] = gelu_tanh(x[i]);
      return;
    case Activation::kGeluErf:
#pragma omp parallel for schedule(static) if (n > 16384)
      for (int64_t i = 0; i < n; ++i) x[i] = gelu_erf(x[i]);
      return;
    case Activation::kRelu:
      for (int64_t i = 0; i < n; ++i) x[i] = std::max(x[i], 0.0f);
      return;
    case Activation::kSilu:
#pragma omp parallel for schedule(static) if (n > 16384)
      for (int64_t i = 0; i < n; ++i) x[i] = silu(x[i]);
      return;
  }
}

namespace {
// out (T, F) = gate(gate_up[:, :F]) * gate_up[:, F:].
template <float (*Gate)(float)>
void gated_forward(float* out, const float* gate_up, int64_t T, int64_t F) {
#pragma omp parallel for schedule(static) if (T * F > 16384)
  for (int64_t t = 0; t < T; ++t) {
    const float* g = gate_up + t * 2 * F;
    const float* u = g + F;
    float* y = out + t * F;
    for (int64_t f = 0; f < F; ++f) y[f] = Gate(g[f]) * u[f];
  }
}
}  // namespace

namespace {
// The attention kernels' vector shape for exp2_fraction (exp2_poly.h), eight floats in AVX2 (this file's baseline).
struct Avx2 {
  using R = __m256;
  static R set1(float x) { return _mm256_set1_ps(x); }
  static R fmadd(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
};

// g / (1 + e^-g) * u for eight g, u. e^-g = 2^n * 2^f with n = round(-g log2 e), |f| <= 1/2; -g is clamped to
// [-87, 87] so that 2^n stays a normal float: past it silu is g (e^-g under 1e-38 next to 1) or 0 (g / 6e37).
// NaN in g stays NaN through the division. Within ~3e-7 relative of the libm formula, whose std::exp per
// element (not vectorized) took ~10% of an int8 batch-16 step's instructions (callgrind, 1 thread).
inline __m256 silu_mul8(__m256 g, __m256 u) {
  const __m256 y = _mm256_min_ps(_mm256_max_ps(_mm256_sub_ps(_mm256_setzero_ps(), g), _mm256_set1_ps(-87.0f)),
                                 _mm256_set1_ps(87.0f));
  const __m256 t = _mm256_mul_ps(y, _mm256_set1_ps(1.44269504088896341f));
  const __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 p = exp2_fraction<Avx2>(_mm256_sub_ps(t, n));
  const __m256 e = _mm256_castsi256_ps(
      _mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23)));
  return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u);
}
}  // namespace

void silu_mul_forward(float* out, const float* gate_up, int64_t T, int64_t F) {
#pragma omp parallel for schedule(static) if (T * F > 16384)
  for (int64_t t = 0; t < T; ++t) {
    const float* g = gate_up + t * 2 * F;
    const float* u = g + F;
    float* y = out + t * F;
    int64_t f = 0;
    for (; f + 8 <= F; f += 8) _mm256_storeu_ps(y + f, silu_mul8(_mm256_loadu_ps(g + f), _mm256_loadu_ps(u + f)));
    for (; f < F; ++f) y[f] = silu(g[f]) * u[f];
  }
}

void gelu_tanh_mul_forward(float* out, const float* gate_up, int64_t T, int64_t F) {
  gated_forward<gelu_tanh>(out, gate_up, T, F);
}

void head_rmsnorm_forward(float* qkv, const float* q_w, const float* k_w, int64_t T, int64_t NH, int64_t NKV,
                          int64_t HD, float eps) {
  const int64_t row = (NH + 2 * NKV) * HD;
#pragma omp parallel for schedule(static) if (T * row > 16384)
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < NH + NKV; ++h) {   // q heads, then k heads
      float* x = qkv + t * row + h * HD;
      const float* w = h < NH ? q_w : k_w;
      float ss = 0;
      for (int64_t d = 0; d < HD; ++d) ss += x[d] * x[d];
      const float rms = 1.0f / std::sqrt(ss / float(HD) + eps);
      for (int64_t d = 0; d < HD; ++d) x[d] = w[d] * (x[d] * rms);
    }
  }
}

void rope_forward(float* qkv, const int32_t* positions, int64_t T, int64_t NH, int64_t NKV, int64_t HD,
                  int64_t rotary_dim, float theta) {
  const int64_t half = rotary_dim / 2;
  // inv_freq as Hugging Face computes it, in float32: 1 / theta^(2i / rotary_dim).
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[size_t(i)] = 1.0f / std::pow(theta, float(2 * i) / float(rotary_dim));
  }
  const int64_t row = (NH + 2 * NKV) * HD;
  // Per token a few microseconds (its cos/sin table in double): worth a fork/join only past a few tokens.
#pragma omp parallel for schedule(static) if (T > 4)
  for (int64_t t = 0; t < T; ++t) {
    std::vector<float> cos_v(static_cast<size_t>(half)), sin_v(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i) {
      const float angle = float(positions[t]) * inv_freq[size_t(i)];
      cos_v[size_t(i)] = float(std::cos(double(angle)));
      sin_v[size_t(i)] = float(std::sin(double(angle)));
    }
    float* base = qkv + t * row;
    for (int64_t h = 0; h < NH + NKV; ++h) {  // q heads, then k heads (they are adjacent in qkv)
      float* x = base + h * HD;
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = x[i], x2 = x[i + half];
        x[i] = x1 * cos_v[size_t(i)] - x2 * sin_v[size_t(i)];
        x[i + half] = x2 * cos_v[size_t(i)] + x1 * sin_v[size_t(i)];
      }
    }
  }
}

namespace {
inline int64_t cache_slot(const BatchLayout& batch, int64_t seq, int64_t pos, int64_t BS) {
  return int64_t(batch.block_tables[size_t(seq)][size_t(pos / BS)]) * BS + pos % BS;
}
}  // namespace

void attention_forward(float* out, const float* qkv, float* k_pool, float* v_pool, const BatchLayout& batch,
                       int64_t BS, int64_t NH, int64_t NKV, int64_t HD, int64_t window) {
  const int64_t T = batch.num_tokens();
  const int64_t row = (NH + 2 * NKV) * HD;
  const int64_t kv_row = NKV * HD;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t slot = cache_slot(batch, batch.seq_of_token[size_t(t)], batch.positions[size_t(t)], BS);
    std::memcpy(k_pool + slot * kv_row, qkv + t * row + NH * HD, size_t(kv_row) * sizeof(float));
    std::memcpy(v_pool + slot * kv_row, qkv + t * row + (NH + NKV) * HD, size_t(kv_row) * sizeof(float));
  }
  const int64_t group = NH / NKV;
  const float scale = 1.0f / std::sqrt(float(HD));
#pragma omp parallel
  {
    std::vector<float> scores;
    std::vector<float> acc(static_cast<size_t>(HD));
#pragma omp for schedule(dynamic, 4) collapse(2)
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < NH; ++h) {
        const int64_t seq = batch.seq_of_token[size_t(t)];
        const int64_t len = batch.positions[size_t(t)] + 1;   // causal: positions 0..own
        const int64_t first = window > 0 ? std::max<int64_t>(0, len - window) : 0;   // sliding window
        const int64_t kvh = h / group;
        const float* q = qkv + t * row + h * HD;
        scores.assign(size_t(len), 0.0f);
        float max_score = -INFINITY;
        for (int64_t j = first; j < len; ++j) {
          const float* k = k_pool + cache_slot(batch, seq, j, BS) * kv_row + kvh * HD;
          float dot = 0;
          for (int64_t d = 0; d < HD; ++d) dot += q[d] * k[d];
          scores[size_t(j)] = dot * scale;
          max_score = std::max(max_score, scores[size_t(j)]);
        }
        float sum = 0;
        for (int64_t j = first; j < len; ++j) {
          scores[size_t(j)] = std::exp(scores[size_t(j)] - max_score);
          sum += scores[size_t(j)];
        }
        const float inv_sum = 1.0f / sum;
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t j = first; j < len; ++j) {
          const float* v = v_pool + cache_slot(batch, seq, j, BS) * kv_row + kvh * HD;
          const float p = scores[size_t(j)] * inv_sum;
          for (int64_t d = 0; d < HD; ++d) acc[size_t(d)] += p * v[d];
        }
        std::memcpy(out + t * NH * HD + h * HD, acc.data(), size_t(HD) * sizeof(float));
      }
    }
  }
}

void embedding_add_positions(float* out, const float* pos_table, const int32_t* positions, int64_t T, int64_t C) {
  for (int64_t t = 0; t < T; ++t) {
    const float* p = pos_table + int64_t(positions[t]) * C;
    float* y = out + t * C;
    for (int64_t c = 0; c < C; ++c) y[c] += p[c];
  }
}

}  // namespace qs::cpu
