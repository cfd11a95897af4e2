// The GGUF (ggml) block formats quantserve dequantizes at load: their layouts, sizes and the reference
// dequantization, bit-exact with the `gguf` Python package's (gguf.quants) and ggml's dequantize_row_*.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/dtype.h"

namespace qs {

// Layouts as in ggml's ggml-common.h; QK = 32 elements a block for the *_0/*_1 types, 256 (QK_K) for K-quants.
// "half" fields are IEEE fp16 bits. K-quants split a block into sub-blocks of 16 or 32 with their own scales.
constexpr int64_t kGgufBlock32 = 32, kGgufBlockK = 256;
struct BlockQ8_0 { uint16_t d; int8_t qs[32]; };                               // x = d q
struct BlockQ4_0 { uint16_t d; uint8_t qs[16]; };                              // x = d (q - 8)
struct BlockQ4_1 { uint16_t d, m; uint8_t qs[16]; };                           // x = d q + m
struct BlockQ5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; };               // x = d (q - 16), q 5-bit
struct BlockQ5_1 { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; };            // x = d q + m
struct BlockQ2_K { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; };    // 16 x 16: (d sc) q - (dmin m)
struct BlockQ3_K { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d; };   // 16 x 16: d (sc-32) q
struct BlockQ4_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; };   // 8 x 32, 6-bit scales and mins
struct BlockQ5_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; };
struct BlockQ6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; };      // 16 x 16: d sc (q-32)
struct BlockQ8_K { float d; int8_t qs[256]; int16_t bsums[16]; };              // x = d q (bsums unused here)
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ5_0) == 22 && sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockQ2_K) == 84 && sizeof(BlockQ3_K) == 110 && sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210 && sizeof(BlockQ8_K) == 292);

bool is_gguf_block_type(DType t);
int64_t gguf_block_elements(DType t);   // 32 or 256
size_t gguf_block_bytes(DType t);       // sizeof the block struct

// dst (n) = the blocks of src dequantized; n a multiple of the block's elements.
void dequantize_gguf_blocks(float* dst, const void* src, DType type, int64_t n);

// The index of the first of `n_blocks` blocks whose scale (or min) is not a finite number, or -1. A NaN or
// infinite scale makes every weight of its block NaN or infinite: the file is damaged, not quantized.
int64_t first_block_with_nonfinite_scale(const void* src, DType type, int64_t n_blocks);

}  // namespace qs
