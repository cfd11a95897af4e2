// Launchers of the CUDA backend's kernels: raw pointers, shapes and a stream; the backend owns the memory.
// Each launcher checks its preconditions and throws qs::Error (kInternal/kUnsupported) with a sentence.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/backend.h"
#include "kernels/dtype.h"
#include "kernels/precision.h"

namespace qs::cuda {

// T = tokens, C = channels, N = out features, K = in features, Np/Kp = N/K padded to kGemmPad,
// NH = query heads, NKV = key/value heads, HD = head dim, BS = KV block size, L = logit rows.
// "float" tensors below are F32, F16 or BF16 as their DType argument says; activations are F32.

// The int8 GEMM's m and k (N and K) are padded to this: cuBLASLt's int8 kernels want multiples of 4 and
// 16-byte aligned rows; 16 keeps every padded int8 row 16-byte aligned for vector loads too.
constexpr int64_t kGemmPad = 16;
// Largest batch the int8 weight-only GEMV handles; above it the weight is dequantized to fp16 for cuBLASLt.
constexpr int64_t kGemvMaxTokens = 8;

// ---- quantize.cu: weight preparation at load --------------------------------------------------------------

// dst[n] (dst_type) = src[n] (src_type), F32/F16/BF16 each way.
void cast_float(void* dst, DType dst_type, const void* src, DType src_type, int64_t n, cudaStream_t stream);

// Symmetric per-output-channel int8: scales[Np] = absmax(row)/127, q[Np, Kp] = round(w / scale).
// Padding rows (N..Np) and columns (K..Kp) are zero, padding scales are zero.
void quantize_per_channel_int8(int8_t* q, float* scales, const void* w, DType w_type, int64_t N, int64_t K,
                               int64_t Np, int64_t Kp, cudaStream_t stream);

// Per-tensor asymmetric uint8 (range widened to include 0): params[2] = {scale, zero_point},
// q[n] = clamp(round(w / scale) + zero_point, 0, 255). `minmax` is scratch of 2 floats.
void quantize_per_tensor_uint8(uint8_t* q, float* params, float* minmax, const void* w, DType w_type, int64_t n,
                               cudaStream_t stream);

// Blocks of 32 weights, row after row as GGUF lays them out (the CPU backend's kernels/cpu/gemv_blocks.h
// describes each): int4-weight-only's Q4_1 and Q8_0, group-wise int8-weight-only's Q8_0 and U8Min.
enum class BlockKind { kQ4_1, kQ8_0, kU8Min };

// A quantized or cast weight as the error measurement reads it back: element (row, col) of an N x K matrix.
struct DequantView {
  enum Kind { kFloat, kPerChannelInt8, kPerTensorUint8, kBlocks } kind = kFloat;
  const void* data = nullptr;    // kFloat: [N, K] in float_type; int8: [Np, Kp]; uint8: [N*K]; blocks: [N, K / 32]
  DType float_type = DType::F32; // kFloat only
  int64_t ld = 0;                // row stride in elements (blocks: in blocks)
  const float* scales = nullptr; // per channel [Np], or per tensor {scale, zero_point}
  BlockKind block_kind = BlockKind::kQ4_1;   // kBlocks only
};

// Bytes of device scratch measure_quant_error_device needs.
size_t quant_error_scratch_bytes();
// QuantError of `view` against `original` (N x K, original_type) on the device; synchronizes the stream.
// The median is read off a 4096-bin histogram of |error| over [0, max_abs]: exact to max_abs / 8192.
QuantError measure_quant_error_device(const void* original, DType original_type, const DequantView& view,
                                      int64_t N, int64_t K, void* scratch, cudaStream_t stream);

// ---- gemm_kernels.cu: the int8 paths around the GEMM ------------------------------------------------------

// Per-token symmetric int8: scales[T] = absmax(x[t])/127, q[T, Kp] = round(x / scale), zero past K.
void quantize_rows_int8(int8_t* q, float* scales, const float* x, int64_t T, int64_t K, int64_t Kp,
                        cudaStream_t stream);
// out[T, N] = act(acc[T, ldacc] * row_scales[T] * col_scales[N] + bias[N]); bias may be null.
void dequantize_int32(float* out, const int32_t* acc, int64_t ldacc, const float* row_scales,
                      const float* col_scales, const float* bias, Activation act, int64_t T, int64_t N,
                      cudaStream_t stream);
// out[T, N] = act(out + bias), in place; bias may be null.
void bias_activation(float* out, const float* bias, Activation act, int64_t T, int64_t N, cudaStream_t stream);
// c[T, Np] = x[T, Kp] . w[Np, Kp]^T in int32: tiled dp4a kernel (the fallback when cuBLASLt is wrong or absent).
void int8_gemm_dp4a(int32_t* c, const int8_t* x, const int8_t* w, int64_t T, int64_t Np, int64_t Kp,
                    cudaStream_t stream);
// Same product, one thread per output and a plain loop: the reference the load-time check trusts.
void int8_gemm_reference(int32_t* c, const int8_t* x, const int8_t* w, int64_t T, int64_t Np, int64_t Kp,
                         cudaStream_t stream);
// mismatches[0] = number of (t, n) with a[t, n] != b[t, n] (both [T, ld]); mismatches must be zeroed first.
void count_mismatches(unsigned int* mismatches, const int32_t* a, const int32_t* b, int64_t T, int64_t N,
                      int64_t ld, cudaStream_t stream);
// Deterministic pseudo-random int8 in [-127, 127] (the load-time check's activations).
void fill_random_int8(int8_t* q, int64_t n, uint32_t seed, cudaStream_t stream);

// int8 weight-only, T <= kGemvMaxTokens: out[T, N] = act(x[T, K] . (q[N, Kp] * scales[N])^T + bias).
void int8_weight_only_gemv(float* out, const float* x, const int8_t* q, const float* scales, const float* bias,
                           Activation act, int64_t T, int64_t N, int64_t K, int64_t Kp, cudaStream_t stream);
// w[N, K] (F16 or BF16) = q[N, Kp] * scales[N]: the large-batch weight-only path feeds this to cuBLASLt.
void dequantize_per_channel(void* w, DType w_type, const int8_t* q, const float* scales, int64_t N, int64_t K,
                            int64_t Kp, cudaStream_t stream);
// w[n] (F32) = (q[n] - zero_point) * scale, params = {scale, zero_point}.
void dequantize_per_tensor(float* w, const uint8_t* q, const float* params, int64_t n, cudaStream_t stream);

// ---- block_kernels.cu: int4-weight-only and group-wise int8-weight-only -------------------------------------

// T <= kGemvMaxTokens: out[T, N] = act(x[T, K] . dequantized(w)^T + bias), w [N, K / 32] blocks of `kind`,
// dequantized in registers (d sum q x + m sum x a block), one warp a row. bias may be null.
void block_gemv(float* out, const float* x, const void* w, BlockKind kind, const float* bias, Activation act,
                int64_t T, int64_t N, int64_t K, cudaStream_t stream);
// dst[N, K] (F16, BF16 or F32) = `view` dequantized: the large-batch path feeds a block weight to cuBLASLt this way.
void dequantize_view(void* dst, DType dst_type, const DequantView& view, int64_t N, int64_t K, cudaStream_t stream);

// ---- ops.cu: everything else in a forward pass ------------------------------------------------------------

// The batch's index arrays on the device (uploaded once per pass by begin_batch).
struct BatchView {
  const int32_t* token_ids = nullptr;     // [T]
  const int32_t* positions = nullptr;     // [T]
  const int32_t* seq_of_token = nullptr;  // [T]
  const int32_t* logit_rows = nullptr;    // [L]
  const int32_t* block_tables = nullptr;  // [S, max_blocks], -1 past a sequence's table
  int64_t num_tokens = 0, num_logit_rows = 0, num_seqs = 0, max_blocks = 0;
};

// out[T, C] = table[token_ids] dequantized (+ pos_table[positions]); the table is a Linear's weight in any of
// its forms, pos_table F32/F16/BF16 or null.
void embedding(float* out, const BatchView& batch, const DequantView& table, const void* pos_table, DType pos_type,
               int64_t C, cudaStream_t stream);
// out[T, C] = (in - mean) / sqrt(var + eps) * w + b; b may be null; out may alias in.
void layernorm(float* out, const float* in, const void* w, const void* b, DType w_type, int64_t T, int64_t C,
               float eps, cudaStream_t stream);
// out[T, C] = in / sqrt(mean(in^2) + eps) * w; out may alias in.
void rmsnorm(float* out, const float* in, const void* w, DType w_type, int64_t T, int64_t C, float eps,
             cudaStream_t stream);
// out[n] = a[n] + b[n]; out may alias either.
void add(float* out, const float* a, const float* b, int64_t n, cudaStream_t stream);
// x[n] *= factor, in place.
void scale(float* x, int64_t n, float factor, cudaStream_t stream);
// out[T, F] = act(gate_up[T, :F]) * gate_up[T, F:], act kSilu (SwiGLU) or kGeluTanh (GeGLU).
void gated_activation(float* out, const float* gate_up, int64_t T, int64_t F, Activation act, cudaStream_t stream);
// In place on qkv[T, (NH + 2 NKV) HD]: each q head = rmsnorm(head) * q_weight[HD], each k head with k_weight
// (QK-norm); weights F32/F16/BF16 as w_type says.
void head_rmsnorm(float* qkv, const void* q_weight, const void* k_weight, DType w_type, int64_t T, int64_t NH,
                  int64_t NKV, int64_t HD, float eps, cudaStream_t stream);
// In place on qkv[T, (NH + 2 NKV) HD]: rotate_half rotary embedding of the q and k heads' first rotary_dim dims.
void rope(float* qkv, const BatchView& batch, int64_t NH, int64_t NKV, int64_t HD, int64_t rotary_dim,
          float theta, cudaStream_t stream);
// Writes each token's k, v (from qkv) into the layer's pools [num_blocks, BS, NKV, HD] (F32 or F16), then
// out[T, NH HD] = causal softmax(q k^T / sqrt(HD)) v over the token's sequence, positions 0..its own, or with
// window > 0 its `window` latest (its own included; the blocks before are not read).
void paged_attention(float* out, const float* qkv, void* k_pool, void* v_pool, DType kv_type,
                     const BatchView& batch, int64_t NH, int64_t NKV, int64_t HD, int64_t BS, int64_t window,
                     cudaStream_t stream);
// out[L, C] = in[logit_rows].
void gather_rows(float* out, const float* in, const BatchView& batch, int64_t C, cudaStream_t stream);

}  // namespace qs::cuda
