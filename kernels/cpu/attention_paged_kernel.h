// The body of the fast paged attention, written once over a SIMD type `Vec` and compiled once per ISA: each
// attention_*.cpp defines QS_ATTN_NAMESPACE and a `Vec` in qs::cpu::QS_ATTN_NAMESPACE, then includes this file.
// (No std templates in here: the files are compiled with different -m flags and must not share instantiations.)
#include <omp.h>

#include <cstdint>

#include "kernels/cpu/attention_paged.h"

#ifndef QS_ATTN_NAMESPACE
#error "define QS_ATTN_NAMESPACE (and a Vec type in it) before including attention_paged_kernel.h"
#endif

namespace qs::cpu::QS_ATTN_NAMESPACE {

// G = query heads per KV head, R = rows of a tile (its tokens x G, token-major), RR = rows of a register tile,
// BSP = BS rounded up to the vector width (a row's scores in scratch), E = the cache's element type,
// CK = keys of a key chunk (a multiple of BS; chunk k holds keys [k CK, (k + 1) CK)).
//
// Batch invariance: every row's result is the same bits whatever the pass around it (how many rows share a tile
// or a register tile, which keys the tile spans, how keys are split among threads). Each row's arithmetic is
// fixed: its dot products always use Vec::kScoreAccumulators partial sums; its online softmax runs over each key
// chunk separately, block by block from the chunk's start (a block wholly masked for the row changes nothing:
// its factor is exactly 1 and its probabilities exactly 0); and the chunks' states are folded left to right,
// whether one work item runs them all or each is its own item and merge_partials folds them.

// Whether a cache element carries a scale per token and head (int8: attention_paged.h).
template <class E>
struct ScaledElement {
  static constexpr bool value = false;
};
template <>
struct ScaledElement<int8_t> {
  static constexpr bool value = true;
};

inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max_i64(int64_t a, int64_t b) { return a > b ? a : b; }
inline float max_f(float a, float b) { return a > b ? a : b; }

// Independent accumulators per row of the value update (each output element still sums its keys in order, so
// this changes speed, never bits): enough to hide the FMA latency, few enough to stay in registers.
constexpr int accumulators_per_row(int rows) {
  const int u = Vec::kAccumulators / rows;
  return u < 1 ? 1 : (u > 4 ? 4 : u);
}

// S[rr, c] = q_rr . k_c (q pre-scaled) for the block's keys; lanes at or past each row's limit are -inf (causal
// mask and the end of the key range). Each dot product sums dims d = u mod U in accumulator u, then the U
// accumulators in order: U is fixed per ISA so that a row's bits do not depend on RR.
template <class E, int RR>
inline void block_scores(float* S, int64_t BSP, const float* qs, int64_t HD, const E* kb, int64_t BS, int64_t n,
                         const int32_t* limit) {
  constexpr int U = Vec::kScoreAccumulators;
  static_assert(RR * U <= Vec::kAccumulators, "a register tile of scores must fit the accumulators");
  for (int64_t c = 0; c < n; c += Vec::W) {
    typename Vec::R acc[RR][U];
    for (int rr = 0; rr < RR; ++rr) {
      for (int u = 0; u < U; ++u) acc[rr][u] = Vec::zero();
    }
    const bool partial = c + Vec::W > BS;   // the block ends inside this vector (BS not a multiple of W)
    int64_t d = 0;
    for (; d + U <= HD; d += U) {
      for (int u = 0; u < U; ++u) {
        const E* kp = kb + (d + u) * BS + c;
        const typename Vec::R kd = partial ? Vec::load_partial(kp, BS - c) : Vec::load(kp);
        for (int rr = 0; rr < RR; ++rr) acc[rr][u] = Vec::fmadd(kd, Vec::set1(qs[rr * HD + d + u]), acc[rr][u]);
      }
    }
    for (; d < HD; ++d) {
      const E* kp = kb + d * BS + c;
      const typename Vec::R kd = partial ? Vec::load_partial(kp, BS - c) : Vec::load(kp);
      for (int rr = 0; rr < RR; ++rr) acc[rr][0] = Vec::fmadd(kd, Vec::set1(qs[rr * HD + d]), acc[rr][0]);
    }
    for (int rr = 0; rr < RR; ++rr) {
      typename Vec::R s = acc[rr][0];
      for (int u = 1; u < U; ++u) s = Vec::add(s, acc[rr][u]);
      Vec::store(S + rr * BSP + c, Vec::keep_first(s, limit[rr] - c, -__builtin_inff()));
    }
  }
}

// acc[rr, d0 : d0 + DV*W] = alpha_rr * acc[rr, ...] + sum_j P[rr, j] v_j[...].
template <class E, int RR, int DV>
inline void block_values_part(float* acc, int64_t HD, const float* P, int64_t BSP, const float* alpha, const E* vb,
                              int64_t n, int64_t d0) {
  typename Vec::R a[RR][DV];
  for (int rr = 0; rr < RR; ++rr) {
    const typename Vec::R s = Vec::set1(alpha[rr]);
    for (int u = 0; u < DV; ++u) a[rr][u] = Vec::mul(Vec::load(acc + rr * HD + d0 + u * Vec::W), s);
  }
  for (int64_t j = 0; j < n; ++j) {
    for (int u = 0; u < DV; ++u) {
      const typename Vec::R v = Vec::load(vb + j * HD + d0 + u * Vec::W);
      for (int rr = 0; rr < RR; ++rr) a[rr][u] = Vec::fmadd(v, Vec::set1(P[rr * BSP + j]), a[rr][u]);
    }
  }
  for (int rr = 0; rr < RR; ++rr) {
    for (int u = 0; u < DV; ++u) Vec::store(acc + rr * HD + d0 + u * Vec::W, a[rr][u]);
  }
}

template <class E, int RR>
inline void block_values(float* acc, int64_t HD, const float* P, int64_t BSP, const float* alpha, const E* vb,
                         int64_t n) {
  constexpr int DV = accumulators_per_row(RR);
  int64_t d = 0;
  for (; d + DV * Vec::W <= HD; d += DV * Vec::W) block_values_part<E, RR, DV>(acc, HD, P, BSP, alpha, vb, n, d);
  for (; d < HD; d += Vec::W) block_values_part<E, RR, 1>(acc, HD, P, BSP, alpha, vb, n, d);
}

// Runs CALL(RR) for each register tile [r0, r0 + RR) of up to MAXR rows covering [0, R) (RR a constant).
#define QS_ATTN_FOR_ROW_TILES(R, MAXR, CALL)                             \
  for (int64_t r0 = 0; r0 < (R); r0 += (MAXR)) {                         \
    switch (min_i64((MAXR), (R) - r0)) {                                 \
      case 1: CALL(1); break;                                            \
      case 2: if constexpr ((MAXR) >= 2) { CALL(2); } break;             \
      case 3: if constexpr ((MAXR) >= 3) { CALL(3); } break;             \
      case 4: if constexpr ((MAXR) >= 4) { CALL(4); } break;             \
      case 5: if constexpr ((MAXR) >= 5) { CALL(5); } break;             \
      case 6: if constexpr ((MAXR) >= 6) { CALL(6); } break;             \
      case 7: if constexpr ((MAXR) >= 7) { CALL(7); } break;             \
      default: if constexpr ((MAXR) >= 8) { CALL(8); } break;            \
    }                                                                    \
  }

// Online softmax over one block: per row, the running max m and sum l are updated, the block's scores become
// probabilities (relative to the new max) and alpha is the factor the row's accumulator must be scaled by.
// alpha = 2^(m_old - m_new) for all rows at once, with the vector exp2 (a libm call per row and block cost as
// much as the block's dot products at decode).
inline void block_softmax(float* S, int64_t BSP, int64_t n, int64_t R, float* m, float* l, float* alpha,
                          float* block_sum) {
  for (int64_t r = 0; r < R; ++r) {
    float* s = S + r * BSP;
    typename Vec::R mx = Vec::set1(-__builtin_inff());
    for (int64_t c = 0; c < n; c += Vec::W) mx = Vec::max(mx, Vec::load(s + c));
    const float block_max = Vec::reduce_max(mx);
    if (block_max == -__builtin_inff()) {   // every key of the block is in this row's future
      alpha[r] = 0.0f;                      // exponent: the factor is 1
      block_sum[r] = 0.0f;
      for (int64_t c = 0; c < n; c += Vec::W) Vec::store(s + c, Vec::zero());
      continue;
    }
    const float new_max = max_f(m[r], block_max);
    alpha[r] = m[r] - new_max;   // -inf on the first block: the factor is 0
    m[r] = new_max;
    const typename Vec::R vm = Vec::set1(new_max);
    typename Vec::R sum = Vec::zero();
    for (int64_t c = 0; c < n; c += Vec::W) {
      const typename Vec::R e = Vec::exp2(Vec::sub(Vec::load(s + c), vm));
      Vec::store(s + c, e);
      sum = Vec::add(sum, e);
    }
    block_sum[r] = Vec::reduce_add(sum);
  }
  // alpha, l and block_sum have room for R rounded up to the vector width.
  for (int64_t r = 0; r < R; r += Vec::W) Vec::store(alpha + r, Vec::exp2(Vec::load(alpha + r)));
  for (int64_t r = 0; r < R; ++r) l[r] = l[r] * alpha[r] + block_sum[r];
}

// S[r, c] *= scale[c] for the block's n keys (int8: the keys' scales on the scores, the values' on the
// probabilities). The scales lie in the cache after the elements, not necessarily 4-byte aligned.
inline void scale_columns(float* S, int64_t BSP, int64_t R, int64_t n, const char* scales) {
  for (int64_t c = 0; c < n; ++c) {
    float sc;
    __builtin_memcpy(&sc, scales + c * int64_t(sizeof(float)), sizeof sc);
    for (int64_t r = 0; r < R; ++r) S[r * BSP + c] *= sc;
  }
}

// Folds one row's softmax state over a key chunk (m, l, a) into its running state (M, L, O): the same
// arithmetic for an item that runs several chunks and for merge_partials, so a row's bits do not depend on
// which of the two combined its chunks. Of the two factors one is exactly 1 (the state with the larger max).
inline void fold_row(float& M, float& L, float* O, float m, float l, const float* a, int64_t HD) {
  if (m == -__builtin_inff()) return;   // the row sees no key of the chunk
  if (M == -__builtin_inff()) {         // the first chunk the row sees: its state as it is
    M = m;
    L = l;
    for (int64_t d = 0; d < HD; d += Vec::W) Vec::store(O + d, Vec::load(a + d));
    return;
  }
  if (m > M) {
    const float w = __builtin_exp2f(M - m);
    const typename Vec::R vw = Vec::set1(w);
    for (int64_t d = 0; d < HD; d += Vec::W) Vec::store(O + d, Vec::fmadd(Vec::load(O + d), vw, Vec::load(a + d)));
    L = __builtin_fmaf(L, w, l);
    M = m;
  } else {
    const float w = __builtin_exp2f(m - M);
    const typename Vec::R vw = Vec::set1(w);
    for (int64_t d = 0; d < HD; d += Vec::W) Vec::store(O + d, Vec::fmadd(Vec::load(a + d), vw, Vec::load(O + d)));
    L = __builtin_fmaf(l, w, L);
  }
}

template <class E>
void run_item(const AttentionPlan& p, const AttentionWorkItem& it, float* scratch) {
  const int64_t HD = p.HD, BS = p.BS, G = p.NH / p.NKV, MR = p.max_rows, CK = p.key_chunk;
  const int64_t BSP = (BS + Vec::W - 1) / Vec::W * Vec::W;
  const int64_t R = int64_t(it.num_tokens) * G;
  const int64_t MRV = (MR + 15) / 16 * 16;   // MR rounded up to any vector width
  float* qs = scratch;            // (MR, HD) queries times log2(e)/sqrt(HD)
  float* acc = qs + MR * HD;      // (MR, HD) the current key chunk's weighted sum of values
  float* O = acc + MR * HD;       // (MR, HD) the chunks before it, folded
  float* S = O + MR * HD;         // (MR, BSP) scores, then probabilities
  float* m = S + MR * BSP;        // (MRV) the current chunk's running max (base 2) ...
  float* l = m + MRV;             // (MRV) ... and sum of probabilities
  float* M = l + MRV;             // (MRV) the folded chunks' max ...
  float* L = M + MRV;             // (MRV) ... and sum
  float* alpha = L + MRV;         // (MRV)
  float* block_sum = alpha + MRV; // (MRV)
  int32_t* limit = reinterpret_cast<int32_t*>(block_sum + MRV);   // (MRV) keys of the block each row sees
  int32_t* qpos = limit + MRV;    // (MRV)
  int32_t* lower = qpos + MRV;    // (MRV) keys of the block before each row's window

  const int64_t row = (p.NH + 2 * p.NKV) * HD;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = it.first_token + r / G, h = int64_t(it.kv_head) * G + r % G;
    const float* q = p.qkv + t * row + h * HD;
    for (int64_t d = 0; d < HD; ++d) qs[r * HD + d] = q[d] * p.scale_log2;
    if (p.rotated_heads) hadamard_rotate(qs + r * HD, HD);   // as the keys were (attention_paged.h)
    M[r] = -__builtin_inff();
    L[r] = 0.0f;
    qpos[r] = p.positions[t];
  }
  auto start_chunk = [&] {
    for (int64_t r = 0; r < R; ++r) {
      m[r] = -__builtin_inff();
      l[r] = 0.0f;
      for (int64_t d = 0; d < HD; ++d) acc[r * HD + d] = 0.0f;
    }
  };
  auto end_chunk = [&] {
    for (int64_t r = 0; r < R; ++r) fold_row(M[r], L[r], O + r * HD, m[r], l[r], acc + r * HD, HD);
  };

