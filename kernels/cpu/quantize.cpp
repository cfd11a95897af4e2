// Reference quantizers (see quantize.h).
#include "kernels/cpu/quantize.h"

#include <algorithm>
#include <cmath>

#include <immintrin.h>

namespace qs::cpu {

namespace {
// Zero rows get scale 1 so that dequantization stays exact (all zeros) and nothing divides by zero.
inline float absmax_scale(const float* x, int64_t K) {
  float amax = 0;
  for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(x[k]));
  return amax > 0 ? amax / 127.0f : 1.0f;
}
inline void quantize_row_int8(int8_t* q, const float* x, int64_t K, float scale) {
  const float inv = 1.0f / scale;
  for (int64_t k = 0; k < K; ++k) {
    const float v = std::nearbyint(x[k] * inv);
    q[k] = int8_t(std::clamp(v, -127.0f, 127.0f));
  }
}
}  // namespace

void quantize_per_channel_int8(int8_t* q, float* scales, const float* w, int64_t N, int64_t K) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    scales[n] = absmax_scale(w + n * K, K);
    quantize_row_int8(q + n * K, w + n * K, K, scales[n]);
  }
}

void quantize_per_token_int8(int8_t* q, float* scales, const float* x, int64_t T, int64_t K) {
#pragma omp parallel for schedule(static) if (T > 4)
  for (int64_t t = 0; t < T; ++t) {
    scales[t] = absmax_scale(x + t * K, K);
    quantize_row_int8(q + t * K, x + t * K, K, scales[t]);
  }
}

namespace {
// x[0, n) into q as int8 shifted by +128, by one absmax scale (returned; 1 for an all-zero segment).
// Every W8A8 linear quantizes its input here, once per token (or block of 32) and pass: written as plain loops (a
// serial max, a rounding and two clamps per element) it took ~5% of an int8 batch-16 step's instructions
// (callgrind). Eight at a time in AVX2 (this file's baseline), the same values: the max is order-free, cvtps rounds
// to nearest even as std::nearbyint does in the default mode, and the clamp happens in int32 instead of float.
float quantize_segment_shifted(uint8_t* qt, const float* xt, int64_t K) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 m0 = _mm256_setzero_ps(), m1 = m0;
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    // maxps returns its second operand where either is NaN: a NaN input is skipped, as std::max skips it.
    m0 = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(xt + k), abs_mask), m0);
    m1 = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(xt + k + 8), abs_mask), m1);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_max_ps(m0, m1));
  float amax = 0;
  for (float v : lanes) amax = std::max(amax, v);
  for (; k < K; ++k) amax = std::max(amax, std::fabs(xt[k]));
  const float scale = amax > 0 ? amax / 127.0f : 1.0f;
  const float inv = 1.0f / scale;
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127), shift = _mm256_set1_epi32(128);
  k = 0;
  for (; k + 16 <= K; k += 16) {
    __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xt + k), vinv));
    __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xt + k + 8), vinv));
    a = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(a, lo), hi), shift);
    b = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(b, lo), hi), shift);
    // 1..255 each: the packs saturate nothing; packs work within 128-bit lanes, the permute restores order.
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xd8);   // 16 x int16, in order
    const __m128i bytes = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(qt + k), bytes);
  }
  for (; k < K; ++k) {
    const float v = std::nearbyint(xt[k] * inv);
    qt[k] = uint8_t(int32_t(std::clamp(v, -127.0f, 127.0f)) + 128);
  }
  return scale;
}
}  // namespace

void quantize_per_token_int8_shifted(uint8_t* q, float* scales, const float* x, int64_t T, int64_t K) {
#pragma omp parallel for schedule(static) if (T > 4)
  for (int64_t t = 0; t < T; ++t) scales[t] = quantize_segment_shifted(q + t * K, x + t * K, K);
}

void quantize_per_group_int8(int8_t* q, float* scales, int32_t* dot_start, const float* x, int64_t T, int64_t K,
                             int64_t group) {
  const int64_t groups = K / group;
#pragma omp parallel for schedule(static) if (T > 4)
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t g = 0; g < groups; ++g) {
      auto* u = reinterpret_cast<uint8_t*>(q + t * K + g * group);
      scales[t * groups + g] = quantize_segment_shifted(u, x + t * K + g * group, group);
      // The sum of q is the sum of the shifted bytes less 128 a byte; then q + 128 back to q (the top bit flipped
      // is the same byte as int8). 32 bytes at a time (psadbw sums them): as a byte loop this was 3.9% of a c=16
      // serving profile's samples (perf, int8 by groups, an Intel Xeon), the quantization itself 1.6%.
      int64_t shifted_sum = 0, j = 0;
      for (; j + 32 <= group; j += 32) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(u + j));
        const __m256i sums = _mm256_sad_epu8(v, _mm256_setzero_si256());   // four 64-bit partial sums
        shifted_sum += _mm256_extract_epi64(sums, 0) + _mm256_extract_epi64(sums, 1) +
                       _mm256_extract_epi64(sums, 2) + _mm256_extract_epi64(sums, 3);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(u + j), _mm256_xor_si256(v, _mm256_set1_epi8(char(0x80))));
      }
      for (; j < group; ++j) {
        shifted_sum += u[j];
        u[j] ^= 0x80;
      }
      dot_start[t * groups + g] = -128 * int32_t(shifted_sum - 128 * group);
    }
  }
}

void quantize_per_tensor_uint8(uint8_t* q, float* scale, int32_t* zero_point, const float* w, int64_t n) {
  float lo = 0, hi = 0;
  for (int64_t i = 0; i < n; ++i) {
    lo = std::min(lo, w[i]);
    hi = std::max(hi, w[i]);
  }
  const float s = hi > lo ? (hi - lo) / 255.0f : 1.0f;
  const int32_t zp = int32_t(std::clamp(std::nearbyint(-lo / s), 0.0f, 255.0f));
  const float inv = 1.0f / s;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    q[i] = uint8_t(std::clamp(std::nearbyint(w[i] * inv) + float(zp), 0.0f, 255.0f));
  }
  *scale = s;
  *zero_point = zp;
}

}  // namespace qs::cpu
