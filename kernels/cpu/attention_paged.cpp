// The fast paged attention (see attention_paged.h): writes the new K/V, plans the work (tiles, key splits,
// scratch) and runs the best kernel this CPU has; also the one-lane kernel, for any head dim.
#include "kernels/cpu/attention_paged.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/error.h"

namespace qs::cpu::attention_scalar_impl {

struct Vec {
  using R = float;
  static constexpr int W = 1;
  static constexpr int kAccumulators = 4;
  static constexpr int kMaxRows = 4;
  // Partial sums of each dot product and rows of a register tile of scores: fixed, whatever the tile's rows, so
  // that a row's bits never depend on them (attention_paged_kernel.h).
  static constexpr int kScoreAccumulators = 1;
  static constexpr int kScoreRows = 4;
  static R zero() { return 0.0f; }
  static R set1(float x) { return x; }
  static R load(const float* p) { return *p; }
  static R load(const uint16_t* p) { return _cvtsh_ss(*p); }
  static R load(const Bf16* p) { return bf16_to_f32(p->bits); }
  static R load(const int8_t* p) { return float(*p); }
  template <class E>
  static R load_partial(const E* p, int64_t) { return load(p); }
  static void store(float* p, R v) { *p = v; }
  static R add(R a, R b) { return a + b; }
  static R sub(R a, R b) { return a - b; }
  static R mul(R a, R b) { return a * b; }
  static R max(R a, R b) { return a > b ? a : b; }
  static R fmadd(R a, R b, R c) { return __builtin_fmaf(a, b, c); }   // one rounding, as the vector FMAs
  static float reduce_max(R v) { return v; }
  static float reduce_add(R v) { return v; }
  static R keep_first(R v, int64_t k, float fill) { return k >= 1 ? v : fill; }
  static R exp2(R x) { return x < -126.0f ? 0.0f : std::exp2(x); }
};

}  // namespace qs::cpu::attention_scalar_impl

#define QS_ATTN_NAMESPACE attention_scalar_impl
#include "kernels/cpu/attention_paged_kernel.h"

