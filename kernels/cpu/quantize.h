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
// The textbook method: per-tensor asymmetric uint8, scale = (max - min) / 255 over a range that includes 0,
// zero_point = round(-min / scale), q = clamp(round(w / scale) + zero_point, 0, 255).
void quantize_per_tensor_uint8(uint8_t* q, float* scale, int32_t* zero_point, const float* w, int64_t n);

}  // namespace qs::cpu
