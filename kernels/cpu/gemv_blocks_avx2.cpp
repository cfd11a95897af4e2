// AVX2 block GEMV, where AVX-512 is missing, over tiled Q4_1, Q8_0 and U8Min weights (gemv_blocks.h), 8 rows of a
// tile at a time: each weight is converted to fp32 in registers once and multiplied into every token of the pass.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/gemv_blocks.h"

namespace qs::cpu {
namespace {

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
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

// The AVX-512 kernel's way (gemv_blocks_avx512.cpp), with a mask and a conversion where it has a VPERMPS for a
// nibble (the 8-entry AVX2 VPERMPS cannot index 16 values); a byte is moved up by VPSHUFB as there.
__m256i byte_mover(int p, int to) {
  alignas(32) int8_t control[32];
  for (int i = 0; i < 32; ++i) control[i] = i % 4 == to ? int8_t((i % 16) / 4 * 4 + p) : int8_t(-128);
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(control));
}

// kRows tokens (at most 4: sixteen ymm registers), rows first .. first + 7 of each tile (h odd: the upper eight).
// A half tile of fewer than 8 rows is copied out first, so no load reads past the weight.
template <int kRows, BlockType kType>
void gemv_tiles(float* out, const float* x, const void* w, const float* xsum, int64_t N, int64_t K) {
  using F = TileFormat<kType>;
  const int64_t nb = K / 32, halves = (N + 7) / 8;
  const int to = kType == BlockType::kU8Min ? 2 : 3;
  const __m256i movers[4] = {byte_mover(0, to), byte_mover(1, to), byte_mover(2, to), byte_mover(3, to)};
  const __m256 d_scale = _mm256_set1_ps(F::kDScale);
#pragma omp parallel for schedule(static)
  for (int64_t h = 0; h < halves; ++h) {
    const int64_t g = h / 2, rows = tile_rows(g, N), tile_bytes = rows * int64_t(block_type_bytes(kType));
    const int64_t first = (h % 2) * 8, count = std::min<int64_t>(8, rows - first);
    const uint8_t* group = tile_group(w, kType, g, K);
    __m256 acc[kRows];
    for (int t = 0; t < kRows; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* tile = group + b * tile_bytes;
      for (int64_t c = 0; c < tile_bytes; c += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(tile) + kTilePrefetchBytes + c, _MM_HINT_T0);
      }
      alignas(32) uint32_t words[F::kWords][8] = {};
      alignas(16) uint16_t dm[2][8] = {};
      const uint32_t* word_src[F::kWords];
      const uint16_t* dm_src[2];
      for (int r = 0; r < F::kWords; ++r) {
        word_src[r] = reinterpret_cast<const uint32_t*>(tile + 4 * (r * rows + first));
      }
      for (int i = 0; i < 2; ++i) {
        dm_src[i] = reinterpret_cast<const uint16_t*>(tile + (4 * F::kWords + 2 * i) * rows + 2 * first);
      }
      if (count < 8) {
        for (int r = 0; r < F::kWords; ++r) {
          std::memcpy(words[r], word_src[r], size_t(4 * count)), word_src[r] = words[r];
        }
        for (int i = 0; i < (F::kHasMin ? 2 : 1); ++i) std::memcpy(dm[i], dm_src[i], size_t(2 * count)), dm_src[i] = dm[i];
      }
      __m256 sums[kRows];
      for (int t = 0; t < kRows; ++t) sums[t] = _mm256_setzero_ps();
      const __m256i nibble = _mm256_set1_epi32(0x0f);
#pragma GCC unroll 8
      for (int r = 0; r < F::kWords; ++r) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(word_src[r]));
#pragma GCC unroll 8
        for (int p = 0; p < F::kValues; ++p) {
          __m256 q;
          if constexpr (kType == BlockType::kQ4_1) {
            q = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(v, 4 * p), nibble));
          } else {
            q = _mm256_cvtepi32_ps(_mm256_shuffle_epi8(v, movers[p]));
          }
          const int64_t j = b * 32 + F::element(r, p);
          for (int t = 0; t < kRows; ++t) sums[t] = _mm256_fmadd_ps(q, _mm256_set1_ps(x[t * K + j]), sums[t]);
        }
      }
      const __m256 d = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(dm_src[0]))),
                                     d_scale);
      __m256 m = _mm256_setzero_ps();
      if constexpr (F::kHasMin) m = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(dm_src[1])));
      for (int t = 0; t < kRows; ++t) {
        acc[t] = _mm256_fmadd_ps(d, sums[t], acc[t]);
        if constexpr (F::kHasMin) acc[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(xsum[t * nb + b]), acc[t]);
      }
    }
    for (int t = 0; t < kRows; ++t) {
      alignas(32) float lane[8];
      _mm256_store_ps(lane, acc[t]);
      std::memcpy(out + t * N + g * kTileRows + first, lane, size_t(4 * count));
    }
  }
}

template <BlockType kType>
void gemv_typed(float* out, const float* x, const void* w, int64_t T, int64_t N, int64_t K) {
  const int64_t nb = K / 32;
  const std::vector<float> xsum = TileFormat<kType>::kHasMin ? block_sums(x, T * nb) : std::vector<float>();
  for (int64_t t0 = 0; t0 < T; t0 += 4) {
    const int64_t rows = std::min<int64_t>(4, T - t0);
    float* o = out + t0 * N;
    const float* xt = x + t0 * K;
    const float* xs = xsum.data() + (xsum.empty() ? 0 : t0 * nb);
    switch (rows) {
      case 1: gemv_tiles<1, kType>(o, xt, w, xs, N, K); break;
      case 2: gemv_tiles<2, kType>(o, xt, w, xs, N, K); break;
      case 3: gemv_tiles<3, kType>(o, xt, w, xs, N, K); break;
      default: gemv_tiles<4, kType>(o, xt, w, xs, N, K); break;
    }
  }
}

}  // namespace

void gemv_blocks_avx2(float* out, const float* x, const void* w, BlockType type, int64_t T, int64_t N, int64_t K) {
  if (T <= 0) return;
  switch (type) {
    case BlockType::kQ4_1: return gemv_typed<BlockType::kQ4_1>(out, x, w, T, N, K);
    case BlockType::kU8Min: return gemv_typed<BlockType::kU8Min>(out, x, w, T, N, K);
    case BlockType::kQ8_0: return gemv_typed<BlockType::kQ8_0>(out, x, w, T, N, K);
  }
}

}  // namespace qs::cpu
