// Weight preparation on the device at load: float casts, per-channel int8, per-tensor uint8, and the
// quantization-error reductions (max, mean, relative Frobenius exactly; median from a histogram).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cuda/cuda_device.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace qs::cuda {

// N = rows (out features), K = columns (in features), Np/Kp = padded, n = elements.

namespace {

constexpr int kHistogramBins = 4096;

// What the error reduction accumulates on the device (zeroed before pass 1).
struct ErrorAccumulator {
  double sum_abs;
  double sum_sq_err;
  double sum_sq_ref;
  unsigned int max_abs_bits;  // a non-negative float's bits order like the float
  unsigned int pad;
  unsigned long long histogram[kHistogramBins];
};

// ---- kernels ----------------------------------------------------------------------------------------------

template <typename Src, typename Dst>
__global__ void cast_kernel(Dst* dst, const Src* src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = from_float<Dst>(to_float(src[i]));
}

// One block per padded row.
template <typename Src>
__global__ void quantize_per_channel_kernel(int8_t* q, float* scales, const Src* w, int64_t N, int64_t K,
                                            int64_t Kp) {
  const int64_t row = blockIdx.x;
  int8_t* q_row = q + row * Kp;
  if (row >= N) {  // padding row: zeros, scale 0
    for (int64_t c = threadIdx.x; c < Kp; c += blockDim.x) q_row[c] = 0;
    if (threadIdx.x == 0) scales[row] = 0.0f;
    return;
  }
  const Src* w_row = w + row * K;
  float absmax = 0.0f;
  for (int64_t c = threadIdx.x; c < K; c += blockDim.x) absmax = fmaxf(absmax, fabsf(to_float(w_row[c])));
  const float scale = absmax_to_scale(block_max(absmax));
  const float inv_scale = 1.0f / scale;
  for (int64_t c = threadIdx.x; c < Kp; c += blockDim.x)
    q_row[c] = c < K ? quantize_int8(to_float(w_row[c]), inv_scale) : int8_t(0);
  if (threadIdx.x == 0) scales[row] = scale;
}

__device__ void atomic_min_float(float* addr, float v) {
  int* a = reinterpret_cast<int*>(addr);
  int old = *a;
  while (__int_as_float(old) > v) {
    const int assumed = old;
    old = atomicCAS(a, assumed, __float_as_int(v));
    if (old == assumed) break;
  }
}
__device__ void atomic_max_float(float* addr, float v) {
  int* a = reinterpret_cast<int*>(addr);
  int old = *a;
  while (__int_as_float(old) < v) {
    const int assumed = old;
    old = atomicCAS(a, assumed, __float_as_int(v));
    if (old == assumed) break;
  }
}

__global__ void init_minmax_kernel(float* minmax) {
  minmax[0] = INFINITY;
  minmax[1] = -INFINITY;
}

template <typename Src>
__global__ void minmax_kernel(float* minmax, const Src* w, int64_t n) {
  float lo = INFINITY, hi = -INFINITY;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float x = to_float(w[i]);
    lo = fminf(lo, x);
    hi = fmaxf(hi, x);
  }
  lo = -block_max(-lo);
  hi = block_max(hi);
  if (threadIdx.x == 0) {
    atomic_min_float(&minmax[0], lo);
    atomic_max_float(&minmax[1], hi);
  }
}

// The textbook asymmetric scheme (the CPU's formulas): the range always contains 0 so that 0 is exact.
__global__ void per_tensor_params_kernel(float* params, const float* minmax) {
  const float lo = fminf(minmax[0], 0.0f), hi = fmaxf(minmax[1], 0.0f);
  const float scale = hi > lo ? (hi - lo) / 255.0f : 1.0f;
  params[0] = scale;
  params[1] = fminf(fmaxf(rintf(-lo / scale), 0.0f), 255.0f);
}

template <typename Src>
__global__ void quantize_per_tensor_kernel(uint8_t* q, const float* params, const Src* w, int64_t n) {
  const float inv_scale = 1.0f / params[0], zero_point = params[1];
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float r = rintf(to_float(w[i]) * inv_scale) + zero_point;
    q[i] = uint8_t(fminf(fmaxf(r, 0.0f), 255.0f));
  }
}

__device__ double block_sum_double(double v) {
  __shared__ double partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  double total = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < int(blockDim.x / 32); ++w) total += partial[w];
  return total;  // valid in thread 0 only
}

// Pass 1: sums and the max.
template <typename Src>
__global__ void error_sums_kernel(ErrorAccumulator* acc, const Src* original, DequantView view, int64_t N,
                                  int64_t K) {
  const int64_t n = N * K;
  double sum_abs = 0, sum_sq_err = 0, sum_sq_ref = 0;
  float max_abs = 0.0f;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / K, col = i - row * K;
    const float ref = to_float(original[i]);
    const float d = dequantized_at(view, row, col) - ref;
    sum_abs += fabsf(d);
    sum_sq_err += double(d) * d;
    sum_sq_ref += double(ref) * ref;
    max_abs = fmaxf(max_abs, fabsf(d));
  }
  sum_abs = block_sum_double(sum_abs);
  sum_sq_err = block_sum_double(sum_sq_err);
  sum_sq_ref = block_sum_double(sum_sq_ref);
  max_abs = block_max(max_abs);
  if (threadIdx.x == 0) {
    atomicAdd(&acc->sum_abs, sum_abs);
    atomicAdd(&acc->sum_sq_err, sum_sq_err);
    atomicAdd(&acc->sum_sq_ref, sum_sq_ref);
    atomicMax(&acc->max_abs_bits, __float_as_uint(max_abs));
  }
}

