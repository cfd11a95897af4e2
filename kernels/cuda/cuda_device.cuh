// Device-side helpers shared by the .cu files: float conversions, warp/block reductions, activations, dispatch.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/backend.h"
#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/cuda_kernels.h"

namespace qs::cuda {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum / max over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  __shared__ float total;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_sum(v);
  __syncthreads();  // partial[] may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = lane < int(blockDim.x / 32) ? partial[lane] : 0.0f;
    w = warp_sum(w);
    if (lane == 0) total = w;
  }
  __syncthreads();
  return total;
}
__device__ __forceinline__ float block_max(float v) {
  __shared__ float partial[32];
  __shared__ float total;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = lane < int(blockDim.x / 32) ? partial[lane] : -INFINITY;
    w = warp_max(w);
    if (lane == 0) total = w;
  }
  __syncthreads();
  return total;
}

// The activations a linear's epilogue can apply (the CPU backend's definitions).
__device__ __forceinline__ float apply_activation(float x, Activation act) {
  switch (act) {
    case Activation::kNone: return x;
    case Activation::kGeluTanh: {
      const float k0 = 0.7978845608028654f;  // sqrt(2/pi)
      return 0.5f * x * (1.0f + tanhf(k0 * (x + 0.044715f * x * x * x)));
    }
    case Activation::kGeluErf: return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
    case Activation::kRelu: return fmaxf(x, 0.0f);
    case Activation::kSilu: return x / (1.0f + expf(-x));
  }
  return x;
}

// The CPU reference's formulas exactly (kernels/cpu/quantize.cpp): scale = absmax / 127, or 1 for an all-zero
// row; q = clamp(nearbyint(x * (1 / scale)), -127, 127) with round-half-to-even. Same float operations in the
// same order, so GPU and CPU quantize to the same integers.
__device__ __forceinline__ float absmax_to_scale(float absmax) { return absmax > 0.0f ? absmax / 127.0f : 1.0f; }
__device__ __forceinline__ int8_t quantize_int8(float x, float inv_scale) {
  const float r = rintf(x * inv_scale);
  return int8_t(fminf(fmaxf(r, -127.0f), 127.0f));
}

__host__ __device__ __forceinline__ int64_t block_bytes(BlockKind kind) {
  return kind == BlockKind::kQ4_1 ? 20 : kind == BlockKind::kQ8_0 ? 34 : 36;
}
// Two bytes from an address that is only 2-byte aligned (a Q8_0 block's d, and its quantized bytes, are).
__device__ __forceinline__ uint16_t load_u16(const uint8_t* p) { return *reinterpret_cast<const uint16_t*>(p); }

// Element (row, col) of a weight in any of the backend's storage forms, as float.
__device__ __forceinline__ float dequantized_at(const DequantView& v, int64_t row, int64_t col) {
  switch (v.kind) {
    case DequantView::kFloat: {
      const int64_t i = row * v.ld + col;
      if (v.float_type == DType::F16) return to_float(static_cast<const __half*>(v.data)[i]);
      if (v.float_type == DType::BF16) return to_float(static_cast<const __nv_bfloat16*>(v.data)[i]);
      return static_cast<const float*>(v.data)[i];
    }
    case DequantView::kPerChannelInt8:
      return v.scales[row] * float(static_cast<const int8_t*>(v.data)[row * v.ld + col]);
    case DequantView::kPerTensorUint8:  // the CPU's order: scale * (q - zero_point)
      return v.scales[0] * (float(static_cast<const uint8_t*>(v.data)[row * v.ld + col]) - v.scales[1]);
    case DequantView::kBlocks: {  // d q + m, as the CPU's dequantize_block_row (d q is exact: no rounding to fuse)
      const uint8_t* blk = static_cast<const uint8_t*>(v.data) + (row * v.ld + col / 32) * block_bytes(v.block_kind);
      const int j = int(col % 32);
      const float d = __half2float(__ushort_as_half(load_u16(blk)));
      if (v.block_kind == BlockKind::kQ8_0) return d * float(int8_t(blk[2 + j]));
      const float m = __half2float(__ushort_as_half(load_u16(blk + 2)));
      if (v.block_kind == BlockKind::kU8Min) return d * float(blk[4 + j]) + m;
      const int q = j < 16 ? blk[4 + j] & 0x0f : blk[4 + j - 16] >> 4;
      return d * float(q) + m;
    }
  }
  return 0.0f;
}

// Calls f(T{}) with T the C++ type of a float DType (F32, F16, BF16); throws for anything else.
template <typename F>
void dispatch_float(DType t, F&& f) {
  switch (t) {
    case DType::F32: f(float{}); return;
    case DType::F16: f(__half{}); return;
    case DType::BF16: f(__nv_bfloat16{}); return;
    default: break;
  }
  QS_FAIL(ErrorCode::kUnsupported, "the CUDA backend stores float tensors as F32, F16 or BF16, not ",
          dtype_name(t));
}

inline unsigned int grid_for(int64_t n, int threads, int64_t max_blocks = 65535LL * 8) {
  int64_t blocks = ceil_div(n, threads);
  if (blocks > max_blocks) blocks = max_blocks;  // kernels using this loop grid-stride
  return unsigned(blocks < 1 ? 1 : blocks);
}

}  // namespace qs::cuda
