// The CPU kernels of int4-weight-only and group-wise int8-weight-only: GEMV over rows of GGUF-style blocks of 32
// weights (Q4_1, and Q8_0), dequantized in registers against fp32 activations; the Q4_1 and Q8_0 quantizers.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/gguf_blocks.h"

namespace qs::cpu {

// T = tokens (rows of x), N = out features, K = in features (a multiple of kGgufBlock32), NB = K / 32 blocks a row.
// A block weight w (N, K) is N rows of NB blocks each, row after row (a GGUF tensor's own layout).

enum class BlockType { kQ4_1, kQ8_0 };
size_t block_type_bytes(BlockType type);   // 20 or 34

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
// The reference: one plain loop per output.
void gemv_blocks_reference(float* out, const float* x, const void* w, BlockType type, int64_t T, int64_t N,
                           int64_t K);
// Rows of x one pass over the weights handles.
constexpr int64_t kBlockGemvMaxRows = 8;
// The same for T <= kBlockGemvMaxRows, threads over rows of w. AVX-512 needs gemv_avx512_available() (gemv.h);
// the AVX2 one runs on every CPU the build targets (x86-64-v3).
void gemv_blocks_avx512(float* out, const float* x, const void* w, BlockType type, int64_t T, int64_t N, int64_t K);
void gemv_blocks_avx2(float* out, const float* x, const void* w, BlockType type, int64_t T, int64_t N, int64_t K);
// Any T: passes of kBlockGemvMaxRows rows through the best of the two above.
void gemv_blocks(float* out, const float* x, const void* w, BlockType type, int64_t T, int64_t N, int64_t K);
// dst (K) = row n of w, dequantized as the reference does (d q + m).
void dequantize_block_row(float* dst, const void* w, BlockType type, int64_t n, int64_t K);

}  // namespace qs::cpu