// Pass 2: histogram of |error| over [0, max_abs] (max from pass 1, read on the device: no host round trip).
template <typename Src>
__global__ void error_histogram_kernel(ErrorAccumulator* acc, const Src* original, DequantView view, int64_t N,
                                       int64_t K) {
  __shared__ unsigned int bins[kHistogramBins];
  for (int b = threadIdx.x; b < kHistogramBins; b += blockDim.x) bins[b] = 0;
  __syncthreads();
  const float max_abs = __uint_as_float(acc->max_abs_bits);
  const float to_bin = max_abs > 0.0f ? float(kHistogramBins) / max_abs : 0.0f;
  const int64_t n = N * K;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / K, col = i - row * K;
    const float a = fabsf(dequantized_at(view, row, col) - to_float(original[i]));
    const int b = min(int(a * to_bin), kHistogramBins - 1);
    atomicAdd(&bins[b], 1u);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kHistogramBins; b += blockDim.x)
    if (bins[b]) atomicAdd(&acc->histogram[b], (unsigned long long)bins[b]);
}

}  // namespace

// ---- launchers --------------------------------------------------------------------------------------------

void cast_float(void* dst, DType dst_type, const void* src, DType src_type, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  dispatch_float(src_type, [&](auto s) {
    dispatch_float(dst_type, [&](auto d) {
      using S = decltype(s);
      using D = decltype(d);
      cast_kernel<S, D><<<grid_for(n, 256), 256, 0, stream>>>(static_cast<D*>(dst), static_cast<const S*>(src), n);
    });
  });
  QS_CUDA_CHECK_LAUNCH();
}

void quantize_per_channel_int8(int8_t* q, float* scales, const void* w, DType w_type, int64_t N, int64_t K,
                               int64_t Np, int64_t Kp, cudaStream_t stream) {
  QS_CHECK(Np >= N && Kp >= K && Np < (int64_t(1) << 31), ErrorCode::kInternal, "bad padded shape ", Np, " x ",
           Kp, " for a ", N, " x ", K, " weight");
  if (Np == 0) return;
  dispatch_float(w_type, [&](auto s) {
    using S = decltype(s);
    quantize_per_channel_kernel<S><<<unsigned(Np), 256, 0, stream>>>(q, scales, static_cast<const S*>(w), N, K, Kp);
  });
  QS_CUDA_CHECK_LAUNCH();
}

void quantize_per_tensor_uint8(uint8_t* q, float* params, float* minmax, const void* w, DType w_type, int64_t n,
                               cudaStream_t stream) {
  init_minmax_kernel<<<1, 1, 0, stream>>>(minmax);
  dispatch_float(w_type, [&](auto s) {
    using S = decltype(s);
    if (n > 0) minmax_kernel<S><<<grid_for(n, 256, 1024), 256, 0, stream>>>(minmax, static_cast<const S*>(w), n);
    per_tensor_params_kernel<<<1, 1, 0, stream>>>(params, minmax);
    if (n > 0)
      quantize_per_tensor_kernel<S><<<grid_for(n, 256), 256, 0, stream>>>(q, params, static_cast<const S*>(w), n);
  });
  QS_CUDA_CHECK_LAUNCH();
}

size_t quant_error_scratch_bytes() { return sizeof(ErrorAccumulator); }

QuantError measure_quant_error_device(const void* original, DType original_type, const DequantView& view,
                                      int64_t N, int64_t K, void* scratch, cudaStream_t stream) {
  QuantError e;
  const int64_t n = N * K;
  if (n == 0) return e;
  auto* acc = static_cast<ErrorAccumulator*>(scratch);
  QS_CUDA_CHECK(cudaMemsetAsync(acc, 0, sizeof(ErrorAccumulator), stream));
  dispatch_float(original_type, [&](auto s) {
    using S = decltype(s);
    const auto* orig = static_cast<const S*>(original);
    const unsigned blocks = grid_for(n, 256, 2048);
    error_sums_kernel<S><<<blocks, 256, 0, stream>>>(acc, orig, view, N, K);
    error_histogram_kernel<S><<<blocks, 256, 0, stream>>>(acc, orig, view, N, K);
  });
  QS_CUDA_CHECK_LAUNCH();
  ErrorAccumulator host;
  QS_CUDA_CHECK(cudaMemcpyAsync(&host, acc, sizeof(host), cudaMemcpyDeviceToHost, stream));
  QS_CUDA_CHECK(cudaStreamSynchronize(stream));

  float max_abs;
  static_assert(sizeof(max_abs) == sizeof(host.max_abs_bits));
  std::memcpy(&max_abs, &host.max_abs_bits, sizeof(max_abs));
  e.max_abs = max_abs;
  e.mean_abs = host.sum_abs / double(n);
  e.rel_frobenius = host.sum_sq_ref > 0 ? std::sqrt(host.sum_sq_err / host.sum_sq_ref) : std::sqrt(host.sum_sq_err);
  // The CPU reference takes the element at index n/2 of the sorted errors; find the bin holding it.
  const unsigned long long target = static_cast<unsigned long long>(n / 2);
  unsigned long long below = 0;
  for (int b = 0; b < kHistogramBins; ++b) {
    if (below + host.histogram[b] > target) {
      e.median_abs = (b + 0.5) * double(max_abs) / kHistogramBins;
      break;
    }
    below += host.histogram[b];
  }
  return e;
}

}  // namespace qs::cuda
