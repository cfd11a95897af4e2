// AVX-512 block GEMVs (compiled with -mavx512*, called after a CPUID check): int4-weight-only's tiled Q4_1 weights
// 16 rows at a time, and group-wise int8-weight-only's Q8_0 / U8Min blocks a row at a time; each weight is
// converted to fp32 in registers once and multiplied into every token of the pass (gemv_blocks.h).
#include <immintrin.h>

#include <type_traits>
#include <vector>

#include "kernels/cpu/gemv_blocks.h"

namespace qs::cpu {
namespace {

// The 32 weights of one block as two vectors of 16 fp32 (elements 0..15 and 16..31), and its d and m.
// Block i (of the whole weight): a U8Min or Q8_0 array's.
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
constexpr bool kHasMin = !std::is_same_v<Source, const BlockQ8_0*>;   // U8Min's m term; Q8_0 has none

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


// Tiled Q4_1 (gemv_blocks.h), kRows tokens: each group of 16 rows is one pass over its blocks, and its 16 outputs a
// token are one vector, so nothing is summed across lanes. Per 16 rows and block: four 64-byte loads, 28 shifts,
// 32 VPERMPS and 32 FMAs a token (a block row's 32 weights), then d and m for the 16 rows in one load each.
// Measured on the 2-vCPU Intel Xeon (qs_gemv_bench --precision int4-weight-only, the default model's 66 MB of
// linears, 2 threads): the previous kernel over GGUF-ordered blocks (a widening, two masks, two conversions and
// a scalar d and m a block, then a horizontal sum a row) 3.9 ms a step, 45-50% of the read loop; this one 1.8 ms.
// The sum of a block's 32 products is split over kChains accumulators a token, so that at batch 1 the FMAs do not
// wait on each other (4 cycles each); with more tokens their own sums are the independent chains.
template <int kRows>
void gemv_q4_1_tiles(float* out, const float* x, const void* w, const float* xsum, int64_t N, int64_t K) {
  constexpr int kChains = kRows == 1 ? 4 : kRows == 2 ? 2 : 1;
  const int64_t nb = K / 32, groups = (N + kQ4_1TileRows - 1) / kQ4_1TileRows;
  const __m512 table = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t rows = q4_1_tile_rows(g, N), tile_bytes = rows * int64_t(sizeof(BlockQ4_1));
    const __mmask16 lanes = __mmask16((1u << rows) - 1);
    const uint8_t* group = q4_1_tile_group(w, g, K);
    __m512 acc[kRows];
    for (int t = 0; t < kRows; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* tile = group + b * tile_bytes;
      for (int64_t c = 0; c < tile_bytes; c += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(tile) + kWeightPrefetchBytes + c, _MM_HINT_T0);
      }
      __m512 sums[kRows][kChains];
      for (int t = 0; t < kRows; ++t) {
        for (int c = 0; c < kChains; ++c) sums[t][c] = _mm512_setzero_ps();
      }
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) {
        const __m512i words = _mm512_maskz_loadu_epi32(lanes, tile + 4 * r * rows);
#pragma GCC unroll 8
        for (int p = 0; p < 8; ++p) {   // nibble p: element 8r + p / 2 (low nibbles) or 8r + 4 + p / 2 (high)
          const __m512 q = _mm512_permutexvar_ps(p == 0 ? words : _mm512_srli_epi32(words, unsigned(4 * p)), table);
          const int64_t j = b * 32 + 8 * r + p / 2 + (p % 2) * 4;
#pragma GCC unroll 8
          for (int t = 0; t < kRows; ++t) {
            sums[t][p % kChains] = _mm512_fmadd_ps(q, _mm512_set1_ps(x[t * K + j]), sums[t][p % kChains]);
          }
        }
      }
      const __m512 d = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lanes, tile + 16 * rows));
      const __m512 m = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lanes, tile + 18 * rows));
#pragma GCC unroll 8
      for (int t = 0; t < kRows; ++t) {
        __m512 s = sums[t][0];
        for (int c = 1; c < kChains; ++c) s = _mm512_add_ps(s, sums[t][c]);
        acc[t] = _mm512_fmadd_ps(d, s, acc[t]);
        acc[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(xsum[t * nb + b]), acc[t]);
      }
    }
    for (int t = 0; t < kRows; ++t) _mm512_mask_storeu_ps(out + t * N + g * kQ4_1TileRows, lanes, acc[t]);
  }
}

void gemv_q4_1(float* out, const float* x, const void* w, int64_t T, int64_t N, int64_t K) {
  const int64_t nb = K / 32;
  std::vector<float> xsum(size_t(T * nb));
  block_sums_avx512(xsum.data(), x, T * nb);
  const float* xs = xsum.data();
  switch (T) {
    case 1: return gemv_q4_1_tiles<1>(out, x, w, xs, N, K);
    case 2: return gemv_q4_1_tiles<2>(out, x, w, xs, N, K);
    case 3: return gemv_q4_1_tiles<3>(out, x, w, xs, N, K);
    case 4: return gemv_q4_1_tiles<4>(out, x, w, xs, N, K);
    case 5: return gemv_q4_1_tiles<5>(out, x, w, xs, N, K);
    case 6: return gemv_q4_1_tiles<6>(out, x, w, xs, N, K);
    case 7: return gemv_q4_1_tiles<7>(out, x, w, xs, N, K);
    default: return gemv_q4_1_tiles<8>(out, x, w, xs, N, K);
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
    gemv_q4_1(out, x, w, T, N, K);
  } else if (type == BlockType::kU8Min) {
    gemv_typed(out, x, static_cast<const BlockU8Min*>(w), T, N, K);
  } else {
    gemv_typed(out, x, static_cast<const BlockQ8_0*>(w), T, N, K);
  }
}

}  // namespace qs::cpu
