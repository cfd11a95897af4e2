// Batch-1 GEMV of int4-weight-only on AVX-512 BF16 CPUs (compiled with -mavx512bf16, called after a CPUID check):
// a split Q4_1 weight (gemv_blocks.h) against fp32 activations, every product exact.
//
// Why bf16 for an fp32 product: a 4-bit weight is exact in bf16, and an fp32 activation is exactly the sum of three
// bf16 (8 + 8 + 8 significand bits, each part rounded from what the previous left), so three VDPBF16PS give every
// weight x activation-part product exactly (4 x 8 bits fit fp32's 24) and sum them in fp32 as any kernel sums:
// the result differs from gemv_blocks_avx512's only in the order of the fp32 additions. What it saves is the
// conversion: the fp32 kernel widens, masks and converts every nibble (five zmm operations a block besides its
// three multiplies) and one block's scale at a time; here a table lookup (VPERMW) turns 32 nibbles into bf16 words,
// one VDPBF16PS multiplies two blocks' 32 pairs, and sixteen blocks' d and m come in one load each.
// Measured on the 2-core AMD EPYC (Zen 4), one thread, weights in L2: the fp32 kernel 1.8-2.0 ns a block, this one
// 1.4-1.7 on the split layout, and 1.7-1.95 when it read GGUF's interleaved blocks (two 16-byte loads and a scalar
// scale conversion a pair): the split layout is what makes the kernel pay.
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/gemv.h"
#include "kernels/cpu/gemv_blocks.h"

// GCC 12 reports its own intrinsics' undefined pass-through operands (in _mm512_reduce_add_ps) as uninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace qs::cpu {

// QUANTSERVE_CPU_BF16=0 turns the kernel off (int4 decode then takes gemv_blocks_avx512): for A/B runs, and for
// anyone who wants the fp32 kernel's summation order.
bool gemv_bf16_available() {
  const char* env = std::getenv("QUANTSERVE_CPU_BF16");
  if (env && std::string(env) == "0") return false;
  return gemv_avx512_available() && __builtin_cpu_supports("avx512bf16");
}

namespace {

constexpr int kSplits = 3;   // bf16 parts an activation is split into: three hold an fp32 exactly
// Rows of w that share one load of the activations: 4 streamed at 18-26 GB/s on the EPYC's four linear shapes,
// 2 at 17-21 (2 threads, 64 MB of weights a shape, best of 30).
constexpr int kRowsAtOnce = 4;

// bf16 bits of (i & 15) for i = 0..31: VPERMW indexes with a word's low 5 bits, so a byte's low nibble needs no
// mask. Small integers are exact in bf16, so the fp32 bits' upper half is the value.
__m512i nibble_table() {
  alignas(64) uint16_t table[32];
  for (int i = 0; i < 32; ++i) {
    const float f = float(i & 15);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    table[i] = uint16_t(bits >> 16);
  }
  return _mm512_load_si512(table);
}

// fp32 values of 16 bf16 words.
inline __m512 widen_bf16(__m256i words) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(words), 16)); }

// x (K = 32 nb) as kSplits bf16 parts, in the order the kernel multiplies them: for block pair p and half h
// (elements 0..15 or 16..31 of each block), 32 words, block 2p's 16 then block 2p + 1's (zeros past the last
// block), part after part: dst[((p * 2 + h) * kSplits + s) * 32 + word].
void split_activations(uint16_t* dst, const float* x, int64_t nb) {
  for (int64_t p = 0; p < (nb + 1) / 2; ++p) {
    for (int h = 0; h < 2; ++h) {
      __m512 first = _mm512_loadu_ps(x + 2 * p * 32 + 16 * h);
      __m512 second = 2 * p + 1 < nb ? _mm512_loadu_ps(x + (2 * p + 1) * 32 + 16 * h) : _mm512_setzero_ps();
      for (int s = 0; s < kSplits; ++s) {
        const __m512i part = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(second, first));   // rounds to nearest
        _mm512_storeu_si512(dst + ((p * 2 + h) * kSplits + s) * 32, part);
        first = _mm512_sub_ps(first, widen_bf16(_mm512_castsi512_si256(part)));   // exact: what the part missed
        second = _mm512_sub_ps(second, widen_bf16(_mm512_extracti64x4_epi64(part, 1)));
      }
    }
  }
}

