// The fast CPU attention over the paged KV cache (flash-style, online softmax), beside the reference
// attention_forward of cpu_ops.h that it is tested against.
#pragma once
#include <cstdint>

#include "kernels/backend.h"

namespace qs::cpu {

// T = tokens, NH = query heads, NKV = key/value heads, G = NH / NKV (query heads per KV head), HD = head dim,
// BS = KV block size, R = query rows of a tile (tokens of the tile x G).
//
// Pool layout of this kernel (not the reference's): per layer, num_blocks blocks block_stride elements apart
// (NKV*HD*BS when the pool holds only this layer's K or V; more when a cache interleaves layers), each
//   K: (NKV, HD, BS)  the block's keys transposed, so one vector load per dim holds BS keys' values
//   V: (NKV, BS, HD)  the block's values row by row
// in F32, F16, BF16 or I8 (converted to fp32 in registers; scores, softmax and accumulation are fp32). An I8 K
// (or V) block is followed by its scales, fp32 (NKV, BS): element = scale x int8, one scale for each token's
// head, its absolute max / 127 (quantize_kv_int8). As LMDeploy's int8 KV cache, per token and head: a token is
// written once, so no scale ever changes, where a scale per block would grow as its later tokens come and
// requantize (round again) the earlier ones. The scales multiply a block's scores (K) and its probabilities (V),
// never an element. Where HD is a power of two each head is first rotated by the normalized Walsh-Hadamard
// transform (hadamard_rotate), as QuaRot rotates its 4-bit KV cache: a few outlier channels set a head's absolute
// max, and the rotation spreads them over all HD, so the step of the others' grid shrinks (SmolLM2's K on 512
// tokens of GPL-3, bench/kv_int8_rotation.py: relative error 1.08% -> 0.56%, V 0.71% -> 0.59%; groups of 32
// without a rotation, 4 more bytes a head, 0.83% and 0.61%). The transform is orthogonal, so q is rotated the
// same way and q.k does not change; the output, a mix of rotated values, is rotated back (the transform is its
// own inverse). The per-token scales still factor out of both products.

// A bf16 element of the cache (its own type, so the kernels' loads tell it from fp16's uint16_t).
struct Bf16 {
  uint16_t bits;
};

enum class AttentionIsa { kAuto, kAvx512, kAvx2, kScalar };
// The KV-cache dtypes attention_paged_forward stores and reads: F32, F16, BF16, I8.
bool attention_reads_kv_dtype(DType dtype);
// The int8 KV cache's rounding of one token's head: q[i * stride] = round(x[i] / scale) for i < n, scale =
// max |x| / 127 (1 where x is all zeros, so a scale is never 0). Returns the scale. Tests round their reference
// K/V through it.
float quantize_kv_int8(const float* x, int64_t n, int8_t* q, int64_t stride);
// Whether an int8 cache of this head size stores its heads rotated (a power of two, at least 2).
bool kv_int8_rotates(int64_t head_dim);
// x = H x / sqrt(n) in place, H the n x n Walsh-Hadamard matrix (n a power of two): orthogonal and symmetric, so
// applying it twice gives x back (up to rounding).
void hadamard_rotate(float* x, int64_t n);
bool attention_isa_available(AttentionIsa isa);
const char* attention_isa_name(AttentionIsa isa);

// Writes this pass's k, v of qkv (T, (NH+2NKV)*HD) into the layer's pools, then out (T, NH*HD) = causal
// softmax(q k^T / sqrt(HD)) v over each token's sequence, as attention_forward does. kv_dtype is F32, F16, BF16
// or I8 (attention_reads_kv_dtype).
// window > 0: each token sees only positions (pos - window, pos] (sliding-window attention); blocks wholly
// before every query's window are not read.
// Work is split over the OpenMP threads by (sequence, KV head, query tile) and, when that gives too few
// pieces for the threads (long decode at small batch), by key chunks whose partial results are merged.
// Batch-invariant: a token's output is the same bits whatever else the pass holds (other tokens of its
// sequence, other sequences, how many threads): key chunks start at fixed positions (every
// attention_key_chunk(BS) keys from 0) and are combined in the same order whether or not threads split them.
void attention_paged_forward(float* out, const float* qkv, void* k_pool, void* v_pool, DType kv_dtype,
                             const BatchLayout& batch, int64_t BS, int64_t NH, int64_t NKV, int64_t HD,
                             int64_t block_stride = 0, AttentionIsa isa = AttentionIsa::kAuto, int64_t window = 0);

// ---- internal: what the per-ISA kernels (attention_paged_kernel.h) are handed -----------------------------

// Keys of a key chunk: the 256 keys the softmax of a row restarts at, rounded up to whole blocks.
int64_t attention_key_chunk(int64_t BS);

// One piece of work: the query rows of one tile of a sequence's tokens for one KV head, over keys
// [key_begin, key_end) (key_begin a multiple of BS; a partial item's keys lie in one key chunk).
struct AttentionWorkItem {
  int32_t seq = 0;           // index into the batch's block tables
  int32_t kv_head = 0;
  int32_t first_token = 0;   // the tile's tokens are [first_token, first_token + num_tokens) of the batch
  int32_t num_tokens = 0;
  int32_t key_begin = 0, key_end = 0;
  int32_t partial = -1;      // -1: the item covers all keys and writes out; else its slot in partials
};
// A tile split over key chunks: its partial slots [first_partial, first_partial + num_partials), one per chunk in
// key order, are merged.
struct AttentionMerge {
  int32_t kv_head = 0;
  int32_t first_token = 0, num_tokens = 0;
  int32_t first_partial = 0, num_partials = 0;
};
struct AttentionPlan {
  float* out = nullptr;              // (T, NH*HD)
  const float* qkv = nullptr;        // (T, (NH+2NKV)*HD)
  const void* k_pool = nullptr;      // layout above
  const void* v_pool = nullptr;
  DType kv_dtype = DType::F32;
  bool rotated_heads = false;        // int8 with kv_int8_rotates(HD): the queries are rotated as the keys were
  const int32_t* const* block_tables = nullptr;   // [S] -> block ids
  const int32_t* positions = nullptr;             // [T]
  int64_t BS = 0, NH = 0, NKV = 0, HD = 0;
  int64_t block_stride = 0;          // elements from one block of a pool to the next
  float scale_log2 = 0;              // log2(e) / sqrt(HD): scores are kept in base 2
  int64_t window = 0;                // sliding window (0: none): keys before pos + 1 - window are masked
  int64_t key_chunk = 0;             // CK = attention_key_chunk(BS)
  const AttentionWorkItem* items = nullptr;
  int64_t num_items = 0;
  const AttentionMerge* merges = nullptr;
  int64_t num_merges = 0;
  int64_t max_rows = 0;              // R of the largest tile
  float* partials = nullptr;         // per slot: m (max_rows), l (max_rows), acc (max_rows, HD)
  float* scratch = nullptr;          // per thread: scratch_floats
  int64_t scratch_floats = 0;
  int threads = 1;
};
// Floats of one partial slot and of one thread's scratch for a plan's shape.
int64_t attention_partial_floats(int64_t max_rows, int64_t HD);
int64_t attention_scratch_floats(int64_t max_rows, int64_t HD, int64_t BS);

void attention_run_avx512(const AttentionPlan& plan);   // HD % 16 == 0
void attention_run_avx2(const AttentionPlan& plan);     // HD % 8 == 0
void attention_run_scalar(const AttentionPlan& plan);   // any HD

}  // namespace qs::cpu
