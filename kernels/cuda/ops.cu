// The non-GEMM ops of a forward pass on F32 activations: embedding, norms (per row and per head), add, scale,
// gated activations, rope, paged attention (KV write + causal online-softmax attention over all positions or a
// sliding window, prefill and decode alike), logit-row gather.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/cuda_device.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace qs::cuda {

// T = tokens, C = channels, F = MLP features, NH = query heads, NKV = key/value heads, HD = head dim,
// BS = KV block size, L = logit rows. qkv rows are [q (NH HD) | k (NKV HD) | v (NKV HD)].

namespace {

constexpr int kAttentionWarps = 4;
constexpr int kMaxHeadDim = 256;
constexpr int kMaxDimsPerLane = kMaxHeadDim / 32;

// ---- kernels ----------------------------------------------------------------------------------------------

// One block per token.
template <typename PosTable>
__global__ void embedding_kernel(float* out, const int32_t* token_ids, const int32_t* positions, DequantView table,
                                 const PosTable* pos_table, int64_t C) {
  const int64_t t = blockIdx.x;
  const int64_t id = token_ids[t];
  const PosTable* pos_row = pos_table ? pos_table + int64_t(positions[t]) * C : nullptr;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float v = dequantized_at(table, id, c);
    if (pos_row) v += to_float(pos_row[c]);
    out[t * C + c] = v;
  }
}

// One block per row; mean and variance by two passes over the row (it stays in L1/L2).
template <typename W>
__global__ void layernorm_kernel(float* out, const float* in, const W* weight, const W* bias, int64_t C,
                                 float eps) {
  const float* x = in + int64_t(blockIdx.x) * C;
  float* y = out + int64_t(blockIdx.x) * C;
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) sum += x[c];
  const float mean = block_sum(sum) / float(C);
  float sq = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float d = x[c] - mean;
    sq += d * d;
  }
  const float rstd = 1.0f / sqrtf(block_sum(sq) / float(C) + eps);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float v = (x[c] - mean) * rstd * to_float(weight[c]);
    if (bias) v += to_float(bias[c]);
    y[c] = v;
  }
}

template <typename W>
__global__ void rmsnorm_kernel(float* out, const float* in, const W* weight, int64_t C, float eps) {
  const float* x = in + int64_t(blockIdx.x) * C;
  float* y = out + int64_t(blockIdx.x) * C;
  float sq = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) sq += x[c] * x[c];
  const float rstd = 1.0f / sqrtf(block_sum(sq) / float(C) + eps);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) y[c] = x[c] * rstd * to_float(weight[c]);
}

__global__ void add_kernel(float* out, const float* a, const float* b, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = a[i] + b[i];
}

__global__ void scale_kernel(float* x, int64_t n, float factor) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] *= factor;
}

// out = act(gate) * up, the CPU's formulas (apply_activation): silu for SwiGLU, gelu-tanh for Gemma's GeGLU.
__global__ void gated_kernel(float* out, const float* gate_up, int64_t T, int64_t F, Activation act) {
  const int64_t total = T * F;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / F, f = i - t * F;
    const float g = gate_up[t * 2 * F + f], u = gate_up[t * 2 * F + F + f];
    out[i] = apply_activation(g, act) * u;
  }
}

// One warp per (token, head among the NH q heads then the NKV k heads): RMSNorm of the head's HD values in
// place, times the q or k weight (QK-norm). A lane holds dims lane, lane + 32, ...
template <typename W>
__global__ void head_rmsnorm_kernel(float* qkv, const W* q_weight, const W* k_weight, int64_t NH, int64_t NKV,
                                    int64_t HD, float eps) {
  const int64_t t = blockIdx.x, head = blockIdx.y;
  float* x = qkv + t * (NH + 2 * NKV) * HD + head * HD;
  const W* w = head < NH ? q_weight : k_weight;
  float sq = 0.0f;
  for (int64_t d = threadIdx.x; d < HD; d += 32) sq += x[d] * x[d];
  const float rms = 1.0f / sqrtf(warp_sum(sq) / float(HD) + eps);
  for (int64_t d = threadIdx.x; d < HD; d += 32) x[d] = to_float(w[d]) * (x[d] * rms);
}

