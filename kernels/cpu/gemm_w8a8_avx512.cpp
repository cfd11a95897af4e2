// AVX-512 VNNI W8A8 GEMM over VNNI-packed int8 weight panels (see gemv.h), from decode to prefill: a tile is up to
// kTileRows tokens x one 32-wide panel, 2 x kTileRows int32 accumulators; per group of 4 inputs two weight
// vectors and one broadcast of 4 activation bytes a token. The weights stream in order (a decode step reads
// them once, front to back) and no horizontal sums are needed. Compiled with -mavx512*, called after CPUID.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/gemv.h"

// GCC 12 reports its own intrinsics' undefined pass-through operands as uninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace qs::cpu {

namespace {

constexpr int kTileRows = 12;
// Bytes ahead of the loads that each group of 4 inputs prefetches (its two lines of weights that far on): a decode
// step's chain of vpdpbusd keeps the out-of-order window from running far ahead of the stream, and the hardware
// prefetcher restarts at every 4 KB page; 2 KB ahead measured ~12% faster than none on the int8 layer GEMVs at
// batch 1 (qs_gemv_bench, A/B in one process; 1 KB ~9%).
constexpr int64_t kPrefetchBytes = 2048;

// acc += u8 x s8 dot products of 4 (vpdpbusd), in place: GCC 12 copies the accumulator around
// _mm512_dpbusd_epi32, which with 24 of them runs out of registers and spills on every step.
inline void dpbusd(__m512i& acc, __m512i x, __m512i w) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w));
}


// One group of 4 inputs of a tile: c0 / c1[r] (rows 0-15 / 16-31 of a panel) += the dot products of token r's 4
// activations (a4: kRows x 4 bytes) with the panel's 2 x 64 bytes of weights there (b128), its prefetch issued.
// kWeightsUnsigned: the weights are the u8 operand of vpdpbusd (W8A8 by groups), else the activations are.
// Inlined into the tiles' loops, so the accumulator arrays stay in registers.
template <int kRows, bool kWeightsUnsigned, class A, class B>
__attribute__((always_inline)) inline void step4(__m512i* c0, __m512i* c1, const A* a4, const B* b128) {
  // Past the panel's end this is the next panel, which the same thread reads next (a static split of panels).
  _mm_prefetch(reinterpret_cast<const char*>(b128) + kPrefetchBytes, _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(b128) + kPrefetchBytes + 64, _MM_HINT_T0);
  const __m512i w0 = _mm512_loadu_si512(b128);
  const __m512i w1 = _mm512_loadu_si512(reinterpret_cast<const char*>(b128) + 64);
  #pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r) {
    int32_t four;
    std::memcpy(&four, reinterpret_cast<const char*>(a4) + r * 4, 4);
    const __m512i xr = _mm512_set1_epi32(four);
    if constexpr (kWeightsUnsigned) {
      dpbusd(c0[r], w0, xr);
      dpbusd(c1[r], w1, xr);
    } else {
      dpbusd(c0[r], xr, w0);
      dpbusd(c1[r], xr, w1);
    }
  }
}

