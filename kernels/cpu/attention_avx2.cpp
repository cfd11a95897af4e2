// The fast paged attention with AVX2 + FMA + F16C (the CPU baseline): 8 keys' scores per vector.
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/attention_paged.h"
#include "kernels/cpu/exp2_poly.h"

namespace qs::cpu::attention_avx2_impl {

struct Vec {
  using R = __m256;
  static constexpr int W = 8;
  static constexpr int kAccumulators = 8;   // of the 16 ymm registers
  static constexpr int kMaxRows = 4;
  // Partial sums of each dot product and rows of a register tile of scores: fixed, whatever the tile's rows, so
  // that a row's bits never depend on them (attention_paged_kernel.h).
  static constexpr int kScoreAccumulators = 2;
  static constexpr int kScoreRows = 4;
  static R zero() { return _mm256_setzero_ps(); }
  static R set1(float x) { return _mm256_set1_ps(x); }
  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static R load(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static R load(const Bf16* p) {   // the top half of an fp32: widened and shifted up, exactly
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static R load(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  template <class E>
  static R load_partial(const E* p, int64_t n) {
    E tmp[W] = {};
    for (int64_t i = 0; i < n; ++i) tmp[i] = p[i];
    return load(tmp);
  }
  static void store(float* p, R v) { _mm256_storeu_ps(p, v); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R max(R a, R b) { return _mm256_max_ps(a, b); }
  static R fmadd(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static float reduce_max(R v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }
  static float reduce_add(R v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
  static R keep_first(R v, int64_t k, float fill) {
    if (k >= W) return v;
    if (k <= 0) return set1(fill);
    const R lane = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_blendv_ps(set1(fill), v, _mm256_cmp_ps(lane, set1(float(k)), _CMP_LT_OQ));
  }
  // As the AVX-512 exp2, with 2^n built in the exponent bits.
  static R exp2(R x) {
    const R tiny = _mm256_cmp_ps(x, set1(-126.0f), _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, set1(-126.0f)), set1(126.0f));
    const R n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const R f = sub(x, n);
    const R p = exp2_fraction<Vec>(f);
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(tiny, mul(p, _mm256_castsi256_ps(e)));
  }
};

}  // namespace qs::cpu::attention_avx2_impl

#define QS_ATTN_NAMESPACE attention_avx2_impl
#include "kernels/cpu/attention_paged_kernel.h"

namespace qs::cpu {
void attention_run_avx2(const AttentionPlan& plan) { attention_avx2_impl::run(plan); }
}  // namespace qs::cpu
