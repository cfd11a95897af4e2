// AVX-512 block GEMV for int4-weight-only (compiled with -mavx512*, called after a CPUID check): each block's 32
// weights are widened to fp32 in registers once and multiplied into every token of the pass (gemv_blocks.h).
#include <immintrin.h>

#include <type_traits>
#include <vector>

#include "kernels/cpu/gemv_blocks.h"

namespace qs::cpu {
namespace {

// The 32 weights of one block as two vectors of 16 fp32 (elements 0..15 and 16..31), and its d and m.
// Block i (of the whole weight): a split Q4_1 weight's, or a U8Min or Q8_0 array's.
inline void load_block(const Q4_1Split& w, int64_t i, __m512& lo, __m512& hi, float& d, float& m) {
  // One widening of the 16 bytes (lo | hi << 4 in each 32-bit lane), then the nibbles apart: one shuffle, not two.
  const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.qs + i * 16)));
  lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(0x0f)));
  hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
  d = _cvtsh_ss(w.d[i]);
  m = _cvtsh_ss(w.m[i]);
}
inline void load_block(const BlockU8Min* w, int64_t i, __m512& lo, __m512& hi, float& d, float& m) {
  const BlockU8Min& blk = w[i];
  lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.qs))));
  hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.qs + 16))));
  d = _cvtsh_ss(blk.d);
  m = _cvtsh_ss(blk.m);
}
inline void load_block(const BlockQ8_0* w, int64_t i, __m512& lo, __m512& hi, float& d, float& m) {
  const BlockQ8_0& blk = w[i];
  lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.qs))));
  hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.qs + 16))));
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
    __m512 acc[kRows];
    float macc[kRows];
    for (int t = 0; t < kRows; ++t) acc[t] = _mm512_setzero_ps(), macc[t] = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
      __m512 lo, hi;
      float d, m;
      _mm_prefetch(reinterpret_cast<const char*>(block_address(w, n * nb + b)) + kWeightPrefetchBytes, _MM_HINT_T0);
      load_block(w, n * nb + b, lo, hi, d, m);
      const __m512 dv = _mm512_set1_ps(d);
      for (int t = 0; t < kRows; ++t) {
        const float* xb = x + t * K + b * 32;
        __m512 p = _mm512_mul_ps(lo, _mm512_loadu_ps(xb));
        p = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + 16), p);
        acc[t] = _mm512_fmadd_ps(dv, p, acc[t]);
        if constexpr (kHasMin<Source>) macc[t] += m * xsum[t * nb + b];
      }
    }
    for (int t = 0; t < kRows; ++t) out[t * N + n] = _mm512_reduce_add_ps(acc[t]) + macc[t];
  }
}

template <typename Source>
void gemv_typed(float* out, const float* x, Source w, int64_t T, int64_t N, int64_t K) {
  const int64_t nb = K / 32;
  std::vector<float> xsum;
  if constexpr (kHasMin<Source>) {
    xsum.resize(size_t(T * nb));
    block_sums_avx512(xsum.data(), x, T * nb);
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

void block_sums_avx512(float* sums, const float* x, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i) {
    sums[i] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_loadu_ps(x + i * 32), _mm512_loadu_ps(x + i * 32 + 16)));
  }
}

void gemv_blocks_avx512(float* out, const float* x, const void* w, BlockType type, int64_t T, int64_t N, int64_t K) {
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
