// The CPU kernels of int4-weight-only and group-wise int8-weight-only: GEMV over rows of GGUF-style blocks of 32
// weights (Q4_1, Q8_0 and U8Min), dequantized in registers against fp32 activations; the Q4_1 and Q8_0 quantizers
// and the exact conversions between block types.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cpu/gemv.h"
#include "kernels/gguf_blocks.h"

namespace qs::cpu {

// T = tokens (rows of x), N = out features, K = in features (a multiple of kGgufBlock32), NB = K / 32 blocks a row.
// A block weight w (N, K) is N rows of NB blocks each, row after row. Q8_0 blocks are kept as GGUF lays them out;
// Q4_1 ones are kept split (Q4_1Split): the same 20 bytes a block and the same values, in three arrays.

enum class BlockType { kQ4_1, kQ8_0, kU8Min };
size_t block_type_bytes(BlockType type);   // 20, 34 or 36

// 8-bit weights with a minimum, x = d q + m (q 0..255, d and m fp16): Q4_1's formula with a byte a weight. Not a
// GGUF type: int8-weight-only keeps a Q4_1 tensor in it exactly (q = the nibble), where Q8_0 (x = d q, no m) would
// round it again. 36 bytes a block.
struct BlockU8Min { uint16_t d, m; uint8_t qs[32]; };
// Q4_1 blocks as U8Min without rounding anything (the same d and m, each nibble a byte).
void convert_q4_1_to_u8_min(BlockU8Min* dst, const BlockQ4_1* src, int64_t n_blocks);
// Q4_0 blocks as Q8_0 without rounding anything: d (q - 8) is Q8_0's d q' with q' = q - 8.
void convert_q4_0_to_q8_0(BlockQ8_0* dst, const BlockQ4_0* src, int64_t n_blocks);

// A Q4_1 weight in memory: every block's 16 bytes of nibbles, then every block's d, then every block's m (fp16),
// each array in block order (row after row). GGUF interleaves them per 20-byte block; split, the batch-1 kernel
// reads two blocks' nibbles in one 32-byte load and sixteen blocks' scales in one, where interleaved blocks cost
// it a shuffle and a scalar conversion per block (gemv_blocks_bf16_avx512.cpp says what that was worth).
struct Q4_1Split {
  const uint8_t* qs;   // n_blocks x 16
  const uint16_t* d;   // n_blocks
  const uint16_t* m;   // n_blocks
};
// The three arrays of a split Q4_1 weight of n_blocks blocks that starts at w.
Q4_1Split q4_1_split(const void* w, int64_t n_blocks);
// GGUF Q4_1 blocks into the split layout (dst holds n_blocks x 20 bytes); values unchanged.
void split_q4_1(uint8_t* dst, const BlockQ4_1* src, int64_t n_blocks);
// Where block i's quantized bytes are: what the block GEMVs prefetch kWeightPrefetchBytes (gemv.h) ahead of.
inline const void* block_address(const Q4_1Split& w, int64_t i) { return w.qs + i * 16; }
inline const void* block_address(const BlockU8Min* w, int64_t i) { return w + i; }
inline const void* block_address(const BlockQ8_0* w, int64_t i) { return w + i; }

// Round to nearest into Q4_1 (ggml's quantize_row_q4_1_ref): per block of 32, m = min, d = (max - min) / 15,
// both stored fp16, q = round((x - m) / d) clamped to [0, 15]. n a multiple of 32.
void quantize_q4_1(BlockQ4_1* dst, const float* src, int64_t n);
// Symmetric int8 by groups of 32 into Q8_0: per block, d = absmax / 127 stored fp16, q = round(x / d) with the
// stored (fp16) d, clamped to [-127, 127] (ggml divides by the fp32 d, then stores it rounded: a 2^-11 mismatch
// this avoids). The scale of int8-weight-only with --group-size 32. n a multiple of 32.
void quantize_q8_0(BlockQ8_0* dst, const float* src, int64_t n);
// Q4_0 blocks as Q4_1 without rounding anything: d (q - 8) = d q + m with m = -8 d, exact in fp16 (a power-of-two
// multiple) unless it overflows; returns false, leaving dst partly written, if a block's -8 d would.
bool convert_q4_0_to_q4_1(BlockQ4_1* dst, const BlockQ4_0* src, int64_t n_blocks);

// out[t, n] = sum_b (d_b sum_j q_bj x[t, 32 b + j] + m_b sum_j x[t, 32 b + j]) over row n's blocks
// (m = 0 for Q8_0): the weight-only product with the dequantization split per block. w: Q8_0 or U8Min blocks, or a
// split Q4_1 weight (Q4_1Split) of N x K / 32 blocks.
// The reference: one plain loop per output.
void gemv_blocks_reference(float* out, const float* x, const void* w, BlockType type, int64_t T, int64_t N,
                           int64_t K);
// Rows of x one pass over the weights handles.
constexpr int64_t kBlockGemvMaxRows = 8;
// The same for T <= kBlockGemvMaxRows, threads over rows of w. AVX-512 needs gemv_avx512_available() (gemv.h);
// the AVX2 one runs on every CPU the build targets (x86-64-v3).
void gemv_blocks_avx512(float* out, const float* x, const void* w, BlockType type, int64_t T, int64_t N, int64_t K);
// sums[i] = the sum of x[32 i .. 32 i + 32) (AVX-512): Q4_1's m term takes each block's activation sum.
void block_sums_avx512(float* sums, const float* x, int64_t n_blocks);
void gemv_blocks_avx2(float* out, const float* x, const void* w, BlockType type, int64_t T, int64_t N, int64_t K);
// T = 1 on a split Q4_1 weight with AVX-512 BF16 (gemv_bf16_available()): each activation split exactly into three
// bf16 parts and each nibble looked up as a bf16, so every product is exact and only the order of the fp32 sums
// differs from gemv_blocks_avx512's; two blocks a dot-product instruction. Threads over rows of w.
bool gemv_bf16_available();
void gemv_q4_1_bf16(float* out, const float* x, const void* w, int64_t N, int64_t K);
// Any T: passes of kBlockGemvMaxRows rows through the best of the above.
void gemv_blocks(float* out, const float* x, const void* w, BlockType type, int64_t T, int64_t N, int64_t K);
// dst (K) = row n of the N x K weight w, dequantized as the reference does (d q + m).
void dequantize_block_row(float* dst, const void* w, BlockType type, int64_t n, int64_t N, int64_t K);

}  // namespace qs::cpu
