// The fast paged attention with AVX-512 (compiled with -mavx512*, called after a CPUID check): 16 keys' scores
// per vector, fp16, bf16 and int8 K/V converted in registers (vcvtph2ps; a shift; vpmovsxbd + vcvtdq2ps), exp2
// by polynomial and vscalefps.
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/attention_paged.h"
#include "kernels/cpu/exp2_poly.h"

namespace qs::cpu::attention_avx512_impl {

struct Vec {
  using R = __m512;
  static constexpr int W = 16;
  static constexpr int kAccumulators = 16;   // of the 32 zmm registers, the rest for loads and broadcasts
  static constexpr int kMaxRows = 8;
  // Partial sums of each dot product and rows of a register tile of scores: fixed, whatever the tile's rows, so
  // that a row's bits never depend on them (attention_paged_kernel.h).
  static constexpr int kScoreAccumulators = 4;
  static constexpr int kScoreRows = 4;
  static R zero() { return _mm512_setzero_ps(); }
  static R set1(float x) { return _mm512_set1_ps(x); }
  static R load(const float* p) { return _mm512_loadu_ps(p); }
  static R load(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static R load(const Bf16* p) { return from_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static R load(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static R load_partial(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), p); }
  static R load_partial(const Bf16* p, int64_t n) {
    return from_bf16(_mm256_maskz_loadu_epi16(__mmask16((1u << n) - 1), p));
  }
  static R load_partial(const int8_t* p, int64_t n) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(__mmask16((1u << n) - 1), p)));
  }
  // bf16 is the top half of an fp32: widened and shifted up, exactly.
  static R from_bf16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
  static R load_partial(const uint16_t* p, int64_t n) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(__mmask16((1u << n) - 1), p));
  }
  static void store(float* p, R v) { _mm512_storeu_ps(p, v); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static R max(R a, R b) { return _mm512_max_ps(a, b); }
  static R fmadd(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static float reduce_max(R v) { return _mm512_reduce_max_ps(v); }
  static float reduce_add(R v) { return _mm512_reduce_add_ps(v); }
  // Lanes k.. replaced by fill.
  static R keep_first(R v, int64_t k, float fill) {
    if (k >= W) return v;
    if (k <= 0) return set1(fill);
    return _mm512_mask_blend_ps(__mmask16((1u << k) - 1), set1(fill), v);
  }
  // 2^x: x = n + f, |f| <= 1/2, 2^f by exp2_fraction, times 2^n by vscalefps; 0 below -126 (and for -inf, the
  // masked scores).
  static R exp2(R x) {
    const __mmask16 tiny = _mm512_cmp_ps_mask(x, set1(-126.0f), _CMP_LT_OQ);
    x = _mm512_min_ps(_mm512_max_ps(x, set1(-126.0f)), set1(126.0f));
    const R n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const R f = sub(x, n);
    const R p = exp2_fraction<Vec>(f);
    return _mm512_maskz_mov_ps(__mmask16(~tiny), _mm512_scalef_ps(p, n));
  }
};

}  // namespace qs::cpu::attention_avx512_impl

#define QS_ATTN_NAMESPACE attention_avx512_impl
#include "kernels/cpu/attention_paged_kernel.h"

namespace qs::cpu {
void attention_run_avx512(const AttentionPlan& plan) { attention_avx512_impl::run(plan); }
}  // namespace qs::cpu
