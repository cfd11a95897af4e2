// int4-weight-only and group-wise int8-weight-only on CUDA: a GEMV over GGUF-style blocks of 32 weights (Q4_1,
// Q8_0, U8Min; row after row, as the file has them) against fp32 activations, and the dequantization that the
// large-batch path hands to cuBLASLt. The CPU backend's kernels/cpu/gemv_blocks.h is the reference.
#include <cuda_fp16.h>

#include "kernels/cuda/cuda_device.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace qs::cuda {

namespace {

// A block's 32 values as float q[32] (the quantized integers), and its d and m (0 for Q8_0). Q4_1 and U8Min
// blocks are 4-byte aligned when the weight is (20 and 36 bytes; quants at offset 4): 32-bit loads. Q8_0's 34
// bytes leave its quants 2-byte aligned: 16-bit loads.
template <BlockKind kKind>
__device__ __forceinline__ void load_block(const uint8_t* blk, float q[32], float& d, float& m) {
  d = __half2float(__ushort_as_half(load_u16(blk)));
  m = 0.0f;
  if constexpr (kKind == BlockKind::kQ8_0) {
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const uint16_t pair = load_u16(blk + 2 + 2 * i);
      q[2 * i] = float(int8_t(pair & 0xff));
      q[2 * i + 1] = float(int8_t(pair >> 8));
    }
  } else {
    m = __half2float(__ushort_as_half(load_u16(blk + 2)));
    const uint32_t* words = reinterpret_cast<const uint32_t*>(blk + 4);
    if constexpr (kKind == BlockKind::kQ4_1) {   // byte j: element j (low nibble) and j + 16 (high)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint32_t w = words[i];
#pragma unroll
        for (int b = 0; b < 4; ++b) {
          q[4 * i + b] = float((w >> (8 * b)) & 0x0f);
          q[16 + 4 * i + b] = float((w >> (8 * b + 4)) & 0x0f);
        }
      }
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const uint32_t w = words[i];
#pragma unroll
        for (int b = 0; b < 4; ++b) q[4 * i + b] = float((w >> (8 * b)) & 0xff);
      }
    }
  }
}

// One warp per output row, lane l taking the row's blocks l, l + 32, ...: each block is read once, converted in
// registers and multiplied into every token's activations (read as float4 when kVectorX: K % 4 == 0 and x
// 16-byte aligned), d sum q x + m sum x as the CPU reference sums a block; then a warp sum per token.
template <int kTokens, BlockKind kKind, bool kVectorX>
__global__ void __launch_bounds__(128) block_gemv_kernel(float* out, const float* x, const uint8_t* w,
                                                         const float* bias, Activation act, int64_t N, int64_t K) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * 4 + threadIdx.x / 32;
  if (n >= N) return;  // whole warps leave together
  const int64_t nb = K / 32, bytes = block_bytes(kKind);
  float acc[kTokens];
#pragma unroll
  for (int t = 0; t < kTokens; ++t) acc[t] = 0.0f;
  for (int64_t b = lane; b < nb; b += 32) {
    float q[32], d, m;
    load_block<kKind>(w + (n * nb + b) * bytes, q, d, m);
#pragma unroll
    for (int t = 0; t < kTokens; ++t) {
      const float* xb = x + t * K + b * 32;
      float dot = 0.0f, sum = 0.0f;
      if constexpr (kVectorX) {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const float4 v = reinterpret_cast<const float4*>(xb)[i];
          dot += q[4 * i] * v.x + q[4 * i + 1] * v.y + q[4 * i + 2] * v.z + q[4 * i + 3] * v.w;
          sum += v.x + v.y + v.z + v.w;
        }
      } else {
#pragma unroll
        for (int j = 0; j < 32; ++j) dot += q[j] * xb[j], sum += xb[j];
      }
      acc[t] += d * dot + m * sum;
    }
  }
  const float bn = bias ? bias[n] : 0.0f;