// The kRows rows' dot products of block pair (b, b + 1) into acc, block b's d in lanes 0..7 of d_pair and
// b + 1's in 8..15. A lone last block (b + 1 == nb) reads 16 bytes, not 32.
template <int kRows, bool kLone>
inline void pair_bf16(__m512 acc[kRows], const __m512 d_pair[kRows], const uint16_t* xs, const Q4_1Split& w,
                      int64_t n0, int64_t nb, int64_t b, __m512i table) {
  const uint16_t* xp = xs + (b / 2) * 2 * kSplits * 32;
  __m512i xv[2 * kSplits];
#pragma GCC unroll 6
  for (int i = 0; i < 2 * kSplits; ++i) xv[i] = _mm512_loadu_si512(xp + i * 32);
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r) {
    const uint8_t* q = w.qs + ((n0 + r) * nb + b) * 16;
    _mm_prefetch(reinterpret_cast<const char*>(q + kWeightPrefetchBytes), _MM_HINT_T0);
    const __m256i bytes = kLone ? _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)))
                                : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
    const __m512i v = _mm512_cvtepu8_epi16(bytes);   // lo | hi << 4 in each word
    const __m512bh lo = reinterpret_cast<__m512bh>(_mm512_permutexvar_epi16(v, table));
    const __m512bh hi = reinterpret_cast<__m512bh>(_mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), table));
    __m512 pl = _mm512_setzero_ps(), ph = _mm512_setzero_ps();
#pragma GCC unroll 3
    for (int s = 0; s < kSplits; ++s) {
      pl = _mm512_dpbf16_ps(pl, lo, reinterpret_cast<__m512bh>(xv[s]));
      ph = _mm512_dpbf16_ps(ph, hi, reinterpret_cast<__m512bh>(xv[kSplits + s]));
    }
    acc[r] = _mm512_fmadd_ps(d_pair[r], _mm512_add_ps(pl, ph), acc[r]);
  }
}

// out[n0 .. n0 + kRows) for kRows rows of w that share every activation load.
template <int kRows>
void rows_bf16(float* out, const uint16_t* xs, const float* xsum, const Q4_1Split& w, int64_t n0, int64_t nb,
               __m512i table) {
  __m512 acc[kRows], macc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = _mm512_setzero_ps(), macc[r] = _mm512_setzero_ps();
  for (int64_t c = 0; c < nb; c += 16) {   // sixteen blocks' scales at a time
    const int64_t count = std::min<int64_t>(16, nb - c);
    const __mmask16 mask = __mmask16((1u << count) - 1);
    const __m512 sums = _mm512_maskz_loadu_ps(mask, xsum + c);
    __m512 d[kRows];
    for (int r = 0; r < kRows; ++r) {
      const int64_t i = (n0 + r) * nb + c;
      // The scales as far ahead in blocks as the nibbles: 2 bytes a block against 16.
      _mm_prefetch(reinterpret_cast<const char*>(w.d + i) + kWeightPrefetchBytes / 8, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(w.m + i) + kWeightPrefetchBytes / 8, _MM_HINT_T0);
      d[r] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, w.d + i));
      macc[r] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, w.m + i)), sums, macc[r]);
    }
    // Lanes 0..7 of a pair's dot products are block b's, 8..15 block b + 1's: their d, from the sixteen.
    __m512i d_index = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512i two = _mm512_set1_epi32(2);
    __m512 d_pair[kRows];
    if (count == 16) {
#pragma GCC unroll 8
      for (int k = 0; k < 16; k += 2) {
        for (int r = 0; r < kRows; ++r) d_pair[r] = _mm512_permutexvar_ps(d_index, d[r]);
        pair_bf16<kRows, false>(acc, d_pair, xs, w, n0, nb, c + k, table);
        d_index = _mm512_add_epi32(d_index, two);
      }
      continue;
    }
    for (int64_t k = 0; k < count; k += 2) {
      for (int r = 0; r < kRows; ++r) d_pair[r] = _mm512_permutexvar_ps(d_index, d[r]);
      if (c + k + 1 < nb) {
        pair_bf16<kRows, false>(acc, d_pair, xs, w, n0, nb, c + k, table);
      } else {
        pair_bf16<kRows, true>(acc, d_pair, xs, w, n0, nb, c + k, table);
      }
      d_index = _mm512_add_epi32(d_index, two);
    }
  }
  for (int r = 0; r < kRows; ++r) out[n0 + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r], macc[r]));
}

}  // namespace

void gemv_q4_1_bf16(float* out, const float* x, const void* w, int64_t N, int64_t K) {
  const int64_t nb = K / 32;
  std::vector<uint16_t> xs(size_t((nb + 1) / 2 * 2 * kSplits * 32));
  std::vector<float> xsum(static_cast<size_t>(nb));
  split_activations(xs.data(), x, nb);
  block_sums_avx512(xsum.data(), x, nb);
  const Q4_1Split q = q4_1_split(w, N * nb);
  const __m512i table = nibble_table();
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < N / kRowsAtOnce; ++p) {
    rows_bf16<kRowsAtOnce>(out, xs.data(), xsum.data(), q, kRowsAtOnce * p, nb, table);
  }
  for (int64_t n = N / kRowsAtOnce * kRowsAtOnce; n < N; ++n) rows_bf16<1>(out, xs.data(), xsum.data(), q, n, nb, table);
}

}  // namespace qs::cpu
