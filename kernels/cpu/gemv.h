// The CPU linear kernels: GEMV/GEMM over weights dequantized in registers. Packed panels for fp32/fp16/bf16
// (one kernel from decode to prefill), row-major GEMVs for the int8 modes.
#pragma once
#include <cstddef>
#include <cstdint>

namespace qs::cpu {

// T = tokens (rows of x), N = out features, K = in features.

enum class WeightType { kI8, kU8, kF16, kBF16, kF32 };

// Packed weights: panels of kPanelWidth output features. Panel p is (K, kPanelWidth): for each k the values
// w[p * kPanelWidth + j, k], j = 0..kPanelWidth-1, side by side (zero past N). A GEMV streams the panels front to
// back (one sequential read of the weight) and keeps the outputs of a panel in registers, so no horizontal sums;
// a GEMM reuses each panel, from cache, for every block of tokens. Packed once at load.
constexpr int64_t kPanelWidth = 32;
inline int64_t packed_panels(int64_t N) { return (N + kPanelWidth - 1) / kPanelWidth; }
inline size_t packed_elements(int64_t N, int64_t K) { return size_t(packed_panels(N) * K * kPanelWidth); }
// dst (packed_elements(N, K) elements of `type`: kF32, kF16 or kBF16, round to nearest even) from w (N, K) f32.
void pack_weights(void* dst, const float* w, WeightType type, int64_t N, int64_t K);
// dst (K) = row n of packed weights, as f32.
void unpack_row(float* dst, const void* packed, WeightType type, int64_t n, int64_t N, int64_t K);
// out (T, N) = x (T, K) f32 @ W^T, W packed as above (kF32, kF16, kBF16). Any T; threads over panels.
// AVX-512 where the CPU has it, AVX2 + FMA + F16C otherwise.
void gemm_packed(float* out, const float* x, const void* packed, WeightType type, int64_t T, int64_t N, int64_t K);
// The same, one plain loop per output (the reference the fast paths are tested against).
void gemm_packed_reference(float* out, const float* x, const void* packed, WeightType type, int64_t T, int64_t N,
                           int64_t K);
// ISA-specific entries of gemm_packed (gemm_avx512.cpp, gemm_avx2.cpp), for tests to call each one directly.
void gemm_packed_avx512(float* out, const float* x, const void* packed, WeightType type, int64_t T, int64_t N,
                        int64_t K);
void gemm_packed_avx2(float* out, const float* x, const void* packed, WeightType type, int64_t T, int64_t N,
                      int64_t K);

// Rows of x one pass over the weights handles (one AVX-512 accumulator each).
constexpr int64_t kGemvMaxRows = 8;
// Up to this many rows (decode batches) the GEMV runs in passes of kGemvMaxRows: each pass streams the
// low-precision weights once, which beats dequantizing them to fp32 for sgemm; above it (prefill), sgemm.
constexpr int64_t kGemvBatchLimit = 32;
// How far ahead of its reads the row-major int8 GEMV (int8-weight-only --group-size 0) asks for its weights: a row
// follows the last one in memory, so ahead is further along the same stream. Without the hint it is latency-bound.
// On a 2-vCPU Intel Xeon (2026-12-04, qs_gemv_bench --precision int8-weight-only --group-size 0) it read at 51% of
// the plain read loop without it, 73-79% at 4 KiB. (The block GEMVs of the same measurements, one row at a time
// then, went 45% -> 87-88% at 4 KiB; they read tiles now and take kTilePrefetchBytes, gemv_blocks.h.)
constexpr int64_t kWeightPrefetchBytes = 4096;

bool gemv_avx512_available();
// out[t, n] = row_scale[n] * (sum_k x[t, k] * w[n, k] - zero_point * sum_k x[t, k]), for T <= kGemvMaxRows.
// x (T, K) f32, w (N, K) of `type`, row_scale (N) or null for 1. Requires gemv_avx512_available().
void gemv_avx512(float* out, const float* x, const void* w, WeightType type, const float* row_scale,
                 float zero_point, int64_t T, int64_t N, int64_t K);

// W8A8 packed for VNNI: panels of kPanelWidth output rows; panel p is (ceil(K / 4), kPanelWidth, 4): for each
// group of 4 inputs, the 4 int8 weights of each of the 32 rows side by side (zero past N and past K), so one
// vpdpbusd multiplies a broadcast group of 4 activations into 16 outputs and the weights stream in order.
inline int64_t vnni_groups(int64_t K) { return (K + 3) / 4; }
inline size_t vnni_packed_bytes(int64_t N, int64_t K) {
  return size_t(packed_panels(N) * vnni_groups(K) * 4 * kPanelWidth);
}
// dst (vnni_packed_bytes(N, K)) from q (N, K) int8.
void pack_weights_vnni(int8_t* dst, const int8_t* q, int64_t N, int64_t K);
// Weight (n, k) of a VNNI-packed matrix.
int8_t vnni_weight(const int8_t* packed, int64_t n, int64_t k, int64_t K);
// out[t, n] = (sum_k xq[t, k] * w[n, k] - 128 * w_row_sum[n]) * x_scale[t] * w_scale[n] over VNNI-packed w, any T;
// xq (T, K) are the per-token int8 activations shifted by +128 to uint8. Requires gemv_vnni_available().
void gemm_w8a8_vnni(float* out, const uint8_t* xq, const float* x_scale, const int8_t* packed, const float* w_scale,
                    const int32_t* w_row_sum, int64_t T, int64_t N, int64_t K);
// The same, one plain loop per output.
void gemm_w8a8_reference(float* out, const uint8_t* xq, const float* x_scale, const int8_t* packed,
                         const float* w_scale, const int32_t* w_row_sum, int64_t T, int64_t N, int64_t K);
// W8A8 by groups of kW8A8Group inputs along K (K a multiple of it): one fp16 weight scale per (row, group), as a
// GGUF Q8_0 block has, and one activation scale per (token, group), as llama.cpp quantizes activations for Q8_0.
// VNNI multiplies unsigned by signed bytes; here the weights are the unsigned operand: VNNI-packed as above but
// stored as q + 128 (uint8), so the activations stay signed and the +128 is undone by starting each token's dot of
// a group at -128 x the group's activation sum, instead of by a weight-sum product per weight vector. The scales are
// packed by panel, (panels, K / kW8A8Group, kPanelWidth) fp16, zero past N, so a tile loads the 32 scales of its
// panel's group in one read, in the order it streams.
constexpr int64_t kW8A8Group = 32;
inline size_t w8a8_group_scale_count(int64_t N, int64_t K) {
  return size_t(packed_panels(N) * (K / kW8A8Group) * kPanelWidth);
}
// dst (vnni_packed_bytes(N, K)) from q (N, K) int8: pack_weights_vnni's layout, each byte q + 128.
void pack_weights_vnni_offset(uint8_t* dst, const int8_t* q, int64_t N, int64_t K);
// dst (w8a8_group_scale_count(N, K)) from d (N, K / kW8A8Group) fp16 bits, row after row.
void pack_w8a8_group_scales(uint16_t* dst, const uint16_t* d, int64_t N, int64_t K);
// The fp16 bits of the scale of row n's group g in packed scales.
uint16_t w8a8_group_scale(const uint16_t* packed_scales, int64_t n, int64_t g, int64_t K);
// out[t, n] = sum_g x_scale[t, g] * w_scale[n, g] * sum_{k in g} xq[t, k] * w[n, k], the groups summed in order,
// each as fma(float(int dot), w_scale * x_scale, sum); xq (T, K) int8, x_scale and dot_start (T, K / 32) from
// quantize_per_group_int8 (dot_start = -128 x each group's sum of xq), w offset-packed as above. Any T; requires
// gemv_vnni_available().
void gemm_w8a8_groups_vnni(float* out, const int8_t* xq, const float* x_scale, const int32_t* dot_start,
                           const uint8_t* packed, const uint16_t* w_scale, int64_t T, int64_t N, int64_t K);
// The same, one plain loop per output: the kernel's exact result (same products, same order of float sums).
void gemm_w8a8_groups_reference(float* out, const int8_t* xq, const float* x_scale, const uint8_t* packed,
                                const uint16_t* w_scale, int64_t T, int64_t N, int64_t K);
// AVX-512 VNNI (the W8A8 kernel's requirement).
bool gemv_vnni_available();

}  // namespace qs::cpu
