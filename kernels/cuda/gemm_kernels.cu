// The int8 paths around the GEMM: per-token activation quantization, the fused dequantize + bias + activation
// epilogue, a tiled dp4a int8 GEMM (fallback) and a naive one (reference), and the int8 weight-only GEMV.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/cuda_device.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace qs::cuda {

// T = tokens, N = out features, K = in features, Np/Kp = padded to kGemmPad (multiples of 16).

namespace {

// ---- kernels ----------------------------------------------------------------------------------------------

// One block per token row.
__global__ void quantize_rows_kernel(int8_t* q, float* scales, const float* x, int64_t K, int64_t Kp) {
  const int64_t t = blockIdx.x;
  const float* x_row = x + t * K;
  int8_t* q_row = q + t * Kp;
  float absmax = 0.0f;
  for (int64_t c = threadIdx.x; c < K; c += blockDim.x) absmax = fmaxf(absmax, fabsf(x_row[c]));
  const float scale = absmax_to_scale(block_max(absmax));
  const float inv_scale = 1.0f / scale;
  for (int64_t c = threadIdx.x; c < Kp; c += blockDim.x) q_row[c] = c < K ? quantize_int8(x_row[c], inv_scale) : 0;
  if (threadIdx.x == 0) scales[t] = scale;
}

__global__ void dequantize_int32_kernel(float* out, const int32_t* acc, int64_t ldacc, const float* row_scales,
                                        const float* col_scales, const float* bias, Activation act, int64_t T,
                                        int64_t N) {
  const int64_t total = T * N;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / N, n = i - t * N;
    float v = float(acc[t * ldacc + n]) * row_scales[t] * col_scales[n];  // the CPU's order
    if (bias) v += bias[n];
    out[i] = apply_activation(v, act);
  }
}

__global__ void bias_activation_kernel(float* out, const float* bias, Activation act, int64_t T, int64_t N) {
  const int64_t total = T * N;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    float v = out[i];
    if (bias) v += bias[i % N];
    out[i] = apply_activation(v, act);
  }
}

// Tiled dp4a GEMM: a block computes a 64 (tokens) x 64 (features) tile, 256 threads each 4 x 4 outputs,
// walking K 32 bytes (8 packed words) at a time through shared memory. Thread (ty, tx) owns rows ty + 16 i
// and columns tx + 16 j, so a warp's stores to c are contiguous along N.
constexpr int kTile = 64, kTileWords = 8;
__global__ void __launch_bounds__(256) int8_gemm_dp4a_kernel(int32_t* c, const int8_t* x, const int8_t* w,
                                                             int64_t T, int64_t Np, int64_t Kp) {
  __shared__ int x_tile[kTile][kTileWords + 1];  // +1: rows land in different banks
  __shared__ int w_tile[kTile][kTileWords + 1];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t t0 = int64_t(blockIdx.y) * kTile, n0 = int64_t(blockIdx.x) * kTile;
  const int64_t k_words = Kp / 4;
  const int* x_words = reinterpret_cast<const int*>(x);
  const int* w_words = reinterpret_cast<const int*>(w);
  int acc[4][4] = {};
  for (int64_t kw0 = 0; kw0 < k_words; kw0 += kTileWords) {
    for (int r = 0; r < 2; ++r) {
      const int idx = threadIdx.x + 256 * r, row = idx / kTileWords, word = idx % kTileWords;
      const int64_t kw = kw0 + word;
      const int64_t t = t0 + row, n = n0 + row;
      x_tile[row][word] = (t < T && kw < k_words) ? x_words[t * k_words + kw] : 0;
      w_tile[row][word] = (n < Np && kw < k_words) ? w_words[n * k_words + kw] : 0;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileWords; ++kk) {
      int a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = x_tile[ty + 16 * i][kk];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = w_tile[tx + 16 * j][kk];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = __dp4a(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t t = t0 + ty + 16 * i;
    if (t >= T) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n < Np) c[t * Np + n] = acc[i][j];
    }
  }
}

__global__ void int8_gemm_reference_kernel(int32_t* c, const int8_t* x, const int8_t* w, int64_t T, int64_t Np,
                                           int64_t Kp) {
  const int64_t total = T * Np;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / Np, n = i - t * Np;
    int32_t sum = 0;
    for (int64_t k = 0; k < Kp; ++k) sum += int32_t(x[t * Kp + k]) * int32_t(w[n * Kp + k]);
    c[i] = sum;
  }
}

__global__ void count_mismatches_kernel(unsigned int* mismatches, const int32_t* a, const int32_t* b, int64_t T,
                                        int64_t N, int64_t ld) {
  const int64_t total = T * N;
  unsigned int count = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / N, n = i - t * N;
    count += a[t * ld + n] != b[t * ld + n];
  }
  if (count) atomicAdd(mismatches, count);
}

__global__ void fill_random_int8_kernel(int8_t* q, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;  // a few rounds of an integer hash
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    h *= 0x846ca68bu;
    h ^= h >> 16;
    q[i] = int8_t(int(h % 255u) - 127);
  }
}

__device__ __forceinline__ float signed_byte(uint32_t word, int j) {
  return float(int8_t(uint8_t(word >> (8 * j))));
}

