// AVX2 + FMA + F16C GEMM over packed fp32 / fp16 / bf16 weight panels (see gemv.h): the path for CPUs without
// AVX-512. A tile is up to kTileRows tokens x half a panel (16 outputs): 12 accumulators, two weight vectors
// and a broadcast, 15 of the 16 ymm registers.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "kernels/cpu/gemv.h"

namespace qs::cpu {

namespace {

constexpr int kTileRows = 6;
constexpr int64_t kKBlock = 512;

template <WeightType kType>
inline size_t bytes_of() {
  return kType == WeightType::kF32 ? 4 : 2;
}

template <WeightType kType>
inline __m256 load_weights(const void* b, int64_t i) {
  if constexpr (kType == WeightType::kF32) {
    return _mm256_loadu_ps(static_cast<const float*>(b) + i);
  } else if constexpr (kType == WeightType::kF16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(b) + i)));
  } else {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(b) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
  }
}

// c (kRows, n_valid <= 16, row stride ldc) (+)= a (kc, kRows) @ b (kc, 16 of a 32-wide panel row).
template <WeightType kType, int kRows>
void tile(float* c, int64_t ldc, const float* a, const void* b, int64_t kc, int n_valid, bool accumulate) {
  __m256 c0[kRows], c1[kRows];
  #pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r) c0[r] = c1[r] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 w0 = load_weights<kType>(b, k * kPanelWidth);
    const __m256 w1 = load_weights<kType>(b, k * kPanelWidth + 8);
    #pragma GCC unroll 16
    for (int r = 0; r < kRows; ++r) {
      const __m256 ar = _mm256_broadcast_ss(a + k * kRows + r);
      c0[r] = _mm256_fmadd_ps(ar, w0, c0[r]);
      c1[r] = _mm256_fmadd_ps(ar, w1, c1[r]);
    }
  }
  alignas(32) float buf[16];
  #pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r) {
    float* cr = c + r * ldc;
    if (n_valid == 16) {
      if (accumulate) {
        c0[r] = _mm256_add_ps(c0[r], _mm256_loadu_ps(cr));
        c1[r] = _mm256_add_ps(c1[r], _mm256_loadu_ps(cr + 8));
      }
      _mm256_storeu_ps(cr, c0[r]);
      _mm256_storeu_ps(cr + 8, c1[r]);
    } else {
      _mm256_store_ps(buf, c0[r]);
      _mm256_store_ps(buf + 8, c1[r]);
      for (int j = 0; j < n_valid; ++j) cr[j] = accumulate ? cr[j] + buf[j] : buf[j];
    }
  }
}

template <WeightType kType>
void tile_rows(int rows, float* c, int64_t ldc, const float* a, const void* b, int64_t kc, int n_valid,
               bool accumulate) {
  switch (rows) {
    case 1: tile<kType, 1>(c, ldc, a, b, kc, n_valid, accumulate); break;
    case 2: tile<kType, 2>(c, ldc, a, b, kc, n_valid, accumulate); break;
    case 3: tile<kType, 3>(c, ldc, a, b, kc, n_valid, accumulate); break;
    case 4: tile<kType, 4>(c, ldc, a, b, kc, n_valid, accumulate); break;
    case 5: tile<kType, 5>(c, ldc, a, b, kc, n_valid, accumulate); break;
    default: tile<kType, 6>(c, ldc, a, b, kc, n_valid, accumulate); break;
  }
}

template <WeightType kType>
void gemm_typed(float* out, const float* x, const void* packed, int64_t T, int64_t N, int64_t K) {
  static_assert(kTileRows == 6, "tile_rows dispatches 1..6");
  const int64_t panels = packed_panels(N);
  const int64_t tiles = (T + kTileRows - 1) / kTileRows;
  thread_local std::vector<float> packed_x;
  const bool repack = T > 1;
  if (repack && packed_x.size() < size_t(T * K)) packed_x.resize(size_t(T * K));
  float* ax = repack ? packed_x.data() : nullptr;
  const int64_t kc_max = K <= kKBlock + kKBlock / 2 ? K : kKBlock;
  const size_t panel_bytes = size_t(K) * kPanelWidth * bytes_of<kType>();
#pragma omp parallel if (panels > 1)
  {
    if (repack) {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < tiles; ++i) {
        const int64_t t0 = i * kTileRows, rows = std::min<int64_t>(kTileRows, T - t0);
        float* dst = ax + t0 * K;
        for (int64_t r = 0; r < rows; ++r) {
          const float* src = x + (t0 + r) * K;
          for (int64_t k = 0; k < K; ++k) dst[k * rows + r] = src[k];
        }
      }
    }
#pragma omp for schedule(static) nowait   // the end of the parallel region is the barrier
    for (int64_t p = 0; p < panels; ++p) {
      const char* bp = static_cast<const char*>(packed) + size_t(p) * panel_bytes;
      for (int half = 0; half < 2; ++half) {
        const int n_valid = int(std::clamp<int64_t>(N - p * kPanelWidth - half * 16, 0, 16));
        if (n_valid == 0) break;
        for (int64_t k0 = 0; k0 < K; k0 += kc_max) {
          const int64_t kc = std::min(kc_max, K - k0);
          const void* bk = bp + (size_t(k0) * kPanelWidth + size_t(half) * 16) * bytes_of<kType>();
          for (int64_t i = 0; i < tiles; ++i) {
            const int64_t t0 = i * kTileRows, rows = std::min<int64_t>(kTileRows, T - t0);
            const float* a = (repack ? ax + t0 * K : x) + k0 * rows;
            tile_rows<kType>(int(rows), out + t0 * N + p * kPanelWidth + half * 16, N, a, bk, kc, n_valid, k0 > 0);
          }
        }
      }
    }
  }
}

}  // namespace

void gemm_packed_avx2(float* out, const float* x, const void* packed, WeightType type, int64_t T, int64_t N,
                      int64_t K) {
  switch (type) {
    case WeightType::kF32: gemm_typed<WeightType::kF32>(out, x, packed, T, N, K); break;
    case WeightType::kF16: gemm_typed<WeightType::kF16>(out, x, packed, T, N, K); break;
    case WeightType::kBF16: gemm_typed<WeightType::kBF16>(out, x, packed, T, N, K); break;
    default: break;
  }
}

}  // namespace qs::cpu
