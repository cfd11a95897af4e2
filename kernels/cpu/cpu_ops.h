// The CPU reference ops: plain functions over float arrays (outputs first, then inputs, weights, dims).
// They are what every other backend is checked against, and the CPU backend's fast path (OpenMP, AVX2).
#pragma once
#include <cstdint>

#include "kernels/backend.h"

namespace qs::cpu {

// T = tokens, C = channels, F = MLP width, NH = query heads, NKV = key/value heads, HD = head dim,
// BS = KV block size.

void layernorm_forward(float* out, const float* in, const float* weight, const float* bias, int64_t T, int64_t C,
                       float eps);
void rmsnorm_forward(float* out, const float* in, const float* weight, int64_t T, int64_t C, float eps);
void add_forward(float* out, const float* a, const float* b, int64_t n);
void apply_activation(float* x, int64_t n, Activation act);
// out (T, F) = silu(gate_up[:, :F]) * gate_up[:, F:]; gate_up is (T, 2F).
void silu_mul_forward(float* out, const float* gate_up, int64_t T, int64_t F);
// out (T, F) = gelu_tanh(gate_up[:, :F]) * gate_up[:, F:] (Gemma's GeGLU, gelu_pytorch_tanh).
void gelu_tanh_mul_forward(float* out, const float* gate_up, int64_t T, int64_t F);
// In place on the q heads (weight q_w, HD) and k heads (k_w) of qkv (T, (NH+2NKV)*HD): RMSNorm over each head.
void head_rmsnorm_forward(float* qkv, const float* q_w, const float* k_w, int64_t T, int64_t NH, int64_t NKV,
                          int64_t HD, float eps);
// Rotary embedding, Hugging Face rotate_half convention, in place on the q and k heads of qkv (T, (NH+2NKV)*HD).
void rope_forward(float* qkv, const int32_t* positions, int64_t T, int64_t NH, int64_t NKV, int64_t HD,
                  int64_t rotary_dim, float theta);
// Writes the new k, v into the layer's pools (num_blocks, BS, NKV, HD), then causal attention per token over
// its sequence's positions (pos - window, pos] (all of [0, pos] when window is 0). out (T, NH*HD).
void attention_forward(float* out, const float* qkv, float* k_pool, float* v_pool, const BatchLayout& batch,
                       int64_t BS, int64_t NH, int64_t NKV, int64_t HD, int64_t window = 0);
// out (T, C) += pos_table[positions] (GPT-2's learned position embeddings).
void embedding_add_positions(float* out, const float* pos_table, const int32_t* positions, int64_t T, int64_t C);

}  // namespace qs::cpu