// int8 weight-only GEMV for kTokens <= kGemvMaxTokens: one warp per output feature, the weight row read in
// 16-byte vectors (16 int8) and dequantized in registers; every token's dot product shares that read.
// kVectorX: x rows are 16-byte aligned (K % 4 == 0, aligned base), so x is read as float4 too.
template <int kTokens, bool kVectorX>
__global__ void __launch_bounds__(128) int8_weight_only_gemv_kernel(float* out, const float* x, const int8_t* q,
                                                                    const float* scales, const float* bias,
                                                                    Activation act, int64_t N, int64_t K,
                                                                    int64_t Kp) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * 4 + threadIdx.x / 32;
  if (n >= N) return;  // whole warps leave together
  const int8_t* q_row = q + n * Kp;
  float acc[kTokens];
#pragma unroll
  for (int t = 0; t < kTokens; ++t) acc[t] = 0.0f;

  const int64_t chunks = K / 16;  // full 16-element chunks inside K (Kp padding is never read from x)
  for (int64_t ch = lane; ch < chunks; ch += 32) {
    const int4 packed = *reinterpret_cast<const int4*>(q_row + ch * 16);
    float wv[16];
    const uint32_t words[4] = {uint32_t(packed.x), uint32_t(packed.y), uint32_t(packed.z), uint32_t(packed.w)};
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) wv[4 * i + j] = signed_byte(words[i], j);
#pragma unroll
    for (int t = 0; t < kTokens; ++t) {
      const float* xt = x + t * K + ch * 16;
      float sum = 0.0f;
      if constexpr (kVectorX) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float4 v = reinterpret_cast<const float4*>(xt)[i];
          sum += wv[4 * i] * v.x + wv[4 * i + 1] * v.y + wv[4 * i + 2] * v.z + wv[4 * i + 3] * v.w;
        }
      } else {
#pragma unroll
        for (int i = 0; i < 16; ++i) sum += wv[i] * xt[i];
      }
      acc[t] += sum;
    }
  }
  for (int64_t k = chunks * 16 + lane; k < K; k += 32) {  // the tail past the last full chunk
    const float wk = float(q_row[k]);
#pragma unroll
    for (int t = 0; t < kTokens; ++t) acc[t] += wk * x[t * K + k];
  }
  const float scale = scales[n];
  const float b = bias ? bias[n] : 0.0f;
#pragma unroll
  for (int t = 0; t < kTokens; ++t) {
    const float s = warp_sum(acc[t]);
    if (lane == t) out[t * N + n] = apply_activation(s * scale + b, act);
  }
}

template <typename W>
__global__ void dequantize_per_channel_kernel(W* w, const int8_t* q, const float* scales, int64_t N, int64_t K,
                                              int64_t Kp) {
  const int64_t total = N * K;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / K, k = i - n * K;
    w[i] = from_float<W>(scales[n] * float(q[n * Kp + k]));
  }
}

__global__ void dequantize_per_tensor_kernel(float* w, const uint8_t* q, const float* params, int64_t n) {
  const float scale = params[0], zero_point = params[1];
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    w[i] = scale * (float(q[i]) - zero_point);
}

template <int kTokens>
void launch_gemv(float* out, const float* x, const int8_t* q, const float* scales, const float* bias,
                 Activation act, int64_t N, int64_t K, int64_t Kp, cudaStream_t stream) {
  const bool vector_x = K % 4 == 0 && pointer_alignment(x) >= 16;
  const unsigned blocks = unsigned(ceil_div(N, 4));
  if (vector_x)
    int8_weight_only_gemv_kernel<kTokens, true><<<blocks, 128, 0, stream>>>(out, x, q, scales, bias, act, N, K, Kp);
  else
    int8_weight_only_gemv_kernel<kTokens, false><<<blocks, 128, 0, stream>>>(out, x, q, scales, bias, act, N, K, Kp);
}

void check_padded(int64_t Np, int64_t Kp, const void* a, const void* b) {
  QS_CHECK(Np % kGemmPad == 0 && Kp % kGemmPad == 0, ErrorCode::kInternal, "int8 GEMM shapes must be padded to ",
           kGemmPad, ", got N=", Np, " K=", Kp);
  QS_CHECK(pointer_alignment(a) >= 16 && pointer_alignment(b) >= 16, ErrorCode::kInternal,
           "int8 GEMM operands must be 16-byte aligned");
}

}  // namespace

// ---- launchers --------------------------------------------------------------------------------------------

void quantize_rows_int8(int8_t* q, float* scales, const float* x, int64_t T, int64_t K, int64_t Kp,
                        cudaStream_t stream) {
  QS_CHECK(T < (int64_t(1) << 31) && Kp >= K, ErrorCode::kInternal, "bad activation quantization shape");
  if (T == 0) return;
  quantize_rows_kernel<<<unsigned(T), K >= 1024 ? 256 : 128, 0, stream>>>(q, scales, x, K, Kp);
  QS_CUDA_CHECK_LAUNCH();
}