// out (kRows, n_valid <= 32, row stride ldo) = dequantized a (groups, kRows, 4 u8) . b (groups, 32, 4 s8).
// The loops over rows are unrolled by pragma: left to itself GCC 12 does not unroll the epilogue's, and then
// keeps the accumulator arrays in memory.
template <int kRows>
void tile(float* out, int64_t ldo, const uint8_t* a, const int8_t* b, int64_t groups, int n_valid,
          const float* x_scale, const float* w_scale, const int32_t* w_row_sum) {
  __m512i c0[kRows], c1[kRows];
  #pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r) c0[r] = c1[r] = _mm512_setzero_si512();
  for (int64_t g = 0; g < groups; ++g) {
    step4<kRows, false>(c0, c1, a + g * kRows * 4, b + g * 4 * kPanelWidth);
  }
  const __mmask16 m0 = n_valid >= 16 ? __mmask16(0xffff) : __mmask16((1u << n_valid) - 1);
  const __mmask16 m1 = n_valid >= 32 ? __mmask16(0xffff) : n_valid <= 16 ? 0 : __mmask16((1u << (n_valid - 16)) - 1);
  const __m512i shift0 = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(m0, w_row_sum), 7);
  const __m512i shift1 = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(m1, w_row_sum + 16), 7);
  const __m512 ws0 = _mm512_maskz_loadu_ps(m0, w_scale), ws1 = _mm512_maskz_loadu_ps(m1, w_scale + 16);
  #pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r) {
    const __m512 xs = _mm512_set1_ps(x_scale[r]);
    const __m512 y0 = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c0[r], shift0)), xs), ws0);
    const __m512 y1 = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c1[r], shift1)), xs), ws1);
    _mm512_mask_storeu_ps(out + r * ldo, m0, y0);
    _mm512_mask_storeu_ps(out + r * ldo + 16, m1, y1);
  }
}

void tile_rows(int rows, float* out, int64_t ldo, const uint8_t* a, const int8_t* b, int64_t groups, int n_valid,
               const float* x_scale, const float* w_scale, const int32_t* w_row_sum) {
  switch (rows) {
    case 1: tile<1>(out, ldo, a, b, groups, n_valid, x_scale, w_scale, w_row_sum); break;
    case 2: tile<2>(out, ldo, a, b, groups, n_valid, x_scale, w_scale, w_row_sum); break;
    case 3: tile<3>(out, ldo, a, b, groups, n_valid, x_scale, w_scale, w_row_sum); break;
    case 4: tile<4>(out, ldo, a, b, groups, n_valid, x_scale, w_scale, w_row_sum); break;
    case 5: tile<5>(out, ldo, a, b, groups, n_valid, x_scale, w_scale, w_row_sum); break;
    case 6: tile<6>(out, ldo, a, b, groups, n_valid, x_scale, w_scale, w_row_sum); break;
    case 7: tile<7>(out, ldo, a, b, groups, n_valid, x_scale, w_scale, w_row_sum); break;
    case 8: tile<8>(out, ldo, a, b, groups, n_valid, x_scale, w_scale, w_row_sum); break;
    case 9: tile<9>(out, ldo, a, b, groups, n_valid, x_scale, w_scale, w_row_sum); break;
    case 10: tile<10>(out, ldo, a, b, groups, n_valid, x_scale, w_scale, w_row_sum); break;
    case 11: tile<11>(out, ldo, a, b, groups, n_valid, x_scale, w_scale, w_row_sum); break;
    default: tile<12>(out, ldo, a, b, groups, n_valid, x_scale, w_scale, w_row_sum); break;
  }
}

// W8A8 by groups of 32 inputs (gemv.h): out (kRows, n_valid, ldo) over `groups` groups of 32, each group's int32
// dot products scaled by the weight scale of its row and the activation scale of its token before they are summed.
// The operands swap VNNI's roles: the weights are the unsigned ones (q + 128, packed so) and the broadcast
// activations the signed ones, so the +128 is undone per token and group by starting the group's int32 dots at
// -128 x the group's activation sum (dot_start, from the quantizer: a broadcast load), not per weight vector.
// Per group: 8 steps of 4 inputs as in tile(), then per token a conversion, a scale product and an FMA.
// Int32 and float accumulators for kRows tokens: 4 x kRows + 4 vector registers, so kGroupTileRows = 6. Tried and
// not kept: tiles of up to 12 tokens over one 16-row half of a panel (2 x kRows + 4 registers, one weight load a
// step for all of them) ran 1.4-1.9x slower at batch 16 (qs_gemv_bench, A/B in one build): each broadcast of 4
// activation bytes then feeds one vpdpbusd instead of two.
constexpr int kGroupTileRows = 6;