  const int32_t* table = p.block_tables[it.seq];
  const E* k_pool = static_cast<const E*>(p.k_pool);
  const E* v_pool = static_cast<const E*>(p.v_pool);
  const int64_t head_elems = HD * BS, block_elems = p.block_stride;
  start_chunk();
  for (int64_t key0 = it.key_begin; key0 < it.key_end; key0 += BS) {
    if (key0 > it.key_begin && key0 % CK == 0) {   // a chunk ends: its softmax restarts from nothing
      end_chunk();
      start_chunk();
    }
    const int64_t block = table[key0 / BS];   // the one block-table lookup per block
    const int64_t n = min_i64(BS, it.key_end - key0);
    const E* kb = k_pool + block * block_elems + it.kv_head * head_elems;
    const E* vb = v_pool + block * block_elems + it.kv_head * head_elems;
    if (key0 + BS < it.key_end) {   // blocks need not be adjacent: ask for the next one while this one computes
      const int64_t next = table[(key0 + BS) / BS];
      const char* nk = reinterpret_cast<const char*>(k_pool + next * block_elems + it.kv_head * head_elems);
      const char* nv = reinterpret_cast<const char*>(v_pool + next * block_elems + it.kv_head * head_elems);
      for (int64_t b = 0; b < head_elems * int64_t(sizeof(E)); b += 64) {
        __builtin_prefetch(nk + b);
        __builtin_prefetch(nv + b);
      }
    }
    for (int64_t r = 0; r < R; ++r) limit[r] = int32_t(max_i64(0, min_i64(int64_t(qpos[r]) + 1 - key0, n)));

#define QS_ATTN_SCORES(RRV) block_scores<E, RRV>(S + r0 * BSP, BSP, qs + r0 * HD, HD, kb, BS, n, limit + r0)
    QS_ATTN_FOR_ROW_TILES(R, Vec::kScoreRows, QS_ATTN_SCORES)
#undef QS_ATTN_SCORES
    // int8: the block's NKV heads' scales follow its NKV x HD x BS elements; a scale is > 0, so a masked -inf
    // stays -inf.
    const int64_t scales_at = p.NKV * head_elems + int64_t(it.kv_head) * BS * int64_t(sizeof(float));
    if constexpr (ScaledElement<E>::value) {
      scale_columns(S, BSP, R, n, reinterpret_cast<const char*>(k_pool + block * block_elems) + scales_at);
    }
    if (p.window > 0) {   // sliding window: the block's keys before each row's window are masked too
      for (int64_t r = 0; r < R; ++r) {
        lower[r] = int32_t(max_i64(0, min_i64(int64_t(qpos[r]) + 1 - p.window - key0, n)));
        for (int64_t c = 0; c < lower[r]; ++c) S[r * BSP + c] = -__builtin_inff();
      }
    }
    block_softmax(S, BSP, n, R, m, l, alpha, block_sum);
    if constexpr (ScaledElement<E>::value) {   // after l has summed the probabilities themselves
      scale_columns(S, BSP, R, n, reinterpret_cast<const char*>(v_pool + block * block_elems) + scales_at);
    }
#define QS_ATTN_VALUES(RRV) block_values<E, RRV>(acc + r0 * HD, HD, S + r0 * BSP, BSP, alpha + r0, vb, n)
    QS_ATTN_FOR_ROW_TILES(R, Vec::kMaxRows, QS_ATTN_VALUES)
#undef QS_ATTN_VALUES
  }
  end_chunk();