// One thread per (token, head among the NH q and NKV k heads, rotation pair i < rotary_dim/2).
__global__ void rope_kernel(float* qkv, const int32_t* positions, int64_t T, int64_t heads, int64_t HD,
                            int64_t row_stride, int64_t rotary_dim, float theta) {
  const int64_t half = rotary_dim / 2;
  const int64_t total = T * heads * half;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx % half, head = (idx / half) % heads, t = idx / (half * heads);
    // As Hugging Face computes it in fp32: inv_freq = 1 / theta^(2i / rotary_dim), angle = position * inv_freq.
    const float inv_freq = 1.0f / powf(theta, float(2 * i) / float(rotary_dim));
    const float angle = float(positions[t]) * inv_freq;
    float s, c;
    sincosf(angle, &s, &c);
    float* x = qkv + t * row_stride + head * HD;
    const float x1 = x[i], x2 = x[i + half];
    x[i] = x1 * c - x2 * s;
    x[i + half] = x2 * c + x1 * s;
  }
}

// One thread per (token, kv head, dim): k and v of this pass into their slots of the paged pools.
template <typename KV>
__global__ void kv_write_kernel(KV* k_pool, KV* v_pool, const float* qkv, BatchView batch, int64_t NH,
                                int64_t NKV, int64_t HD, int64_t BS) {
  const int64_t row_stride = (NH + 2 * NKV) * HD;
  const int64_t total = batch.num_tokens * NKV * HD;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t d = idx % HD, h = (idx / HD) % NKV, t = idx / (HD * NKV);
    const int64_t pos = batch.positions[t];
    const int64_t block = batch.block_tables[batch.seq_of_token[t] * batch.max_blocks + pos / BS];
    const int64_t slot = ((block * BS + pos % BS) * NKV + h) * HD + d;
    const float* row = qkv + t * row_stride;
    k_pool[slot] = from_float<KV>(row[(NH + h) * HD + d]);
    v_pool[slot] = from_float<KV>(row[(NH + NKV + h) * HD + d]);
  }
}

// One block per (token, query head): kAttentionWarps warps split the token's positions round robin (0..pos, or
// with a sliding window the `window` latest, pos + 1 - window..pos: blocks before it are never read, so a table
// may have given them back),
// each keeping an online softmax (running max m, running sum l, output accumulator); the warps' states are
// merged at the end. A lane holds dims lane, lane + 32, ... of q and of the accumulator.
// TODO(perf): split-K over long contexts for decode and a tiled (flash) kernel for prefill.
template <typename KV>
__global__ void __launch_bounds__(kAttentionWarps * 32) attention_kernel(float* out, const float* qkv,
                                                                         const KV* k_pool, const KV* v_pool,
                                                                         BatchView batch, int64_t NH,
                                                                         int64_t NKV, int64_t HD, int64_t BS,
                                                                         int64_t window) {
  __shared__ float q[kMaxHeadDim];
  __shared__ float warp_m[kAttentionWarps], warp_l[kAttentionWarps];
  __shared__ float warp_acc[kAttentionWarps][kMaxHeadDim];
  const int64_t t = blockIdx.x, head = blockIdx.y;
  const int64_t kv_head = head / (NH / NKV);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t row_stride = (NH + 2 * NKV) * HD;
  const float scale = 1.0f / sqrtf(float(HD));
  for (int64_t d = threadIdx.x; d < HD; d += blockDim.x) q[d] = qkv[t * row_stride + head * HD + d];
  __syncthreads();

  const int64_t pos = batch.positions[t];
  const int32_t* table = batch.block_tables + batch.seq_of_token[t] * batch.max_blocks;
  float m = -INFINITY, l = 0.0f;
  float acc[kMaxDimsPerLane];
#pragma unroll
  for (int i = 0; i < kMaxDimsPerLane; ++i) acc[i] = 0.0f;

  const int64_t first = window > 0 && pos + 1 > window ? pos + 1 - window : 0;
  for (int64_t j = first + warp; j <= pos; j += kAttentionWarps) {
    const int64_t base = ((int64_t(table[j / BS]) * BS + j % BS) * NKV + kv_head) * HD;
    float partial = 0.0f;
#pragma unroll
    for (int i = 0; i < kMaxDimsPerLane; ++i) {
      const int64_t d = lane + 32 * i;
      if (d < HD) partial += q[d] * to_float(k_pool[base + d]);
    }
    const float score = warp_sum(partial) * scale;
    const float m_new = fmaxf(m, score);
    const float correction = expf(m - m_new);  // 0 on the first position (m = -inf)
    const float p = expf(score - m_new);
    l = l * correction + p;
#pragma unroll
    for (int i = 0; i < kMaxDimsPerLane; ++i) {
      const int64_t d = lane + 32 * i;
      if (d < HD) acc[i] = acc[i] * correction + p * to_float(v_pool[base + d]);
    }
    m = m_new;
  }

  if (lane == 0) {
    warp_m[warp] = m;
    warp_l[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < kMaxDimsPerLane; ++i) {
    const int64_t d = lane + 32 * i;
    if (d < HD) warp_acc[warp][d] = acc[i];
  }
  __syncthreads();
  float m_all = -INFINITY;
  for (int w = 0; w < kAttentionWarps; ++w) m_all = fmaxf(m_all, warp_m[w]);  // warp 0 always saw `first`
  float l_all = 0.0f, weights[kAttentionWarps];
  for (int w = 0; w < kAttentionWarps; ++w) {
    weights[w] = warp_m[w] == -INFINITY ? 0.0f : expf(warp_m[w] - m_all);
    l_all += warp_l[w] * weights[w];
  }
  for (int64_t d = threadIdx.x; d < HD; d += blockDim.x) {
    float v = 0.0f;
    for (int w = 0; w < kAttentionWarps; ++w) v += warp_acc[w][d] * weights[w];
    out[t * NH * HD + head * HD + d] = v / l_all;
  }
}

__global__ void gather_rows_kernel(float* out, const float* in, const int32_t* rows, int64_t C) {
  const int64_t r = blockIdx.x;
  const float* src = in + int64_t(rows[r]) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) out[r * C + c] = src[c];
}

