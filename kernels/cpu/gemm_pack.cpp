// Packed weight panels for the CPU linear kernels (see gemv.h): packing, unpacking, the reference GEMM and the
// run-time choice between the AVX-512 and AVX2 kernels.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/gemv.h"
#include "kernels/dtype.h"

namespace qs::cpu {

namespace {
inline size_t packed_index(int64_t n, int64_t k, int64_t K) {
  return size_t((n / kPanelWidth) * K * kPanelWidth + k * kPanelWidth + n % kPanelWidth);
}

inline float packed_value(const void* packed, WeightType type, size_t i) {
  switch (type) {
    case WeightType::kF32: return static_cast<const float*>(packed)[i];
    case WeightType::kF16: return f16_to_f32(static_cast<const uint16_t*>(packed)[i]);
    case WeightType::kBF16: return bf16_to_f32(static_cast<const uint16_t*>(packed)[i]);
    default: return 0.0f;   // not a packed type
  }
}
}  // namespace

void pack_weights(void* dst, const float* w, WeightType type, int64_t N, int64_t K) {
  const int64_t panels = packed_panels(N);
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < panels; ++p) {
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t j = 0; j < kPanelWidth; ++j) {
        const int64_t n = p * kPanelWidth + j;
        const float v = n < N ? w[n * K + k] : 0.0f;
        const size_t i = size_t(p * K * kPanelWidth + k * kPanelWidth + j);
        switch (type) {
          case WeightType::kF32: static_cast<float*>(dst)[i] = v; break;
          case WeightType::kF16: static_cast<uint16_t*>(dst)[i] = f32_to_f16(v); break;
          case WeightType::kBF16: static_cast<uint16_t*>(dst)[i] = f32_to_bf16(v); break;
          default: break;
        }
      }
    }
  }
}

void unpack_row(float* dst, const void* packed, WeightType type, int64_t n, int64_t N, int64_t K) {
  (void)N;
  for (int64_t k = 0; k < K; ++k) dst[k] = packed_value(packed, type, packed_index(n, k, K));
}

void gemm_packed_reference(float* out, const float* x, const void* packed, WeightType type, int64_t T, int64_t N,
                           int64_t K) {
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t n = 0; n < N; ++n) {
      float acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += x[t * K + k] * packed_value(packed, type, packed_index(n, k, K));
      out[t * N + n] = acc;
    }
  }
}

void pack_weights_vnni(int8_t* dst, const int8_t* q, int64_t N, int64_t K) {
  const int64_t panels = packed_panels(N), groups = vnni_groups(K);
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < panels; ++p) {
    int8_t* panel = dst + p * groups * 4 * kPanelWidth;
    for (int64_t g = 0; g < groups; ++g) {
      for (int64_t j = 0; j < kPanelWidth; ++j) {
        const int64_t n = p * kPanelWidth + j;
        for (int64_t b = 0; b < 4; ++b) {
          const int64_t k = 4 * g + b;
          panel[(g * kPanelWidth + j) * 4 + b] = n < N && k < K ? q[n * K + k] : int8_t(0);
        }
      }
    }
  }
}

int8_t vnni_weight(const int8_t* packed, int64_t n, int64_t k, int64_t K) {
  const int64_t p = n / kPanelWidth, j = n % kPanelWidth, g = k / 4, b = k % 4;
  return packed[((p * vnni_groups(K) + g) * kPanelWidth + j) * 4 + b];
}

void gemm_w8a8_reference(float* out, const uint8_t* xq, const float* x_scale, const int8_t* packed,
                         const float* w_scale, const int32_t* w_row_sum, int64_t T, int64_t N, int64_t K) {
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t n = 0; n < N; ++n) {
      int32_t acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += int32_t(xq[t * K + k]) * vnni_weight(packed, n, k, K);
      out[t * N + n] = float(acc - 128 * w_row_sum[n]) * x_scale[t] * w_scale[n];
    }
  }
}

void pack_weights_vnni_offset(uint8_t* dst, const int8_t* q, int64_t N, int64_t K) {
  pack_weights_vnni(reinterpret_cast<int8_t*>(dst), q, N, K);
  for (size_t i = 0; i < vnni_packed_bytes(N, K); ++i) dst[i] ^= 0x80;   // q + 128 for every int8 q
}

void pack_w8a8_group_scales(uint16_t* dst, const uint16_t* d, int64_t N, int64_t K) {
  const int64_t groups = K / kW8A8Group;
  for (int64_t p = 0; p < packed_panels(N); ++p) {
    for (int64_t g = 0; g < groups; ++g) {
      for (int64_t j = 0; j < kPanelWidth; ++j) {
        const int64_t n = p * kPanelWidth + j;
        dst[(p * groups + g) * kPanelWidth + j] = n < N ? d[n * groups + g] : uint16_t(0);
      }
    }
  }
}

uint16_t w8a8_group_scale(const uint16_t* packed_scales, int64_t n, int64_t g, int64_t K) {
  return packed_scales[((n / kPanelWidth) * (K / kW8A8Group) + g) * kPanelWidth + n % kPanelWidth];
}

void gemm_w8a8_groups_reference(float* out, const int8_t* xq, const float* x_scale, const uint8_t* packed,
                                const uint16_t* w_scale, int64_t T, int64_t N, int64_t K) {
  const int64_t groups = K / kW8A8Group;
  const auto* bytes = reinterpret_cast<const int8_t*>(packed);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t n = 0; n < N; ++n) {
      float acc = 0;
      for (int64_t g = 0; g < groups; ++g) {
        int32_t dot = 0;
        for (int64_t k = g * kW8A8Group; k < (g + 1) * kW8A8Group; ++k) {
          dot += int32_t(xq[t * K + k]) * (int32_t(uint8_t(vnni_weight(bytes, n, k, K))) - 128);
        }
        const float scale = f16_to_f32(w8a8_group_scale(w_scale, n, g, K)) * x_scale[t * groups + g];
        acc = std::fma(float(dot), scale, acc);
      }
      out[t * N + n] = acc;
    }
  }
}

void gemm_packed(float* out, const float* x, const void* packed, WeightType type, int64_t T, int64_t N, int64_t K) {
  static const bool avx512 = gemv_avx512_available();
  if (avx512) {
    gemm_packed_avx512(out, x, packed, type, T, N, K);
  } else {
    gemm_packed_avx2(out, x, packed, type, T, N, K);
  }
}

}  // namespace qs::cpu
