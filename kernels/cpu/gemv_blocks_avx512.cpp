// AVX-512 block GEMV (compiled with -mavx512*, called after a CPUID check) over tiled Q4_1, Q8_0 and U8Min weights
// (gemv_blocks.h), 16 rows at a time: each weight is converted to fp32 in registers once and multiplied into every
// token of the pass.
#include <immintrin.h>

#include <vector>

#include "kernels/cpu/gemv_blocks.h"

namespace qs::cpu {
namespace {

// How value p of a tile word (TileFormat, gemv_blocks.h) becomes fp32 in each of 16 lanes:
//   Q4_1: a shift by 4p and a VPERMPS from a table of 0.0 .. 15.0, which reads a lane's low 4 bits: the value.
//   U8Min / Q8_0: a VPSHUFB that moves byte p to bits 16..23 (unsigned) or 24..31 (signed, so the conversion keeps
//         its sign) with zeros below, and a conversion: the value times 2^16 or 2^24 (TileFormat::kDScale).

// VPSHUFB controls (indices within each 128-bit lane) that put byte p of every 32-bit word at byte `to` of it.
__m512i byte_mover(int p, int to) {
  alignas(64) int8_t control[64];
  for (int i = 0; i < 64; ++i) control[i] = i % 4 == to ? int8_t((i % 16) / 4 * 4 + p) : int8_t(-128);
  return _mm512_load_si512(control);
}

// The tiles' kernel, kRows tokens: each group of 16 rows is one pass over its blocks, and its 16 outputs a token
// are one vector, so nothing is summed across lanes. Per 16 rows and Q4_1 block: four 64-byte loads, 28 shifts, 32
// VPERMPS and 32 FMAs a token (a block row's 32 weights), then d and m for the 16 rows in one load each; per byte
// block: eight loads, 32 VPSHUFB, 32 conversions and 32 FMAs a token.
// Measured on the 2-vCPU Intel Xeon (qs_gemv_bench --precision int4-weight-only, the default model's 66 MB of
// int4 linears, 2 threads): the previous Q4_1 kernel over GGUF-ordered blocks (a widening, two masks, two
// conversions and a scalar d and m a block, then a horizontal sum a row) 4.8 ms a step, 47% of the read loop;
// this one 3.2 ms, 68% (bench/results/cpu_gemv_int4_tiles.json).
// The sum of a block's 32 products is split over kChains accumulators a token, so that at batch 1 the FMAs do not
// wait on each other (4 cycles each); with more tokens their own sums are the independent chains.
template <int kRows, BlockType kType>
void gemv_tiles(float* out, const float* x, const void* w, const float* xsum, int64_t N, int64_t K) {
  using F = TileFormat<kType>;
  constexpr int kChains = kRows == 1 ? 4 : kRows == 2 ? 2 : 1;
  const int64_t nb = K / 32, groups = (N + kTileRows - 1) / kTileRows;
  const __m512 table = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const int to = kType == BlockType::kU8Min ? 2 : 3;
  const __m512i movers[4] = {byte_mover(0, to), byte_mover(1, to), byte_mover(2, to), byte_mover(3, to)};
  const __m512 d_scale = _mm512_set1_ps(F::kDScale);
#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t rows = tile_rows(g, N), tile_bytes = rows * int64_t(block_type_bytes(kType));
    const __mmask16 lanes = __mmask16((1u << rows) - 1);
    const uint8_t* group = tile_group(w, kType, g, K);
    __m512 acc[kRows];
    for (int t = 0; t < kRows; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* tile = group + b * tile_bytes;
      for (int64_t c = 0; c < tile_bytes; c += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(tile) + kTilePrefetchBytes + c, _MM_HINT_T0);
      }
      __m512 sums[kRows][kChains];
      for (int t = 0; t < kRows; ++t) {
        for (int c = 0; c < kChains; ++c) sums[t][c] = _mm512_setzero_ps();
      }
#pragma GCC unroll 8
      for (int r = 0; r < F::kWords; ++r) {
        const __m512i words = _mm512_maskz_loadu_epi32(lanes, tile + 4 * r * rows);
#pragma GCC unroll 8
        for (int p = 0; p < F::kValues; ++p) {
          __m512 q;
          if constexpr (kType == BlockType::kQ4_1) {
            q = _mm512_permutexvar_ps(p == 0 ? words : _mm512_srli_epi32(words, unsigned(4 * p)), table);
          } else {
            q = _mm512_cvtepi32_ps(_mm512_shuffle_epi8(words, movers[p]));
          }
          const int64_t j = b * 32 + F::element(r, p);
#pragma GCC unroll 8
          for (int t = 0; t < kRows; ++t) {
            sums[t][p % kChains] = _mm512_fmadd_ps(q, _mm512_set1_ps(x[t * K + j]), sums[t][p % kChains]);
          }
        }
      }
      const uint8_t* scales = tile + 4 * F::kWords * rows;
      const __m512 d = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lanes, scales)), d_scale);
      __m512 m = _mm512_setzero_ps();
      if constexpr (F::kHasMin) m = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lanes, scales + 2 * rows));
#pragma GCC unroll 8
      for (int t = 0; t < kRows; ++t) {
        __m512 s = sums[t][0];
        for (int c = 1; c < kChains; ++c) s = _mm512_add_ps(s, sums[t][c]);
        acc[t] = _mm512_fmadd_ps(d, s, acc[t]);
        if constexpr (F::kHasMin) acc[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(xsum[t * nb + b]), acc[t]);
      }
    }
    for (int t = 0; t < kRows; ++t) _mm512_mask_storeu_ps(out + t * N + g * kTileRows, lanes, acc[t]);
  }
}

template <BlockType kType>
void gemv_typed(float* out, const float* x, const void* w, int64_t T, int64_t N, int64_t K) {
  const int64_t nb = K / 32;
  std::vector<float> xsum;
  if (TileFormat<kType>::kHasMin) {
    xsum.resize(size_t(T * nb));
    block_sums_avx512(xsum.data(), x, T * nb);
  }
  const float* xs = xsum.data();
  switch (T) {
    case 1: return gemv_tiles<1, kType>(out, x, w, xs, N, K);
    case 2: return gemv_tiles<2, kType>(out, x, w, xs, N, K);
    case 3: return gemv_tiles<3, kType>(out, x, w, xs, N, K);
    case 4: return gemv_tiles<4, kType>(out, x, w, xs, N, K);
    case 5: return gemv_tiles<5, kType>(out, x, w, xs, N, K);
    case 6: return gemv_tiles<6, kType>(out, x, w, xs, N, K);
    case 7: return gemv_tiles<7, kType>(out, x, w, xs, N, K);
    default: return gemv_tiles<8, kType>(out, x, w, xs, N, K);
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
  switch (type) {
    case BlockType::kQ4_1: return gemv_typed<BlockType::kQ4_1>(out, x, w, T, N, K);
    case BlockType::kU8Min: return gemv_typed<BlockType::kU8Min>(out, x, w, T, N, K);
    case BlockType::kQ8_0: return gemv_typed<BlockType::kQ8_0>(out, x, w, T, N, K);
  }
}

}  // namespace qs::cpu