int row_threads(int64_t C) { return C >= 2048 ? 512 : C >= 512 ? 256 : 128; }

void check_grid_rows(int64_t rows, const char* op) {
  QS_CHECK(rows < (int64_t(1) << 31), ErrorCode::kUnsupported, op, " on the CUDA backend takes fewer than 2^31 rows");
}

}  // namespace

// ---- launchers --------------------------------------------------------------------------------------------

void embedding(float* out, const BatchView& batch, const DequantView& table, const void* pos_table, DType pos_type,
               int64_t C, cudaStream_t stream) {
  const int64_t T = batch.num_tokens;
  if (T == 0) return;
  check_grid_rows(T, "embedding");
  dispatch_float(pos_table ? pos_type : DType::F32, [&](auto p) {
    using P = decltype(p);
    embedding_kernel<P><<<unsigned(T), row_threads(C), 0, stream>>>(out, batch.token_ids, batch.positions, table,
                                                                    static_cast<const P*>(pos_table), C);
  });
  QS_CUDA_CHECK_LAUNCH();
}

void layernorm(float* out, const float* in, const void* w, const void* b, DType w_type, int64_t T, int64_t C,
               float eps, cudaStream_t stream) {
  if (T == 0) return;
  check_grid_rows(T, "layernorm");
  dispatch_float(w_type, [&](auto s) {
    using W = decltype(s);
    layernorm_kernel<W><<<unsigned(T), row_threads(C), 0, stream>>>(out, in, static_cast<const W*>(w),
                                                                    static_cast<const W*>(b), C, eps);
  });
  QS_CUDA_CHECK_LAUNCH();
}

void rmsnorm(float* out, const float* in, const void* w, DType w_type, int64_t T, int64_t C, float eps,
             cudaStream_t stream) {
  if (T == 0) return;
  check_grid_rows(T, "rmsnorm");
  dispatch_float(w_type, [&](auto s) {
    using W = decltype(s);
    rmsnorm_kernel<W><<<unsigned(T), row_threads(C), 0, stream>>>(out, in, static_cast<const W*>(w), C, eps);
  });
  QS_CUDA_CHECK_LAUNCH();
}

void add(float* out, const float* a, const float* b, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  add_kernel<<<grid_for(n, 256), 256, 0, stream>>>(out, a, b, n);
  QS_CUDA_CHECK_LAUNCH();
}

void scale(float* x, int64_t n, float factor, cudaStream_t stream) {
  if (n == 0) return;
  scale_kernel<<<grid_for(n, 256), 256, 0, stream>>>(x, n, factor);
  QS_CUDA_CHECK_LAUNCH();
}

void gated_activation(float* out, const float* gate_up, int64_t T, int64_t F, Activation act, cudaStream_t stream) {
  QS_CHECK(act == Activation::kSilu || act == Activation::kGeluTanh, ErrorCode::kInternal,
           "gated_activation: only silu and gelu-tanh gates exist");
  if (T * F == 0) return;
  gated_kernel<<<grid_for(T * F, 256), 256, 0, stream>>>(out, gate_up, T, F, act);
  QS_CUDA_CHECK_LAUNCH();
}

