// The CPU kernels of int4-weight-only and group-wise int8-weight-only: GEMV over rows of GGUF-style blocks of 32
// weights (Q4_1, Q8_0 and U8Min), dequantized in registers against fp32 activations; the Q4_1 and Q8_0 quantizers
// and the exact conversions between block types.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kernels/cpu/gemv.h"
#include "kernels/gguf_blocks.h"

namespace qs::cpu {

// T = tokens (rows of x), N = out features, K = in features (a multiple of kGgufBlock32), NB = K / 32 blocks a row.
// A block weight w (N, K) is N rows of NB blocks each. Q8_0 and U8Min blocks are kept as GGUF lays them out, row
// after row; Q4_1 ones are kept in tiles (below): the same 20 bytes a block and the same values, rearranged.

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

// A Q4_1 weight in tiles: rows in groups of kQ4_1TileRows (the last group holds the N % 16 rest), each group
// block column by block column. Block b of a group of R rows is 20 R bytes: the R rows' 16 nibble bytes as four
// 32-bit words a row, word r of row k at byte 4 (r R + k); then the R rows' fp16 d; then their fp16 m. Word r
// holds elements 8r .. 8r + 7 of its row's block: byte i has element 8r + i in its low nibble and 8r + 4 + i in
// its high one. Nothing is padded: N x K / 32 x 20 bytes, as in the file.
// Why: one 64-byte load is word r of 16 rows, so a shift and a VPERMPS (a 16-entry table of 0.0 .. 15.0 indexed
// by a lane's low 4 bits) turn one nibble of each row into fp32, exactly, and one FMA multiplies it by a
// broadcast activation into 16 rows' sums; 16 rows' d and m come in one load each and scale 16 sums at once. GGUF's
// one block after another cost the kernel a widening, two masks, two conversions, a scalar scale and a
// horizontal sum a block: compute-bound at 45-50% of the read loop (gemv_blocks_avx512.cpp has the numbers).
constexpr int64_t kQ4_1TileRows = 16;
// GGUF Q4_1 blocks (N rows of K / 32, row after row) into tiles; dst holds N x K / 32 x 20 bytes. Values unchanged.
void tile_q4_1(uint8_t* dst, const BlockQ4_1* src, int64_t N, int64_t K);
// Row n's block b of a tiled weight, as GGUF lays a block out (the inverse of tile_q4_1, for the reference).
BlockQ4_1 q4_1_tile_block(const void* w, int64_t n, int64_t b, int64_t N, int64_t K);
// Where a tiled weight's group of rows g starts (block 0 of its first row), and its row count.
inline const uint8_t* q4_1_tile_group(const void* w, int64_t g, int64_t K) {
  return static_cast<const uint8_t*>(w) + g * kQ4_1TileRows * (K / 32) * int64_t(sizeof(BlockQ4_1));
}
inline int64_t q4_1_tile_rows(int64_t g, int64_t N) { return std::min(kQ4_1TileRows, N - g * kQ4_1TileRows); }

// Where block i's quantized bytes are: what the block GEMVs prefetch kWeightPrefetchBytes (gemv.h) ahead of.
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
// tiled Q4_1 weight of N x K / 32 blocks.
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
// Any T: passes of kBlockGemvMaxRows rows through the best of the above.
void gemv_blocks(float* out, const float* x, const void* w, BlockType type, int64_t T, int64_t N, int64_t K);
// dst (K) = row n of the N x K weight w, dequantized as the reference does (d q + m).
void dequantize_block_row(float* dst, const void* w, BlockType type, int64_t n, int64_t N, int64_t K);

}  // namespace qs::cpu
