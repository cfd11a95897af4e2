// AVX-512 GEMM over packed fp32 / fp16 / bf16 weight panels (see gemv.h), converted to fp32 in registers;
// compiled with -mavx512*, called after a CPUID check. One tile is up to kTileRows tokens x one 32-wide panel:
// 2 x kTileRows accumulators, two weight vectors and a broadcast per k, 27 of the 32 zmm registers.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "kernels/cpu/gemv.h"

namespace qs::cpu {

namespace {

constexpr int kTileRows = 12;
// K is split into blocks of at most this many so a panel's block (32 x 512 x 4 B = 64 KB in fp32) stays in L2
// next to the tokens' block while every tile of tokens goes over it.
constexpr int64_t kKBlock = 512;
// Bytes ahead of the loads that a tile streaming the weights (one tile of tokens: decode) prefetches, a line per
// 64 bytes it reads. The chain of FMAs into the accumulators keeps the out-of-order window from running far ahead
// of the stream and the hardware prefetcher restarts at every 4 KB page; 2 KB ahead measured ~20% faster than none
// on fp16 GEMVs at batch 1 (qs_gemv_bench, A/B in one process, LM head and layer shapes of SmolLM2).
constexpr int64_t kPrefetchBytes = 2048;

template <WeightType kType>
inline size_t bytes_of() {
  return kType == WeightType::kF32 ? 4 : 2;
}

// 16 weights from element index i of a panel, as fp32.
template <WeightType kType>
inline __m512 load_weights(const void* b, int64_t i) {
  if constexpr (kType == WeightType::kF32) {
    return _mm512_loadu_ps(static_cast<const float*>(b) + i);
  } else if constexpr (kType == WeightType::kF16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(b) + i)));
  } else {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(b) + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
  }
}

// c (kRows, n_valid <= 32, row stride ldc) (+)= a (kc, kRows) @ b (kc, 32). `stream`: b is read once, from
// memory (prefetch ahead of it); otherwise it is in cache, reused across tiles of tokens.
template <WeightType kType, int kRows>
void tile(float* c, int64_t ldc, const float* a, const void* b, int64_t kc, int n_valid, bool accumulate,
          bool stream) {
  __m512 c0[kRows], c1[kRows];
  #pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
  const char* ahead = static_cast<const char*>(b) + kPrefetchBytes;
  for (int64_t k = 0; k < kc; ++k) {
    if (stream) {   // past the block's end this is the next block or panel, which this thread reads next
      _mm_prefetch(ahead + k * kPanelWidth * bytes_of<kType>(), _MM_HINT_T0);
      if constexpr (kType == WeightType::kF32) _mm_prefetch(ahead + k * kPanelWidth * 4 + 64, _MM_HINT_T0);
    }
    const __m512 w0 = load_weights<kType>(b, k * kPanelWidth);
    const __m512 w1 = load_weights<kType>(b, k * kPanelWidth + 16);
    #pragma GCC unroll 16
    for (int r = 0; r < kRows; ++r) {
      const __m512 ar = _mm512_set1_ps(a[k * kRows + r]);
      c0[r] = _mm512_fmadd_ps(ar, w0, c0[r]);
      c1[r] = _mm512_fmadd_ps(ar, w1, c1[r]);
    }
  }
  const __mmask16 m0 = n_valid >= 16 ? __mmask16(0xffff) : __mmask16((1u << n_valid) - 1);
  const __mmask16 m1 = n_valid >= 32 ? __mmask16(0xffff) : n_valid <= 16 ? 0 : __mmask16((1u << (n_valid - 16)) - 1);
  #pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r) {
    float* cr = c + r * ldc;
    if (accumulate) {
      c0[r] = _mm512_add_ps(c0[r], _mm512_maskz_loadu_ps(m0, cr));
      c1[r] = _mm512_add_ps(c1[r], _mm512_maskz_loadu_ps(m1, cr + 16));
    }
    _mm512_mask_storeu_ps(cr, m0, c0[r]);
    _mm512_mask_storeu_ps(cr + 16, m1, c1[r]);
  }
}