void head_rmsnorm(float* qkv, const void* q_weight, const void* k_weight, DType w_type, int64_t T, int64_t NH,
                  int64_t NKV, int64_t HD, float eps, cudaStream_t stream) {
  if (T == 0) return;
  check_grid_rows(T, "head_rmsnorm");
  QS_CHECK(NH + NKV < 65536, ErrorCode::kUnsupported, "head_rmsnorm grid too large: ", NH + NKV, " heads");
  dispatch_float(w_type, [&](auto s) {
    using W = decltype(s);
    head_rmsnorm_kernel<W><<<dim3(unsigned(T), unsigned(NH + NKV)), 32, 0, stream>>>(
        qkv, static_cast<const W*>(q_weight), static_cast<const W*>(k_weight), NH, NKV, HD, eps);
  });
  QS_CUDA_CHECK_LAUNCH();
}

void rope(float* qkv, const BatchView& batch, int64_t NH, int64_t NKV, int64_t HD, int64_t rotary_dim,
          float theta, cudaStream_t stream) {
  QS_CHECK(rotary_dim > 0 && rotary_dim <= HD && rotary_dim % 2 == 0, ErrorCode::kInvalidArgument,
           "rotary_dim must be even and in (0, head_dim], got ", rotary_dim, " for head_dim ", HD);
  const int64_t total = batch.num_tokens * (NH + NKV) * (rotary_dim / 2);
  if (total == 0) return;
  rope_kernel<<<grid_for(total, 256), 256, 0, stream>>>(qkv, batch.positions, batch.num_tokens, NH + NKV, HD,
                                                        (NH + 2 * NKV) * HD, rotary_dim, theta);
  QS_CUDA_CHECK_LAUNCH();
}

void paged_attention(float* out, const float* qkv, void* k_pool, void* v_pool, DType kv_type,
                     const BatchView& batch, int64_t NH, int64_t NKV, int64_t HD, int64_t BS, int64_t window,
                     cudaStream_t stream) {
  QS_CHECK(window >= 0, ErrorCode::kInternal, "attention window ", window, " < 0");
  QS_CHECK(HD > 0 && HD <= kMaxHeadDim, ErrorCode::kUnsupported, "the CUDA attention kernel handles head_dim up to ",
           kMaxHeadDim, ", got ", HD);
  QS_CHECK(NKV > 0 && NH % NKV == 0, ErrorCode::kInvalidArgument, "num_heads ", NH,
           " is not a multiple of num_kv_heads ", NKV);
  QS_CHECK(NH < 65536 && batch.num_tokens < (int64_t(1) << 31), ErrorCode::kUnsupported,
           "attention grid too large: ", NH, " heads x ", batch.num_tokens, " tokens");
  const int64_t T = batch.num_tokens;
  if (T == 0) return;
  auto launch = [&](auto zero) {
    using KV = decltype(zero);
    KV* k = static_cast<KV*>(k_pool);
    KV* v = static_cast<KV*>(v_pool);
    kv_write_kernel<KV><<<grid_for(T * NKV * HD, 256), 256, 0, stream>>>(k, v, qkv, batch, NH, NKV, HD, BS);
    attention_kernel<KV><<<dim3(unsigned(T), unsigned(NH)), kAttentionWarps * 32, 0, stream>>>(out, qkv, k, v, batch,
                                                                                           NH, NKV, HD, BS, window);
  };
  if (kv_type == DType::F16)
    launch(__half{});
  else if (kv_type == DType::F32)
    launch(float{});
  else
    QS_FAIL(ErrorCode::kInternal, "KV cache dtype ", dtype_name(kv_type), " is not F16 or F32");
  QS_CUDA_CHECK_LAUNCH();
}

void gather_rows(float* out, const float* in, const BatchView& batch, int64_t C, cudaStream_t stream) {
  if (batch.num_logit_rows == 0) return;
  check_grid_rows(batch.num_logit_rows, "gather_logit_rows");
  gather_rows_kernel<<<unsigned(batch.num_logit_rows), row_threads(C), 0, stream>>>(out, in, batch.logit_rows, C);
  QS_CUDA_CHECK_LAUNCH();
}

}  // namespace qs::cuda
