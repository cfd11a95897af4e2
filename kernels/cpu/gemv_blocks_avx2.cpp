// AVX2 block GEMV for int4-weight-only, where AVX-512 is missing: each block's 32 weights are widened to fp32 in
// registers once and multiplied into every token of the pass (gemv_blocks.h).
#include <immintrin.h>

#include <type_traits>
#include <vector>

#include "kernels/cpu/gemv_blocks.h"

namespace qs::cpu {
namespace {

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}

// The 32 weights of one block as four vectors of 8 fp32 (elements 0..7, 8..15, 16..23, 24..31), and its d and m.
// Block i (of the whole weight): a split Q4_1 weight's, or a U8Min or Q8_0 array's.
inline void load_block(const Q4_1Split& w, int64_t i, __m256 q[4], float& d, float& m) {
  // Bytes 0..7 and 8..15 widened once each (lo | hi << 4 in each 32-bit lane), then the nibbles apart.
  const uint8_t* qs = w.qs + i * 16;
  const __m256i a = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs)));
  const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs + 8)));
  const __m256i mask = _mm256_set1_epi32(0x0f);
  q[0] = _mm256_cvtepi32_ps(_mm256_and_si256(a, mask));
  q[1] = _mm256_cvtepi32_ps(_mm256_and_si256(b, mask));
  q[2] = _mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4));
  q[3] = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
  d = _cvtsh_ss(w.d[i]);
  m = _cvtsh_ss(w.m[i]);
}
inline void load_block(const BlockU8Min* w, int64_t i, __m256 q[4], float& d, float& m) {
  const BlockU8Min& blk = w[i];
  for (int k = 0; k < 4; ++k) {
    const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk.qs + 8 * k));
    q[k] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
  }
  d = _cvtsh_ss(blk.d);
  m = _cvtsh_ss(blk.m);
}
inline void load_block(const BlockQ8_0* w, int64_t i, __m256 q[4], float& d, float& m) {
  const BlockQ8_0& blk = w[i];
  for (int i = 0; i < 4; ++i) {
    const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk.qs + 8 * i));
    q[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
  }
  d = _cvtsh_ss(blk.d);
  m = 0.0f;
}

// xsum (T, NB): per token and block, the sum of its 32 activations (for the m term of Q4_1 and U8Min).
template <typename Source>
constexpr bool kHasMin = !std::is_same_v<Source, const BlockQ8_0*>;   // Q4_1's and U8Min's m term; Q8_0 has none

template <int kRows, typename Source>
void gemv_rows(float* out, const float* x, Source w, const float* xsum, int64_t N, int64_t K) {
  const int64_t nb = K / 32;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    __m256 acc[kRows];
    float macc[kRows];
    for (int t = 0; t < kRows; ++t) acc[t] = _mm256_setzero_ps(), macc[t] = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
      __m256 q[4];
      float d, m;
      _mm_prefetch(reinterpret_cast<const char*>(block_address(w, n * nb + b)) + kWeightPrefetchBytes, _MM_HINT_T0);
      load_block(w, n * nb + b, q, d, m);
      const __m256 dv = _mm256_set1_ps(d);
      for (int t = 0; t < kRows; ++t) {
        const float* xb = x + t * K + b * 32;
        __m256 p = _mm256_mul_ps(q[0], _mm256_loadu_ps(xb));
        p = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(xb + 8), p);
        p = _mm256_fmadd_ps(q[2], _mm256_loadu_ps(xb + 16), p);
        p = _mm256_fmadd_ps(q[3], _mm256_loadu_ps(xb + 24), p);
        acc[t] = _mm256_fmadd_ps(dv, p, acc[t]);
        if constexpr (kHasMin<Source>) macc[t] += m * xsum[t * nb + b];
      }
    }
    for (int t = 0; t < kRows; ++t) out[t * N + n] = hsum(acc[t]) + macc[t];
  }
}

template <typename Source>
void gemv_typed(float* out, const float* x, Source w, int64_t T, int64_t N, int64_t K) {
  const int64_t nb = K / 32;
  std::vector<float> xsum;
  if constexpr (kHasMin<Source>) {
    xsum.resize(size_t(T * nb));
    for (int64_t i = 0; i < T * nb; ++i) {
      const float* xb = x + i * 32;
      const __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(xb), _mm256_loadu_ps(xb + 8)),
                                     _mm256_add_ps(_mm256_loadu_ps(xb + 16), _mm256_loadu_ps(xb + 24)));
      xsum[size_t(i)] = hsum(s);
    }
  }
  const float* xs = xsum.data();
  switch (T) {
    case 1: return gemv_rows<1>(out, x, w, xs, N, K);
    case 2: return gemv_rows<2>(out, x, w, xs, N, K);
    case 3: return gemv_rows<3>(out, x, w, xs, N, K);
    case 4: return gemv_rows<4>(out, x, w, xs, N, K);
    case 5: return gemv_rows<5>(out, x, w, xs, N, K);
    case 6: return gemv_rows<6>(out, x, w, xs, N, K);
    case 7: return gemv_rows<7>(out, x, w, xs, N, K);
    default: return gemv_rows<8>(out, x, w, xs, N, K);
  }
}

}  // namespace

void gemv_blocks_avx2(float* out, const float* x, const void* w, BlockType type, int64_t T, int64_t N, int64_t K) {
  if (T <= 0) return;
  if (type == BlockType::kQ4_1) {
    gemv_typed(out, x, q4_1_split(w, N * K / 32), T, N, K);
  } else if (type == BlockType::kU8Min) {
    gemv_typed(out, x, static_cast<const BlockU8Min*>(w), T, N, K);
  } else {
    gemv_typed(out, x, static_cast<const BlockQ8_0*>(w), T, N, K);
  }
}

}  // namespace qs::cpu
