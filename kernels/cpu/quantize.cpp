// Reference quantizers (see quantize.h).
#include "kernels/cpu/quantize.h"

#include <algorithm>
#include <cmath>

namespace qs::cpu {

namespace {
// Zero rows get scale 1 so that dequantization stays exact (all zeros) and nothing divides by zero.
inline float absmax_scale(const float* x, int64_t K) {
  float amax = 0;
  for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(x[k]));
  return amax > 0 ? amax / 127.0f : 1.0f;
}
inline void quantize_row_int8(int8_t* q, const float* x, int64_t K, float scale) {
  const float inv = 1.0f / scale;
  for (int64_t k = 0; k < K; ++k) {
    const float v = std::nearbyint(x[k] * inv);
    q[k] = int8_t(std::clamp(v, -127.0f, 127.0f));
  }
}
}  // namespace

void quantize_per_channel_int8(int8_t* q, float* scales, const float* w, int64_t N, int64_t K) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    scales[n] = absmax_scale(w + n * K, K);
    quantize_row_int8(q + n * K, w + n * K, K, scales[n]);
  }
}

void quantize_per_token_int8(int8_t* q, float* scales, const float* x, int64_t T, int64_t K) {
#pragma omp parallel for schedule(static) if (T > 4)
  for (int64_t t = 0; t < T; ++t) {
    scales[t] = absmax_scale(x + t * K, K);
    quantize_row_int8(q + t * K, x + t * K, K, scales[t]);
  }
}

void quantize_per_token_int8_shifted(uint8_t* q, float* scales, const float* x, int64_t T, int64_t K) {
#pragma omp parallel for schedule(static) if (T > 4)
  for (int64_t t = 0; t < T; ++t) {
    const float* xt = x + t * K;
    scales[t] = absmax_scale(xt, K);
    const float inv = 1.0f / scales[t];
    uint8_t* qt = q + t * K;
    for (int64_t k = 0; k < K; ++k) {
      const float v = std::nearbyint(xt[k] * inv);
      qt[k] = uint8_t(int32_t(std::clamp(v, -127.0f, 127.0f)) + 128);
    }
  }
}

void quantize_per_tensor_uint8(uint8_t* q, float* scale, int32_t* zero_point, const float* w, int64_t n) {
  float lo = 0, hi = 0;
  for (int64_t i = 0; i < n; ++i) {
    lo = std::min(lo, w[i]);
    hi = std::max(hi, w[i]);
  }
  const float s = hi > lo ? (hi - lo) / 255.0f : 1.0f;
  const int32_t zp = int32_t(std::clamp(std::nearbyint(-lo / s), 0.0f, 255.0f));
  const float inv = 1.0f / s;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    q[i] = uint8_t(std::clamp(std::nearbyint(w[i] * inv) + float(zp), 0.0f, 255.0f));
  }
  *scale = s;
  *zero_point = zp;
}

}  // namespace qs::cpu