template <int kRows>
void group_tile(float* out, int64_t ldo, const int8_t* a, const uint8_t* b, int64_t groups, int n_valid,
                const float* x_scale, const int32_t* dot_start, int64_t x_stride, const uint16_t* w_scale) {
  __m512 f0[kRows], f1[kRows];
  #pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r) f0[r] = f1[r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i c0[kRows], c1[kRows];
    #pragma GCC unroll 16
    for (int r = 0; r < kRows; ++r) c0[r] = c1[r] = _mm512_set1_epi32(dot_start[r * x_stride + g]);
    #pragma GCC unroll 8
    for (int64_t step = 0; step < kW8A8Group / 4; ++step) {
      const int64_t q = g * (kW8A8Group / 4) + step;   // the group of 4 inputs
      step4<kRows, true>(c0, c1, a + q * kRows * 4, b + q * 4 * kPanelWidth);
    }
    const __m512 d0 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w_scale + g * kPanelWidth)));
    const __m512 d1 =
        _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w_scale + g * kPanelWidth + 16)));
    #pragma GCC unroll 16
    for (int r = 0; r < kRows; ++r) {
      const __m512 xs = _mm512_set1_ps(x_scale[r * x_stride + g]);
      f0[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c0[r]), _mm512_mul_ps(d0, xs), f0[r]);
      f1[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c1[r]), _mm512_mul_ps(d1, xs), f1[r]);
    }
  }
  const __mmask16 m0 = n_valid >= 16 ? __mmask16(0xffff) : __mmask16((1u << n_valid) - 1);
  const __mmask16 m1 = n_valid >= 32 ? __mmask16(0xffff) : n_valid <= 16 ? 0 : __mmask16((1u << (n_valid - 16)) - 1);
  #pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r) {
    _mm512_mask_storeu_ps(out + r * ldo, m0, f0[r]);
    _mm512_mask_storeu_ps(out + r * ldo + 16, m1, f1[r]);
  }
}

void group_tile_rows(int rows, float* out, int64_t ldo, const int8_t* a, const uint8_t* b, int64_t groups,
                     int n_valid, const float* x_scale, const int32_t* dot_start, int64_t x_stride,
                     const uint16_t* w_scale) {
  switch (rows) {
    case 1: group_tile<1>(out, ldo, a, b, groups, n_valid, x_scale, dot_start, x_stride, w_scale); break;
    case 2: group_tile<2>(out, ldo, a, b, groups, n_valid, x_scale, dot_start, x_stride, w_scale); break;
    case 3: group_tile<3>(out, ldo, a, b, groups, n_valid, x_scale, dot_start, x_stride, w_scale); break;
    case 4: group_tile<4>(out, ldo, a, b, groups, n_valid, x_scale, dot_start, x_stride, w_scale); break;
    case 5: group_tile<5>(out, ldo, a, b, groups, n_valid, x_scale, dot_start, x_stride, w_scale); break;
    default: group_tile<6>(out, ldo, a, b, groups, n_valid, x_scale, dot_start, x_stride, w_scale); break;
  }
}

// Activations of tokens [t0, t0 + rows) as a tile reads them: (K / 4, rows, 4), zero past K.
void repack_tile(uint8_t* dst, const uint8_t* xq, int64_t t0, int64_t rows, int64_t K) {
  const int64_t groups = vnni_groups(K);
  if (K % 4 == 0) {
    // Whole groups of 4 (every model's K): a 32-bit word per token and group. Byte by byte, with the bounds check
    // below, this repack was 4.6% of a serving step at c=16 (perf, int8 by groups, an Intel Xeon).
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* src = xq + (t0 + r) * K;
      for (int64_t g = 0; g < groups; ++g) std::memcpy(dst + (g * rows + r) * 4, src + 4 * g, 4);
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* src = xq + (t0 + r) * K;
    for (int64_t g = 0; g < groups; ++g) {
      for (int64_t b = 0; b < 4; ++b) {
        const int64_t k = 4 * g + b;
        dst[(g * rows + r) * 4 + b] = k < K ? src[k] : uint8_t(0);
      }
    }
  }
}

