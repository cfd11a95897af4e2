// Reference quantizers (CPU): the formulas every backend's quantization is checked against.
#pragma once
#include <cstdint>

namespace qs::cpu {

// N = output channels (rows), K = input features (cols), T = tokens.

// Symmetric per-output-channel int8: scale[n] = absmax(w[n, :]) / 127, q = round(w / scale) in [-127, 127].
void quantize_per_channel_int8(int8_t* q, float* scales, const float* w, int64_t N, int64_t K);
// Symmetric per-token int8 for activations, same formula per row of x (T, K).
void quantize_per_token_int8(int8_t* q, float* scales, const float* x, int64_t T, int64_t K);
// The same, stored as q + 128 in uint8: the unsigned operand VNNI multiplies (one pass instead of two).
void quantize_per_token_int8_shifted(uint8_t* q, float* scales, const float* x, int64_t T, int64_t K);
// Symmetric int8 with one scale per group of `group` inputs of a token (K a multiple of group), each group as
// quantize_per_token_int8 quantizes a token (its own absmax scale, the same rounding): scales (T, K / group), and
// dot_start (T, K / group) = -128 x the sum of each group's q, where the W8A8 groups kernel starts the group's
// dot products to undo the +128 on its weights. The activations of W8A8 by groups, as llama.cpp's Q8_0 quantizes its activations in blocks of 32: an
// outlier channel then coarsens only its own group's rounding, not the whole token's.
void quantize_per_group_int8(int8_t* q, float* scales, int32_t* dot_start, const float* x, int64_t T, int64_t K,
                             int64_t group);
// The textbook method: per-tensor asymmetric uint8, scale = (max - min) / 255 over a range that includes 0,
// zero_point = round(-min / scale), q = clamp(round(w / scale) + zero_point, 0, 255).
void quantize_per_tensor_uint8(uint8_t* q, float* scale, int32_t* zero_point, const float* w, int64_t n);

}  // namespace qs::cpu