template <WeightType kType>
void tile_rows(int rows, float* c, int64_t ldc, const float* a, const void* b, int64_t kc, int n_valid,
               bool accumulate, bool stream) {
  switch (rows) {
    case 1: tile<kType, 1>(c, ldc, a, b, kc, n_valid, accumulate, stream); break;
    case 2: tile<kType, 2>(c, ldc, a, b, kc, n_valid, accumulate, stream); break;
    case 3: tile<kType, 3>(c, ldc, a, b, kc, n_valid, accumulate, stream); break;
    case 4: tile<kType, 4>(c, ldc, a, b, kc, n_valid, accumulate, stream); break;
    case 5: tile<kType, 5>(c, ldc, a, b, kc, n_valid, accumulate, stream); break;
    case 6: tile<kType, 6>(c, ldc, a, b, kc, n_valid, accumulate, stream); break;
    case 7: tile<kType, 7>(c, ldc, a, b, kc, n_valid, accumulate, stream); break;
    case 8: tile<kType, 8>(c, ldc, a, b, kc, n_valid, accumulate, stream); break;
    case 9: tile<kType, 9>(c, ldc, a, b, kc, n_valid, accumulate, stream); break;
    case 10: tile<kType, 10>(c, ldc, a, b, kc, n_valid, accumulate, stream); break;
    case 11: tile<kType, 11>(c, ldc, a, b, kc, n_valid, accumulate, stream); break;
    default: tile<kType, 12>(c, ldc, a, b, kc, n_valid, accumulate, stream); break;
  }
}

template <WeightType kType>
void gemm_typed(float* out, const float* x, const void* packed, int64_t T, int64_t N, int64_t K) {
  static_assert(kTileRows == 12, "tile_rows dispatches 1..12");
  const int64_t panels = packed_panels(N);
  const int64_t tiles = (T + kTileRows - 1) / kTileRows;
  // Tokens are repacked per tile as (K, rows) so the tile reads one contiguous stream of broadcasts; one
  // token (decode) is already that.
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
    // With several tiles of tokens, a 16-bit panel block is converted to fp32 once (into this thread's
    // buffer, which stays in L2) rather than in every tile: the conversions share the FMA ports.
    const bool convert_once = kType != WeightType::kF32 && tiles > 1;
    thread_local std::vector<float> converted;
    if (convert_once && converted.size() < size_t(kc_max * kPanelWidth)) converted.resize(size_t(kc_max * kPanelWidth));
#pragma omp for schedule(static) nowait   // the end of the parallel region is the barrier
    for (int64_t p = 0; p < panels; ++p) {
      const int n_valid = int(std::min<int64_t>(kPanelWidth, N - p * kPanelWidth));
      const char* bp = static_cast<const char*>(packed) + size_t(p) * panel_bytes;
      for (int64_t k0 = 0; k0 < K; k0 += kc_max) {
        const int64_t kc = std::min(kc_max, K - k0);
        const void* bk = bp + size_t(k0) * kPanelWidth * bytes_of<kType>();
        if (convert_once) {
          for (int64_t i = 0; i < kc * kPanelWidth; i += 16) _mm512_storeu_ps(converted.data() + i, load_weights<kType>(bk, i));
        }
        for (int64_t i = 0; i < tiles; ++i) {
          const int64_t t0 = i * kTileRows, rows = std::min<int64_t>(kTileRows, T - t0);
          const float* a = (repack ? ax + t0 * K : x) + k0 * rows;
          float* c = out + t0 * N + p * kPanelWidth;
          if (convert_once) {
            tile_rows<WeightType::kF32>(int(rows), c, N, a, converted.data(), kc, n_valid, k0 > 0, false);
          } else {
            tile_rows<kType>(int(rows), c, N, a, bk, kc, n_valid, k0 > 0, /*stream=*/tiles == 1);
          }
        }
      }
    }
  }
}

}  // namespace

void gemm_packed_avx512(float* out, const float* x, const void* packed, WeightType type, int64_t T, int64_t N,
                        int64_t K) {
  switch (type) {
    case WeightType::kF32: gemm_typed<WeightType::kF32>(out, x, packed, T, N, K); break;
    case WeightType::kF16: gemm_typed<WeightType::kF16>(out, x, packed, T, N, K); break;
    case WeightType::kBF16: gemm_typed<WeightType::kBF16>(out, x, packed, T, N, K); break;
    default: break;   // the int8 types are not packed
  }
}

}  // namespace qs::cpu