#pragma unroll
  for (int t = 0; t < kTokens; ++t) {
    const float s = warp_sum(acc[t]);
    if (lane == t) out[t * N + n] = apply_activation(s + bn, act);
  }
}

template <typename W>
__global__ void dequantize_view_kernel(W* dst, DequantView view, int64_t N, int64_t K) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * K; i += int64_t(gridDim.x) * blockDim.x) {
    dst[i] = from_float<W>(dequantized_at(view, i / K, i % K));
  }
}

template <int kTokens, BlockKind kKind>
void launch(float* out, const float* x, const void* w, const float* bias, Activation act, int64_t N, int64_t K,
            cudaStream_t stream) {
  const unsigned blocks = unsigned(ceil_div(N, 4));
  const auto* wb = static_cast<const uint8_t*>(w);
  if (K % 4 == 0 && pointer_alignment(x) >= 16) {
    block_gemv_kernel<kTokens, kKind, true><<<blocks, 128, 0, stream>>>(out, x, wb, bias, act, N, K);
  } else {
    block_gemv_kernel<kTokens, kKind, false><<<blocks, 128, 0, stream>>>(out, x, wb, bias, act, N, K);
  }
}

template <int kTokens>
void launch_kind(float* out, const float* x, const void* w, BlockKind kind, const float* bias, Activation act,
                 int64_t N, int64_t K, cudaStream_t stream) {
  switch (kind) {
    case BlockKind::kQ4_1: return launch<kTokens, BlockKind::kQ4_1>(out, x, w, bias, act, N, K, stream);
    case BlockKind::kQ8_0: return launch<kTokens, BlockKind::kQ8_0>(out, x, w, bias, act, N, K, stream);
    case BlockKind::kU8Min: return launch<kTokens, BlockKind::kU8Min>(out, x, w, bias, act, N, K, stream);
  }
}

}  // namespace

void block_gemv(float* out, const float* x, const void* w, BlockKind kind, const float* bias, Activation act,
                int64_t T, int64_t N, int64_t K, cudaStream_t stream) {
  QS_CHECK(T >= 1 && T <= kGemvMaxTokens, ErrorCode::kInternal, "the block GEMV takes 1..", kGemvMaxTokens,
           " tokens, got ", T);
  QS_CHECK(K % 32 == 0 && pointer_alignment(w) >= 4, ErrorCode::kInternal,
           "the block GEMV needs whole blocks of 32 inputs and a 4-byte aligned weight, got K = ", K);
  if (N == 0) return;
  switch (T) {
    case 1: launch_kind<1>(out, x, w, kind, bias, act, N, K, stream); break;
    case 2: launch_kind<2>(out, x, w, kind, bias, act, N, K, stream); break;
    case 3: launch_kind<3>(out, x, w, kind, bias, act, N, K, stream); break;
    case 4: launch_kind<4>(out, x, w, kind, bias, act, N, K, stream); break;
    case 5: launch_kind<5>(out, x, w, kind, bias, act, N, K, stream); break;
    case 6: launch_kind<6>(out, x, w, kind, bias, act, N, K, stream); break;
    case 7: launch_kind<7>(out, x, w, kind, bias, act, N, K, stream); break;
    default: launch_kind<8>(out, x, w, kind, bias, act, N, K, stream); break;
  }
  QS_CUDA_CHECK_LAUNCH();
}

void dequantize_view(void* dst, DType dst_type, const DequantView& view, int64_t N, int64_t K, cudaStream_t stream) {
  if (N * K == 0) return;
  dispatch_float(dst_type, [&](auto zero) {
    using W = decltype(zero);
    dequantize_view_kernel<W><<<grid_for(N * K, 256), 256, 0, stream>>>(static_cast<W*>(dst), view, N, K);
  });
  QS_CUDA_CHECK_LAUNCH();
}

}  // namespace qs::cuda
