// AVX-512 GEMV over row-major int8 / uint8 weights for int8-weight-only and int8-naive (compiled with -mavx512*,
// called after a CPUID check); fp16 / bf16 instantiations remain for callers holding row-major half weights.
#include <immintrin.h>

#include "kernels/cpu/gemv.h"

namespace qs::cpu {

bool gemv_avx512_available() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}

namespace {

template <WeightType kType>
inline __m512 load16(const void* w, int64_t i) {
  if constexpr (kType == WeightType::kI8) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const int8_t*>(w) + i));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
  } else if constexpr (kType == WeightType::kU8) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint8_t*>(w) + i));
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v));
  } else if constexpr (kType == WeightType::kF16) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(w) + i));
    return _mm512_cvtph_ps(v);
  } else {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(w) + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
  }
}

template <WeightType kType>
inline float load1(const void* w, int64_t i) {
  if constexpr (kType == WeightType::kI8) {
    return float(static_cast<const int8_t*>(w)[i]);
  } else if constexpr (kType == WeightType::kU8) {
    return float(static_cast<const uint8_t*>(w)[i]);
  } else {
    const uint16_t h = static_cast<const uint16_t*>(w)[i];
    if constexpr (kType == WeightType::kF16) {
      return _cvtsh_ss(h);
    } else {
      const uint32_t bits = uint32_t(h) << 16;
      float f;
      __builtin_memcpy(&f, &bits, 4);
      return f;
    }
  }
}

inline size_t element_bytes(WeightType t) {
  return (t == WeightType::kI8 || t == WeightType::kU8) ? 1 : 2;
}

template <WeightType kType, int kRows>
void gemv_rows(float* out, const float* x, const void* w, const float* row_scale, float zero_point, int64_t N,
               int64_t K) {
  float x_sum[kRows] = {};
  if (zero_point != 0.0f) {
    for (int t = 0; t < kRows; ++t) {
      for (int64_t k = 0; k < K; ++k) x_sum[t] += x[t * K + k];
    }
  }
  const int64_t k16 = K / 16 * 16;
  const size_t row_bytes = size_t(K) * element_bytes(kType);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const void* wn = static_cast<const char*>(w) + size_t(n) * row_bytes;
    __m512 acc[kRows];
    for (int t = 0; t < kRows; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t k = 0; k < k16; k += 16) {
      _mm_prefetch(static_cast<const char*>(wn) + k * int64_t(element_bytes(kType)) + kWeightPrefetchBytes, _MM_HINT_T0);
      const __m512 wv = load16<kType>(wn, k);
      for (int t = 0; t < kRows; ++t) acc[t] = _mm512_fmadd_ps(_mm512_loadu_ps(x + t * K + k), wv, acc[t]);
    }
    const float scale = row_scale ? row_scale[n] : 1.0f;
    for (int t = 0; t < kRows; ++t) {
      float dot = _mm512_reduce_add_ps(acc[t]);
      for (int64_t k = k16; k < K; ++k) dot += x[t * K + k] * load1<kType>(wn, k);
      out[t * N + n] = scale * (dot - zero_point * x_sum[t]);
    }
  }
}

template <WeightType kType>
void gemv_typed(float* out, const float* x, const void* w, const float* row_scale, float zero_point, int64_t T,
                int64_t N, int64_t K) {
  switch (T) {
    case 1: gemv_rows<kType, 1>(out, x, w, row_scale, zero_point, N, K); break;
    case 2: gemv_rows<kType, 2>(out, x, w, row_scale, zero_point, N, K); break;
    case 3: gemv_rows<kType, 3>(out, x, w, row_scale, zero_point, N, K); break;
    case 4: gemv_rows<kType, 4>(out, x, w, row_scale, zero_point, N, K); break;
    case 5: gemv_rows<kType, 5>(out, x, w, row_scale, zero_point, N, K); break;
    case 6: gemv_rows<kType, 6>(out, x, w, row_scale, zero_point, N, K); break;
    case 7: gemv_rows<kType, 7>(out, x, w, row_scale, zero_point, N, K); break;
    default: gemv_rows<kType, 8>(out, x, w, row_scale, zero_point, N, K); break;
  }
}

}  // namespace

bool gemv_vnni_available() { return gemv_avx512_available() && __builtin_cpu_supports("avx512vnni"); }

void gemv_avx512(float* out, const float* x, const void* w, WeightType type, const float* row_scale,
                 float zero_point, int64_t T, int64_t N, int64_t K) {
  switch (type) {
    case WeightType::kI8: gemv_typed<WeightType::kI8>(out, x, w, row_scale, zero_point, T, N, K); break;
    case WeightType::kU8: gemv_typed<WeightType::kU8>(out, x, w, row_scale, zero_point, T, N, K); break;
    case WeightType::kF16: gemv_typed<WeightType::kF16>(out, x, w, row_scale, zero_point, T, N, K); break;
    case WeightType::kBF16: gemv_typed<WeightType::kBF16>(out, x, w, row_scale, zero_point, T, N, K); break;
    case WeightType::kF32: break;   // fp32 weights go through gemm_packed
  }
}

}  // namespace qs::cpu