// The two W8A8 kernels' driver: the activations repacked per tile of kTile tokens as a tile reads them (one token
// with K a multiple of 4 already is that), then threads over panels, each calling
// tile(panel, n_valid, t0, rows, activations) for every tile of tokens.
template <int kTile, class Tile>
void for_each_panel_tile(const uint8_t* xq, int64_t T, int64_t N, int64_t K, const Tile& tile) {
  const int64_t panels = packed_panels(N), quads = vnni_groups(K);
  const int64_t tiles = (T + kTile - 1) / kTile;
  const bool repack = T > 1 || K % 4 != 0;
  thread_local std::vector<uint8_t> packed_x;
  if (repack && packed_x.size() < size_t(T * quads * 4)) packed_x.resize(size_t(T * quads * 4));
  // The calling thread's buffer, named before the parallel region (each thread's thread_local is its own).
  uint8_t* ax = repack ? packed_x.data() : nullptr;
#pragma omp parallel if (panels > 1)
  {
    if (repack) {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < tiles; ++i) {
        const int64_t t0 = i * kTile, rows = std::min<int64_t>(kTile, T - t0);
        repack_tile(ax + t0 * quads * 4, xq, t0, rows, K);
      }
    }
#pragma omp for schedule(static) nowait   // the end of the parallel region is the barrier
    for (int64_t p = 0; p < panels; ++p) {
      const int n_valid = int(std::min<int64_t>(kPanelWidth, N - p * kPanelWidth));
      for (int64_t i = 0; i < tiles; ++i) {
        const int64_t t0 = i * kTile, rows = std::min<int64_t>(kTile, T - t0);
        tile(p, n_valid, t0, rows, repack ? ax + t0 * quads * 4 : xq);
      }
    }
  }
}

}  // namespace

void gemm_w8a8_vnni(float* out, const uint8_t* xq, const float* x_scale, const int8_t* packed, const float* w_scale,
                    const int32_t* w_row_sum, int64_t T, int64_t N, int64_t K) {
  static_assert(kTileRows == 12, "tile_rows dispatches 1..12");
  const int64_t groups = vnni_groups(K);
  const size_t panel_bytes = size_t(groups) * 4 * kPanelWidth;
  for_each_panel_tile<kTileRows>(xq, T, N, K, [&](int64_t p, int n_valid, int64_t t0, int64_t rows,
                                                  const uint8_t* a) {
    const int64_t n0 = p * kPanelWidth;
    tile_rows(int(rows), out + t0 * N + n0, N, a, packed + size_t(p) * panel_bytes, groups, n_valid, x_scale + t0,
              w_scale + n0, w_row_sum + n0);
  });
}

void gemm_w8a8_groups_vnni(float* out, const int8_t* xq, const float* x_scale, const int32_t* dot_start,
                           const uint8_t* packed, const uint16_t* w_scale, int64_t T, int64_t N, int64_t K) {
  static_assert(kGroupTileRows == 6, "group_tile_rows dispatches 1..6");
  const int64_t w_groups = K / kW8A8Group;
  const size_t panel_bytes = size_t(vnni_groups(K)) * 4 * kPanelWidth;
  for_each_panel_tile<kGroupTileRows>(reinterpret_cast<const uint8_t*>(xq), T, N, K,
                                      [&](int64_t p, int n_valid, int64_t t0, int64_t rows, const uint8_t* a) {
    const int64_t n0 = p * kPanelWidth;
    group_tile_rows(int(rows), out + t0 * N + n0, N, reinterpret_cast<const int8_t*>(a),
                    packed + size_t(p) * panel_bytes, w_groups, n_valid, x_scale + t0 * w_groups,
                    dot_start + t0 * w_groups, w_groups, w_scale + size_t(p * w_groups * kPanelWidth));
  });
}

}  // namespace qs::cpu