void dequantize_int32(float* out, const int32_t* acc, int64_t ldacc, const float* row_scales,
                      const float* col_scales, const float* bias, Activation act, int64_t T, int64_t N,
                      cudaStream_t stream) {
  if (T * N == 0) return;
  dequantize_int32_kernel<<<grid_for(T * N, 256), 256, 0, stream>>>(out, acc, ldacc, row_scales, col_scales, bias,
                                                                    act, T, N);
  QS_CUDA_CHECK_LAUNCH();
}

void bias_activation(float* out, const float* bias, Activation act, int64_t T, int64_t N, cudaStream_t stream) {
  if (T * N == 0 || (!bias && act == Activation::kNone)) return;
  bias_activation_kernel<<<grid_for(T * N, 256), 256, 0, stream>>>(out, bias, act, T, N);
  QS_CUDA_CHECK_LAUNCH();
}

void int8_gemm_dp4a(int32_t* c, const int8_t* x, const int8_t* w, int64_t T, int64_t Np, int64_t Kp,
                    cudaStream_t stream) {
  check_padded(Np, Kp, x, w);
  if (T == 0 || Np == 0) return;
  QS_CHECK(ceil_div(T, kTile) <= 65535, ErrorCode::kUnsupported, "int8 GEMM fallback handles at most ",
           65535 * kTile, " tokens per call, got ", T);
  const dim3 grid(unsigned(ceil_div(Np, kTile)), unsigned(ceil_div(T, kTile)));
  int8_gemm_dp4a_kernel<<<grid, 256, 0, stream>>>(c, x, w, T, Np, Kp);
  QS_CUDA_CHECK_LAUNCH();
}

void int8_gemm_reference(int32_t* c, const int8_t* x, const int8_t* w, int64_t T, int64_t Np, int64_t Kp,
                         cudaStream_t stream) {
  if (T * Np == 0) return;
  int8_gemm_reference_kernel<<<grid_for(T * Np, 256), 256, 0, stream>>>(c, x, w, T, Np, Kp);
  QS_CUDA_CHECK_LAUNCH();
}

void count_mismatches(unsigned int* mismatches, const int32_t* a, const int32_t* b, int64_t T, int64_t N,
                      int64_t ld, cudaStream_t stream) {
  if (T * N == 0) return;
  count_mismatches_kernel<<<grid_for(T * N, 256, 1024), 256, 0, stream>>>(mismatches, a, b, T, N, ld);
  QS_CUDA_CHECK_LAUNCH();
}

void fill_random_int8(int8_t* q, int64_t n, uint32_t seed, cudaStream_t stream) {
  if (n == 0) return;
  fill_random_int8_kernel<<<grid_for(n, 256), 256, 0, stream>>>(q, n, seed);
  QS_CUDA_CHECK_LAUNCH();
}

void int8_weight_only_gemv(float* out, const float* x, const int8_t* q, const float* scales, const float* bias,
                           Activation act, int64_t T, int64_t N, int64_t K, int64_t Kp, cudaStream_t stream) {
  QS_CHECK(T >= 1 && T <= kGemvMaxTokens, ErrorCode::kInternal, "int8 weight-only GEMV takes 1..",
           kGemvMaxTokens, " tokens, got ", T);
  QS_CHECK(Kp % 16 == 0 && pointer_alignment(q) >= 16, ErrorCode::kInternal,
           "int8 weight-only GEMV needs 16-byte aligned weight rows");
  if (N == 0) return;
  switch (T) {
    case 1: launch_gemv<1>(out, x, q, scales, bias, act, N, K, Kp, stream); break;
    case 2: launch_gemv<2>(out, x, q, scales, bias, act, N, K, Kp, stream); break;
    case 3: launch_gemv<3>(out, x, q, scales, bias, act, N, K, Kp, stream); break;
    case 4: launch_gemv<4>(out, x, q, scales, bias, act, N, K, Kp, stream); break;
    case 5: launch_gemv<5>(out, x, q, scales, bias, act, N, K, Kp, stream); break;
    case 6: launch_gemv<6>(out, x, q, scales, bias, act, N, K, Kp, stream); break;
    case 7: launch_gemv<7>(out, x, q, scales, bias, act, N, K, Kp, stream); break;
    default: launch_gemv<8>(out, x, q, scales, bias, act, N, K, Kp, stream); break;
  }
  QS_CUDA_CHECK_LAUNCH();
}

void dequantize_per_channel(void* w, DType w_type, const int8_t* q, const float* scales, int64_t N, int64_t K,
                            int64_t Kp, cudaStream_t stream) {
  if (N * K == 0) return;
  dispatch_float(w_type, [&](auto d) {
    using W = decltype(d);
    dequantize_per_channel_kernel<W><<<grid_for(N * K, 256), 256, 0, stream>>>(static_cast<W*>(w), q, scales, N, K,
                                                                               Kp);
  });
  QS_CUDA_CHECK_LAUNCH();
}

void dequantize_per_tensor(float* w, const uint8_t* q, const float* params, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  dequantize_per_tensor_kernel<<<grid_for(n, 256), 256, 0, stream>>>(w, q, params, n);
  QS_CUDA_CHECK_LAUNCH();
}

}  // namespace qs::cuda
