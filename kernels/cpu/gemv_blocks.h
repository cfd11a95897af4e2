// The CPU kernels of int4-weight-only and group-wise int8-weight-only: GEMV over GGUF-style blocks of 32 weights
// (Q4_1, Q8_0 and U8Min) kept in tiles of 16 rows, dequantized in registers against fp32 activations; the Q4_1 and
// Q8_0 quantizers and the exact conversions between block types.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kernels/cpu/gemv.h"
#include "kernels/gguf_blocks.h"

namespace qs::cpu {

// T = tokens (rows of x), N = out features, K = in features (a multiple of kGgufBlock32), NB = K / 32 blocks a row.
// A block weight (N, K) is N rows of NB blocks each. GGUF lays them out row after row ("row-major blocks": what the
// converters below write and the reference reads); the kernels take them in tiles (below): the same bytes a block
// and the same values, rearranged.

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

// A block weight in tiles: rows in groups of kTileRows (the last group holds the N % 16 rest), each group block
// column by block column. Block b of a group of R rows is R times the block's bytes: the R rows' quantized values as
// 32-bit words, word r of row k at byte 4 (r R + k) (Q4_1: four words a row, Q8_0 and U8Min: eight); then the R
// rows' fp16 d; then (Q4_1, U8Min) their fp16 m. A Q8_0 / U8Min word r holds elements 4r .. 4r + 3, a byte each; a
// Q4_1 word r holds elements 8r .. 8r + 7: byte i has 8r + i in its low nibble and 8r + 4 + i in its high one.
// Nothing is padded: N x K / 32 blocks' bytes, as in the file.
// Why: one 64-byte load is word r of 16 rows, so one or two instructions turn one value of each row into fp32
// (Q4_1: a shift and a VPERMPS from a 16-entry table of 0.0 .. 15.0, indexed by a lane's low 4 bits; bytes: a
// VPSHUFB that moves byte p of each word up and a conversion) and one FMA multiplies it by a broadcast activation
// into 16 rows' sums; 16 rows' d and m come in one load each and scale 16 sums at once. One block after another cost
// the kernels a widening, conversions, a scalar scale and a horizontal sum a block: compute-bound at 45-50% of the
// read loop for Q4_1 (gemv_blocks_avx512.cpp has the numbers).
constexpr int64_t kTileRows = 16;
// Row-major blocks of `type` (BlockQ4_1, BlockQ8_0 or BlockU8Min; N rows of K / 32) into tiles; dst holds as many
// bytes as src. Values unchanged.
void tile_blocks(uint8_t* dst, const void* src, BlockType type, int64_t N, int64_t K);
// Row n's block b of a tiled weight, written to `block` as a row-major block of `type` (the inverse of tile_blocks).
void untile_block(void* block, const void* w, BlockType type, int64_t n, int64_t b, int64_t N, int64_t K);
// Where a tiled weight's group of rows g starts (block 0 of its first row), and its row count.
inline const uint8_t* tile_group(const void* w, BlockType type, int64_t g, int64_t K) {
  return static_cast<const uint8_t*>(w) + g * kTileRows * (K / 32) * int64_t(block_type_bytes(type));
}
inline int64_t tile_rows(int64_t g, int64_t N) { return std::min(kTileRows, N - g * kTileRows); }
// How far ahead the tile GEMVs prefetch (gemv.h's kWeightPrefetchBytes is for one-row-at-a-time GEMVs): a tile
// kernel reads 16 rows' worth of a block column at once, so its stream is denser and nearer is better. On the
// 2-vCPU Intel Xeon (2026-12-04, qs_gemv_bench, two runs each, share of the read loop for int8-weight-only
// --group-size 32 --quantize-head / int4-weight-only): 1 KiB 71-76% / 79%, 2 KiB 83-92% / 81-90%, 4 KiB 74-75% /
// 76-80%, 8 KiB 72% / 79%, 16 KiB 73% / 77%.
constexpr int64_t kTilePrefetchBytes = 2048;
// Words a row and block; a tile's d start after them (4 R bytes a word), its m 2 R bytes further.
inline int tile_words(BlockType type) { return type == BlockType::kQ4_1 ? 4 : 8; }
// The same for the kernels, at compile time: values a word, and which element of the block value p of word r is;
// kDScale is what d is multiplied by for the way the kernels widen a byte (moved to bits 16..23 unsigned, 24..31
// signed, so its conversion to fp32 is the value times 2^16 or 2^24: exact, and taken out of d).
template <BlockType kType>
struct TileFormat {
  static constexpr int kWords = kType == BlockType::kQ4_1 ? 4 : 8;
  static constexpr int kValues = kType == BlockType::kQ4_1 ? 8 : 4;
  static constexpr bool kHasMin = kType != BlockType::kQ8_0;
  static constexpr float kDScale = kType == BlockType::kQ4_1 ? 1.0f : kType == BlockType::kU8Min ? 0x1p-16f : 0x1p-24f;
  static constexpr int element(int r, int p) { return kType == BlockType::kQ4_1 ? 8 * r + p / 2 + (p % 2) * 4 : 4 * r + p; }
};

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
// (m = 0 for Q8_0): the weight-only product with the dequantization split per block.
// The reference, over row-major blocks (GGUF's order): one plain loop per output. The kernels below take tiles.
void gemv_blocks_reference(float* out, const float* x, const void* w, BlockType type, int64_t T, int64_t N,
                           int64_t K);
// Rows of x one pass over the weights handles.
constexpr int64_t kBlockGemvMaxRows = 8;
// The same for T <= kBlockGemvMaxRows, threads over rows of w. AVX-512 needs gemv_avx512_available() (gemv.h);
// the AVX2 one runs on every CPU the build targets (x86-64-v3).
void gemv_blocks_avx512(float* out, const float* x, const void* w, BlockType type, int64_t T, int64_t N, int64_t K);
// sums[i] = the sum of x[32 i .. 32 i + 32) (AVX-512): the m term takes each block's activation sum.
void block_sums_avx512(float* sums, const float* x, int64_t n_blocks);
void gemv_blocks_avx2(float* out, const float* x, const void* w, BlockType type, int64_t T, int64_t N, int64_t K);
// Any T: passes of kBlockGemvMaxRows rows through the best of the above.
void gemv_blocks(float* out, const float* x, const void* w, BlockType type, int64_t T, int64_t N, int64_t K);
// dst (K) = row n of the N x K tiled weight w, dequantized as the reference does (d q + m).
void dequantize_block_row(float* dst, const void* w, BlockType type, int64_t n, int64_t N, int64_t K);

}  // namespace qs::cpu
