// Small-batch GEMV over low-precision weights, dequantized in registers (the memory-bound decode path).
#pragma once
#include <cstdint>

namespace qs::cpu {

enum class WeightType { kI8, kU8, kF16, kBF16 };

// Rows of x one pass over the weights handles (one AVX-512 accumulator each).
constexpr int64_t kGemvMaxRows = 8;
// Up to this many rows (decode batches) the GEMV runs in passes of kGemvMaxRows: each pass streams the
// low-precision weights once, which beats dequantizing them to fp32 for sgemm; above it (prefill), sgemm.
constexpr int64_t kGemvBatchLimit = 32;

bool gemv_avx512_available();
// out[t, n] = row_scale[n] * (sum_k x[t, k] * w[n, k] - zero_point * sum_k x[t, k]), for T <= kGemvMaxRows.
// x (T, K) f32, w (N, K) of `type`, row_scale (N) or null for 1. Requires gemv_avx512_available().
void gemv_avx512(float* out, const float* x, const void* w, WeightType type, const float* row_scale,
                 float zero_point, int64_t T, int64_t N, int64_t K);

bool gemv_vnni_available();
// W8A8 for decode batches: out[t, n] = (sum_k xq[t, k] * w[n, k] - 128 * w_row_sum[n]) * x_scale[t] * w_scale[n],
// where xq holds the per-token int8 activations shifted by +128 to uint8 (VNNI multiplies u8 by s8) and
// w_row_sum[n] = sum_k w[n, k] undoes the shift. T <= kGemvMaxRows. Requires gemv_vnni_available().
void gemv_w8a8_vnni(float* out, const uint8_t* xq, const float* x_scale, const int8_t* w, const float* w_scale,
                    const int32_t* w_row_sum, int64_t T, int64_t N, int64_t K);

}  // namespace qs::cpu
