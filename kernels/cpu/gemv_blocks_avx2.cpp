// AVX2 block GEMVs, where AVX-512 is missing: int4-weight-only's tiled Q4_1 weights 8 rows at a time, group-wise
// int8-weight-only's Q8_0 / U8Min blocks a row at a time; each weight is converted to fp32 in registers once and
// multiplied into every token of the pass (gemv_blocks.h).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
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
// Block i (of the whole weight): a U8Min or Q8_0 array's.
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
constexpr bool kHasMin = !std::is_same_v<Source, const BlockQ8_0*>;   // U8Min's m term; Q8_0 has none

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

// Per token and block, the sum of its 32 activations (for the m term of Q4_1 and U8Min).
std::vector<float> block_sums(const float* x, int64_t n_blocks) {
  std::vector<float> xsum(static_cast<size_t>(n_blocks));
  for (int64_t i = 0; i < n_blocks; ++i) {
    const float* xb = x + i * 32;
    const __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(xb), _mm256_loadu_ps(xb + 8)),
                                   _mm256_add_ps(_mm256_loadu_ps(xb + 16), _mm256_loadu_ps(xb + 24)));
    xsum[size_t(i)] = hsum(s);
  }
  return xsum;
}

template <typename Source>
void gemv_typed(float* out, const float* x, Source w, int64_t T, int64_t N, int64_t K) {
  const int64_t nb = K / 32;
  std::vector<float> xsum;
  if constexpr (kHasMin<Source>) xsum = block_sums(x, T * nb);
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


// Tiled Q4_1 (gemv_blocks.h), kRows tokens (at most 4: sixteen ymm registers), 8 rows of a tile at a time: the
// AVX-512 kernel's order with a mask and a conversion for each nibble where it has one VPERMPS (whose 8-entry
// AVX2 form cannot index 16 values). A half tile of fewer than 8 rows is copied out first, so no load reads past
// the weight.
template <int kRows>
void gemv_q4_1_tiles(float* out, const float* x, const void* w, const float* xsum, int64_t N, int64_t K) {
  const int64_t nb = K / 32, halves = (N + 7) / 8;
#pragma omp parallel for schedule(static)
  for (int64_t h = 0; h < halves; ++h) {
    const int64_t g = h / 2, rows = q4_1_tile_rows(g, N), tile_bytes = rows * int64_t(sizeof(BlockQ4_1));
    const int64_t first = (h % 2) * 8, count = std::min<int64_t>(8, rows - first);
    const uint8_t* group = q4_1_tile_group(w, g, K);
    __m256 acc[kRows];
    for (int t = 0; t < kRows; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* tile = group + b * tile_bytes;
      for (int64_t c = 0; c < tile_bytes; c += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(tile) + kWeightPrefetchBytes + c, _MM_HINT_T0);
      }
      alignas(32) uint32_t words[4][8] = {};
      alignas(16) uint16_t dm[2][8] = {};
      const uint32_t* word_src[4];
      const uint16_t* dm_src[2];
      for (int r = 0; r < 4; ++r) word_src[r] = reinterpret_cast<const uint32_t*>(tile + 4 * (r * rows + first));
      for (int i = 0; i < 2; ++i) dm_src[i] = reinterpret_cast<const uint16_t*>(tile + (16 + 2 * i) * rows + 2 * first);
      if (count < 8) {
        for (int r = 0; r < 4; ++r) std::memcpy(words[r], word_src[r], size_t(4 * count)), word_src[r] = words[r];
        for (int i = 0; i < 2; ++i) std::memcpy(dm[i], dm_src[i], size_t(2 * count)), dm_src[i] = dm[i];
      }
      __m256 sums[kRows];
      for (int t = 0; t < kRows; ++t) sums[t] = _mm256_setzero_ps();
      const __m256i mask = _mm256_set1_epi32(0x0f);
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(word_src[r]));
#pragma GCC unroll 8
        for (int p = 0; p < 8; ++p) {   // nibble p: element 8r + p / 2 (low nibbles) or 8r + 4 + p / 2 (high)
          const __m256 q = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(v, 4 * p), mask));
          const int64_t j = b * 32 + 8 * r + p / 2 + (p % 2) * 4;
          for (int t = 0; t < kRows; ++t) sums[t] = _mm256_fmadd_ps(q, _mm256_set1_ps(x[t * K + j]), sums[t]);
        }
      }
      const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(dm_src[0])));
      const __m256 m = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(dm_src[1])));
      for (int t = 0; t < kRows; ++t) {
        acc[t] = _mm256_fmadd_ps(d, sums[t], acc[t]);
        acc[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(xsum[t * nb + b]), acc[t]);
      }
    }
    for (int t = 0; t < kRows; ++t) {
      alignas(32) float lane[8];
      _mm256_store_ps(lane, acc[t]);
      std::memcpy(out + t * N + g * kQ4_1TileRows + first, lane, size_t(4 * count));
    }
  }
}

void gemv_q4_1(float* out, const float* x, const void* w, const float* xsum, int64_t T, int64_t N, int64_t K) {
  const int64_t nb = K / 32;
  for (int64_t t0 = 0; t0 < T; t0 += 4) {
    const int64_t rows = std::min<int64_t>(4, T - t0);
    float* o = out + t0 * N;
    const float* xt = x + t0 * K;
    const float* xs = xsum + t0 * nb;
    switch (rows) {
      case 1: gemv_q4_1_tiles<1>(o, xt, w, xs, N, K); break;
      case 2: gemv_q4_1_tiles<2>(o, xt, w, xs, N, K); break;
      case 3: gemv_q4_1_tiles<3>(o, xt, w, xs, N, K); break;
      default: gemv_q4_1_tiles<4>(o, xt, w, xs, N, K); break;
    }
  }
}
}  // namespace

void gemv_blocks_avx2(float* out, const float* x, const void* w, BlockType type, int64_t T, int64_t N, int64_t K) {
  if (T <= 0) return;
  if (type == BlockType::kQ4_1) {
    gemv_q4_1(out, x, w, block_sums(x, T * K / 32).data(), T, N, K);
  } else if (type == BlockType::kU8Min) {
    gemv_typed(out, x, static_cast<const BlockU8Min*>(w), T, N, K);
  } else {
    gemv_typed(out, x, static_cast<const BlockQ8_0*>(w), T, N, K);
  }
}

}  // namespace qs::cpu