namespace qs::cpu {

void attention_run_scalar(const AttentionPlan& plan) { attention_scalar_impl::run(plan); }

namespace {

// Rows of a query tile: a prefill tile of 32 / G tokens reuses each K/V block it loads for 32 query rows.
constexpr int64_t kTileRows = 32;
// Split keys when (sequence, KV head, tile) gives fewer than this many pieces per thread, into key chunks.
constexpr int64_t kItemsPerThread = 4;
// Keys of a key chunk (before rounding to whole blocks): long enough that a chunk's fixed cost (its queries, the
// fold of its state) is small beside its keys' work, short enough that a decode at a few hundred tokens of
// context still splits among threads.
constexpr int64_t kKeyChunkKeys = 256;

// Heads up to this size are rotated in a stack buffer (Gemma 3's 256 and every head size seen is below it).
constexpr int64_t kMaxRotatedHead = 1024;

inline uint16_t to_f16(float x) { return uint16_t(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT)); }

inline void store_element(float* p, float x) { *p = x; }
inline void store_element(uint16_t* p, float x) { *p = to_f16(x); }
inline void store_element(Bf16* p, float x) { p->bits = f32_to_bf16(x); }

// K (num_blocks, [block_stride: NKV, HD, BS]), V (num_blocks, [block_stride: NKV, BS, HD]); int8: each followed
// by its scales (NKV, BS).
template <class E>
void write_kv(E* k_pool, E* v_pool, const float* qkv, const BatchLayout& batch, int64_t BS, int64_t NH, int64_t NKV,
              int64_t HD, int64_t block_stride) {
  const int64_t T = batch.num_tokens(), row = (NH + 2 * NKV) * HD;
  [[maybe_unused]] const bool rotate = std::is_same_v<E, int8_t> && kv_int8_rotates(HD);
#pragma omp parallel for schedule(static) if (T >= 64)
  for (int64_t t = 0; t < T; ++t) {
    const int64_t pos = batch.positions[size_t(t)];
    const int64_t block = batch.block_tables[size_t(batch.seq_of_token[size_t(t)])][size_t(pos / BS)];
    const int64_t offset = pos % BS;
    const float* k = qkv + t * row + NH * HD;
    const float* v = k + NKV * HD;
    for (int64_t h = 0; h < NKV; ++h) {
      E* kd = k_pool + block * block_stride + (h * HD) * BS + offset;
      E* vd = v_pool + block * block_stride + (h * BS + offset) * HD;
      if constexpr (std::is_same_v<E, int8_t>) {
        // The scales of the block's heads follow its NKV x HD x BS elements (attention_paged.h); the heads are
        // rotated first where HD allows.
        const size_t scale_at = size_t(NKV * HD * BS) + sizeof(float) * size_t(h * BS + offset);
        float kr[kMaxRotatedHead], vr[kMaxRotatedHead];
        const float* kh = k + h * HD;
        const float* vh = v + h * HD;
        if (rotate) {
          std::memcpy(kr, kh, sizeof(float) * size_t(HD));
          std::memcpy(vr, vh, sizeof(float) * size_t(HD));
          hadamard_rotate(kr, HD);
          hadamard_rotate(vr, HD);
          kh = kr;
          vh = vr;
        }
        const float ks = quantize_kv_int8(kh, HD, kd, BS), vs = quantize_kv_int8(vh, HD, vd, 1);
        std::memcpy(k_pool + block * block_stride + scale_at, &ks, sizeof ks);
        std::memcpy(v_pool + block * block_stride + scale_at, &vs, sizeof vs);
      } else {
        for (int64_t d = 0; d < HD; ++d) store_element(kd + d * BS, k[h * HD + d]);
        int64_t d = 0;
        if constexpr (std::is_same_v<E, uint16_t>) {
          for (; d + 8 <= HD; d += 8) {
            _mm_storeu_si128(reinterpret_cast<__m128i*>(vd + d),
                             _mm256_cvtps_ph(_mm256_loadu_ps(v + h * HD + d), _MM_FROUND_TO_NEAREST_INT));
          }
        }
        for (; d < HD; ++d) store_element(vd + d, v[h * HD + d]);
      }
    }
  }
}

struct Tile {
  int32_t seq, first_token, num_tokens, key_begin, key_end;   // key_begin a multiple of BS
};

// Reused between calls (one forward pass runs attention once per layer): no allocation per call.
struct Workspace {
  std::vector<Tile> tiles;
  std::vector<AttentionWorkItem> items;
  std::vector<AttentionMerge> merges;
  std::vector<const int32_t*> tables;
  std::vector<float> partials, scratch;
};

AttentionIsa resolve(AttentionIsa isa, int64_t HD) {
  if (isa != AttentionIsa::kAuto) {
    QS_CHECK(attention_isa_available(isa), ErrorCode::kUnsupported, "attention kernel ", attention_isa_name(isa),
             " is not available on this CPU");
    QS_CHECK(isa != AttentionIsa::kAvx512 || HD % 16 == 0, ErrorCode::kUnsupported,
             "the AVX-512 attention needs a head dim that is a multiple of 16, got ", HD);
    QS_CHECK(isa != AttentionIsa::kAvx2 || HD % 8 == 0, ErrorCode::kUnsupported,
             "the AVX2 attention needs a head dim that is a multiple of 8, got ", HD);
    return isa;
  }
  if (HD % 16 == 0 && attention_isa_available(AttentionIsa::kAvx512)) return AttentionIsa::kAvx512;
  if (HD % 8 == 0 && attention_isa_available(AttentionIsa::kAvx2)) return AttentionIsa::kAvx2;
  return AttentionIsa::kScalar;
}

}  // namespace

bool attention_reads_kv_dtype(DType dtype) {
  return dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16 || dtype == DType::I8;
}

bool kv_int8_rotates(int64_t head_dim) {
  return head_dim >= 2 && head_dim <= kMaxRotatedHead && (head_dim & (head_dim - 1)) == 0;
}

void hadamard_rotate(float* x, int64_t n) {
  for (int64_t len = 1; len < n; len *= 2) {   // the fast transform: log2(n) passes of butterflies
    for (int64_t i = 0; i < n; i += 2 * len) {
      for (int64_t j = i; j < i + len; ++j) {
        const float a = x[j], b = x[j + len];
        x[j] = a + b;
        x[j + len] = a - b;
      }
    }
  }
  const float norm = float(1.0 / std::sqrt(double(n)));
  for (int64_t i = 0; i < n; ++i) x[i] *= norm;
}

