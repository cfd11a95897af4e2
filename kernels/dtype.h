// Element types of stored and computed tensors, with the fp16/bf16 conversions every layer shares.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace qs {

enum class DType : uint8_t {
  F32, F16, BF16,
  I8, U8, I32,
  // GGUF block formats (kernels/gguf_blocks.h), dequantized at load: 32 elements a block ...
  Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
  Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K,   // ... and 256 for the K-quants
};

const char* dtype_name(DType t);
// Bytes for `n` elements (n must be a multiple of the block size for block formats).
size_t dtype_bytes(DType t, int64_t n);
int64_t dtype_block_size(DType t);  // 1 for plain types, 32 or 256 for GGUF blocks

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {  // round to nearest even, NaN stays NaN
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t(bits >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Converts `n` elements of `src` (F32, F16, BF16 or a GGUF block format) to float.
void convert_to_f32(float* dst, const void* src, DType src_type, int64_t n);

}  // namespace qs