  if (it.partial < 0) {
    for (int64_t r = 0; r < R; ++r) {
      const int64_t t = it.first_token + r / G, h = int64_t(it.kv_head) * G + r % G;
      float* o = p.out + t * p.NH * HD + h * HD;
      const float inv = 1.0f / L[r];
      for (int64_t d = 0; d < HD; ++d) o[d] = O[r * HD + d] * inv;
    }
    return;
  }
  float* slot = p.partials + int64_t(it.partial) * attention_partial_floats(MR, HD);
  for (int64_t r = 0; r < R; ++r) {
    slot[r] = M[r];
    slot[MR + r] = L[r];
    for (int64_t d = 0; d < HD; ++d) slot[2 * MR + r * HD + d] = O[r * HD + d];
  }
}

// Folds a split tile's partial states (one per key chunk, in key order) as run_item folds its chunks, then
// out = O / L. The fold runs in the output rows; M and L in the thread's scratch.
inline void merge_partials(const AttentionPlan& p, const AttentionMerge& mg, float* scratch) {
  const int64_t HD = p.HD, G = p.NH / p.NKV, MR = p.max_rows, PF = attention_partial_floats(MR, HD);
  const int64_t R = int64_t(mg.num_tokens) * G;
  float* M = scratch;   // (MR)
  float* L = M + MR;    // (MR)
  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = mg.first_token + r / G, h = int64_t(mg.kv_head) * G + r % G;
    float* o = p.out + t * p.NH * HD + h * HD;
    M[r] = -__builtin_inff();
    L[r] = 0.0f;
    for (int32_t i = 0; i < mg.num_partials; ++i) {
      const float* slot = p.partials + (mg.first_partial + i) * PF;
      fold_row(M[r], L[r], o, slot[r], slot[MR + r], slot + 2 * MR + r * HD, HD);
    }
    const float inv = 1.0f / L[r];
    for (int64_t d = 0; d < HD; ++d) o[d] *= inv;
  }
}

template <class E>
void run_plan(const AttentionPlan& p) {
#pragma omp parallel num_threads(p.threads)
  {
    float* scratch = p.scratch + int64_t(omp_get_thread_num()) * p.scratch_floats;
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < p.num_items; ++i) run_item<E>(p, p.items[i], scratch);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < p.num_merges; ++i) merge_partials(p, p.merges[i], scratch);
  }
}

inline void run(const AttentionPlan& p) {
  switch (p.kv_dtype) {
    case DType::F16: run_plan<uint16_t>(p); break;
    case DType::BF16: run_plan<Bf16>(p); break;
    case DType::I8: run_plan<int8_t>(p); break;
    default: run_plan<float>(p); break;
  }
}

#undef QS_ATTN_FOR_ROW_TILES

}  // namespace qs::cpu::QS_ATTN_NAMESPACE