float quantize_kv_int8(const float* x, int64_t n, int8_t* q, int64_t stride) {
  float max_abs = 0.0f;
  for (int64_t i = 0; i < n; ++i) max_abs = std::max(max_abs, std::fabs(x[i]));
  const float scale = max_abs > 0.0f ? max_abs / 127.0f : 1.0f, inv = 1.0f / scale;
  for (int64_t i = 0; i < n; ++i) {
    q[i * stride] = int8_t(std::clamp(std::nearbyint(x[i] * inv), -127.0f, 127.0f));
  }
  return scale;
}

bool attention_isa_available(AttentionIsa isa) {
  switch (isa) {
    case AttentionIsa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl");
    case AttentionIsa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default:
      return true;
  }
}

const char* attention_isa_name(AttentionIsa isa) {
  switch (isa) {
    case AttentionIsa::kAvx512: return "avx512";
    case AttentionIsa::kAvx2: return "avx2";
    case AttentionIsa::kScalar: return "scalar";
    default: return "auto";
  }
}

int64_t attention_key_chunk(int64_t BS) { return (kKeyChunkKeys + BS - 1) / BS * BS; }

int64_t attention_partial_floats(int64_t max_rows, int64_t HD) { return max_rows * (HD + 2); }

int64_t attention_scratch_floats(int64_t max_rows, int64_t HD, int64_t BS) {
  const int64_t bsp = (BS + 15) / 16 * 16, rows = (max_rows + 15) / 16 * 16;
  // qs, acc, O, S; m, l, M, L, alpha, block_sum, limit, qpos, lower
  const int64_t n = max_rows * (3 * HD + bsp) + rows * 9;
  return (n + 15) / 16 * 16 + 16;                           // keep each thread's scratch on its own cache lines
}

