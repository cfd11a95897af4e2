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
// BSP = BS rounded up to the vector width (a row's scores in scratch), E = the cache's element type.

inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max_i64(int64_t a, int64_t b) { return a > b ? a : b; }
inline float max_f(float a, float b) { return a > b ? a : b; }

// Independent accumulators per row: enough of them to hide the FMA latency, few enough to stay in registers.
constexpr int accumulators_per_row(int rows) {
  const int u = Vec::kAccumulators / rows;
  return u < 1 ? 1 : (u > 4 ? 4 : u);
}

// S[rr, c] = q_rr . k_c (q pre-scaled) for the block's keys; lanes at or past each row's limit are -inf (causal
// mask and the end of the key range).
template <class E, int RR>
inline void block_scores(float* S, int64_t BSP, const float* qs, int64_t HD, const E* kb, int64_t BS, int64_t n,
                         const int32_t* limit) {
  constexpr int U = accumulators_per_row(RR);
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

// Runs CALL(RR) for each register tile [r0, r0 + RR) of up to kMaxRows rows covering [0, R) (RR a constant).
#define QS_ATTN_FOR_ROW_TILES(R, CALL)                                   \
  for (int64_t r0 = 0; r0 < (R); r0 += Vec::kMaxRows) {                  \
    switch (min_i64(Vec::kMaxRows, (R) - r0)) {                          \
      case 1: CALL(1); break;                                            \
      case 2: CALL(2); break;                                            \
      case 3: CALL(3); break;                                            \
      case 4: CALL(4); break;                                            \
      case 5: if constexpr (Vec::kMaxRows >= 5) { CALL(5); } break;      \
      case 6: if constexpr (Vec::kMaxRows >= 6) { CALL(6); } break;      \
      case 7: if constexpr (Vec::kMaxRows >= 7) { CALL(7); } break;      \
      default: if constexpr (Vec::kMaxRows >= 8) { CALL(8); } break;     \
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

template <class E>
void run_item(const AttentionPlan& p, const AttentionWorkItem& it, float* scratch) {
  const int64_t HD = p.HD, BS = p.BS, G = p.NH / p.NKV, MR = p.max_rows;
  const int64_t BSP = (BS + Vec::W - 1) / Vec::W * Vec::W;
  const int64_t R = int64_t(it.num_tokens) * G;
  const int64_t MRV = (MR + 15) / 16 * 16;   // MR rounded up to any vector width
  float* qs = scratch;            // (MR, HD) queries times log2(e)/sqrt(HD)
  float* acc = qs + MR * HD;      // (MR, HD)
  float* S = acc + MR * HD;       // (MR, BSP) scores, then probabilities
  float* m = S + MR * BSP;        // (MRV)
  float* l = m + MRV;             // (MRV)
  float* alpha = l + MRV;         // (MRV)
  float* block_sum = alpha + MRV; // (MRV)
  int32_t* limit = reinterpret_cast<int32_t*>(block_sum + MRV);   // (MRV) keys of the block each row sees
  int32_t* qpos = limit + MRV;    // (MRV)
  int32_t* lower = qpos + MRV;    // (MRV) keys of the block before each row's window

  const int64_t row = (p.NH + 2 * p.NKV) * HD;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = it.first_token + r / G, h = int64_t(it.kv_head) * G + r % G;
    const float* q = p.qkv + t * row + h * HD;
    for (int64_t d = 0; d < HD; ++d) {
      qs[r * HD + d] = q[d] * p.scale_log2;
      acc[r * HD + d] = 0.0f;
    }
    m[r] = -__builtin_inff();
    l[r] = 0.0f;
    qpos[r] = p.positions[t];
  }

  const int32_t* table = p.block_tables[it.seq];
  const E* k_pool = static_cast<const E*>(p.k_pool);
  const E* v_pool = static_cast<const E*>(p.v_pool);
  const int64_t head_elems = HD * BS, block_elems = p.block_stride;
  for (int64_t key0 = it.key_begin; key0 < it.key_end; key0 += BS) {
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
    QS_ATTN_FOR_ROW_TILES(R, QS_ATTN_SCORES)
#undef QS_ATTN_SCORES
    if (p.window > 0) {   // sliding window: the block's keys before each row's window are masked too
      for (int64_t r = 0; r < R; ++r) {
        lower[r] = int32_t(max_i64(0, min_i64(int64_t(qpos[r]) + 1 - p.window - key0, n)));
        for (int64_t c = 0; c < lower[r]; ++c) S[r * BSP + c] = -__builtin_inff();
      }
    }
    block_softmax(S, BSP, n, R, m, l, alpha, block_sum);
#define QS_ATTN_VALUES(RRV) block_values<E, RRV>(acc + r0 * HD, HD, S + r0 * BSP, BSP, alpha + r0, vb, n)
    QS_ATTN_FOR_ROW_TILES(R, QS_ATTN_VALUES)
#undef QS_ATTN_VALUES
  }

  if (it.partial < 0) {
    for (int64_t r = 0; r < R; ++r) {
      const int64_t t = it.first_token + r / G, h = int64_t(it.kv_head) * G + r % G;
      float* o = p.out + t * p.NH * HD + h * HD;
      const float inv = 1.0f / l[r];
      for (int64_t d = 0; d < HD; ++d) o[d] = acc[r * HD + d] * inv;
    }
    return;
  }
  float* slot = p.partials + int64_t(it.partial) * attention_partial_floats(MR, HD);
  for (int64_t r = 0; r < R; ++r) {
    slot[r] = m[r];
    slot[MR + r] = l[r];
    for (int64_t d = 0; d < HD; ++d) slot[2 * MR + r * HD + d] = acc[r * HD + d];
  }
}

// Combines a split tile's partial (m, l, acc) triples: out = sum_i 2^(m_i - M) acc_i / sum_i 2^(m_i - M) l_i.
inline void merge_partials(const AttentionPlan& p, const AttentionMerge& mg) {
  const int64_t HD = p.HD, G = p.NH / p.NKV, MR = p.max_rows, PF = attention_partial_floats(MR, HD);
  const int64_t R = int64_t(mg.num_tokens) * G;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = mg.first_token + r / G, h = int64_t(mg.kv_head) * G + r % G;
    float* o = p.out + t * p.NH * HD + h * HD;
    float M = -__builtin_inff();
    for (int32_t i = 0; i < mg.num_partials; ++i) M = max_f(M, p.partials[(mg.first_partial + i) * PF + r]);
    for (int64_t d = 0; d < HD; ++d) o[d] = 0.0f;
    float L = 0.0f;
    for (int32_t i = 0; i < mg.num_partials; ++i) {
      const float* slot = p.partials + (mg.first_partial + i) * PF;
      if (slot[r] == -__builtin_inff()) continue;   // a key range wholly in this row's future
      const float w = __builtin_exp2f(slot[r] - M);
      L += w * slot[MR + r];
      const float* a = slot + 2 * MR + r * HD;
      for (int64_t d = 0; d < HD; ++d) o[d] += w * a[d];
    }
    const float inv = 1.0f / L;
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
    for (int64_t i = 0; i < p.num_merges; ++i) merge_partials(p, p.merges[i]);
  }
}

inline void run(const AttentionPlan& p) {
  if (p.kv_f16) {
    run_plan<uint16_t>(p);
  } else {
    run_plan<float>(p);
  }
}

#undef QS_ATTN_FOR_ROW_TILES

}  // namespace qs::cpu::QS_ATTN_NAMESPACE