void attention_paged_forward(float* out, const float* qkv, void* k_pool, void* v_pool, DType kv_dtype,
                             const BatchLayout& batch, int64_t BS, int64_t NH, int64_t NKV, int64_t HD,
                             int64_t block_stride, AttentionIsa isa, int64_t window) {
  if (block_stride <= 0) {   // one layer's K (or V) per block: its elements, and int8's scales
    block_stride = int64_t(size_t(NKV * BS) * kv_head_bytes(kv_dtype, HD) / dtype_bytes(kv_dtype, 1));
  }
  QS_CHECK(NKV > 0 && NH % NKV == 0 && HD > 0 && BS > 0, ErrorCode::kInternal, "attention: ", NH,
           " query heads are not a multiple of ", NKV, " KV heads (head dim ", HD, ", block size ", BS, ")");
  QS_CHECK(attention_reads_kv_dtype(kv_dtype), ErrorCode::kUnsupported,
           "the CPU attention reads an fp32, fp16, bf16 or int8 KV cache, not ", dtype_name(kv_dtype));
  const int64_t T = batch.num_tokens();
  if (T == 0) return;
  const int64_t S = int64_t(batch.block_tables.size());
  for (int64_t t = 0; t < T; ++t) {
    const int64_t s = batch.seq_of_token[size_t(t)], pos = batch.positions[size_t(t)];
    QS_CHECK(s >= 0 && s < S && pos >= 0 && pos / BS < int64_t(batch.block_tables[size_t(s)].size()),
             ErrorCode::kInternal, "attention: token ", t, " at position ", pos, " of sequence ", s,
             " has no KV block");
  }
  auto write = [&](auto* element_type) {
    using E = std::remove_pointer_t<decltype(element_type)>;
    write_kv(static_cast<E*>(k_pool), static_cast<E*>(v_pool), qkv, batch, BS, NH, NKV, HD, block_stride);
  };
  switch (kv_dtype) {
    case DType::F16: write(static_cast<uint16_t*>(nullptr)); break;
    case DType::BF16: write(static_cast<Bf16*>(nullptr)); break;
    case DType::I8: write(static_cast<int8_t*>(nullptr)); break;
    default: write(static_cast<float*>(nullptr)); break;
  }

  static thread_local Workspace ws;
  const int64_t G = NH / NKV;
  const int64_t tile_tokens = std::max<int64_t>(1, kTileRows / G);
  ws.tiles.clear();
  for (int64_t t = 0; t < T;) {
    const int32_t seq = batch.seq_of_token[size_t(t)];
    int64_t end = t;
    while (end < T && batch.seq_of_token[size_t(end)] == seq) ++end;
    for (int64_t a = t; a < end; a += tile_tokens) {
      const int64_t n = std::min(tile_tokens, end - a);
      int32_t last = 0, first = INT32_MAX;
      for (int64_t i = a; i < a + n; ++i) {
        last = std::max(last, batch.positions[size_t(i)]);
        first = std::min(first, batch.positions[size_t(i)]);
      }
      // With a window, the blocks before the earliest query's window hold no key any row of the tile sees.
      const int64_t key_begin = window > 0 ? std::max<int64_t>(0, first + 1 - window) / BS * BS : 0;
      ws.tiles.push_back(Tile{seq, int32_t(a), int32_t(n), int32_t(key_begin), last + 1});
    }
    t = end;
  }

  // How the keys are split changes only which thread does what: a tile's rows give the same bits either way.
  const int64_t CK = attention_key_chunk(BS);
  const int threads = std::max(1, omp_get_max_threads());
  const bool split = threads > 1 && int64_t(ws.tiles.size()) * NKV < kItemsPerThread * threads;
  ws.items.clear();
  ws.merges.clear();
  int32_t partials = 0;
  int64_t max_rows = 0;
  // Latest tiles first: in a prefill they see the most keys, and dynamic scheduling balances best big-first.
  for (auto tile = ws.tiles.rbegin(); tile != ws.tiles.rend(); ++tile) {
    max_rows = std::max(max_rows, int64_t(tile->num_tokens) * G);
    const int64_t first_chunk = tile->key_begin / CK, chunks = (tile->key_end - 1) / CK + 1 - first_chunk;
    for (int64_t h = 0; h < NKV; ++h) {
      AttentionWorkItem item{tile->seq, int32_t(h), tile->first_token, tile->num_tokens, tile->key_begin,
                             tile->key_end, -1};
      if (!split || chunks <= 1) {
        ws.items.push_back(item);
        continue;
      }
      AttentionMerge merge{int32_t(h), tile->first_token, tile->num_tokens, partials, 0};
      for (int64_t k = first_chunk; k < first_chunk + chunks; ++k) {
        item.key_begin = int32_t(std::max<int64_t>(tile->key_begin, k * CK));
        item.key_end = int32_t(std::min<int64_t>(tile->key_end, (k + 1) * CK));
        item.partial = partials++;
        ++merge.num_partials;
        ws.items.push_back(item);
      }
      ws.merges.push_back(merge);
    }
  }

  ws.tables.resize(size_t(S));
  for (int64_t s = 0; s < S; ++s) ws.tables[size_t(s)] = batch.block_tables[size_t(s)].data();
  AttentionPlan plan;
  plan.out = out;
  plan.qkv = qkv;
  plan.k_pool = k_pool;
  plan.v_pool = v_pool;
  plan.kv_dtype = kv_dtype;
  plan.rotated_heads = kv_dtype == DType::I8 && kv_int8_rotates(HD);
  plan.block_tables = ws.tables.data();
  plan.positions = batch.positions.data();
  plan.BS = BS;
  plan.NH = NH;
  plan.NKV = NKV;
  plan.HD = HD;
  plan.block_stride = block_stride;
  plan.scale_log2 = float(1.4426950408889634 / std::sqrt(double(HD)));
  plan.window = window;
  plan.key_chunk = CK;
  plan.items = ws.items.data();
  plan.num_items = int64_t(ws.items.size());
  plan.merges = ws.merges.data();
  plan.num_merges = int64_t(ws.merges.size());
  plan.max_rows = max_rows;
  plan.threads = int(std::min<int64_t>(threads, plan.num_items));
  ws.partials.resize(size_t(int64_t(partials) * attention_partial_floats(max_rows, HD)));
  plan.partials = ws.partials.data();
  plan.scratch_floats = attention_scratch_floats(max_rows, HD, BS);
  ws.scratch.resize(size_t(plan.scratch_floats * plan.threads));
  plan.scratch = ws.scratch.data();
  switch (resolve(isa, HD)) {
    case AttentionIsa::kAvx512: attention_run_avx512(plan); break;
    case AttentionIsa::kAvx2: attention_run_avx2(plan); break;
    default: attention_run_scalar(plan); break;
  }
  if (plan.rotated_heads) {   // each output head is a mix of rotated values: rotate it back
    for (int64_t i = 0; i < T * NH; ++i) hadamard_rotate(out + i * HD, HD);
  }
}

}  // namespace qs::cpu
