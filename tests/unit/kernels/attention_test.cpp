// The fast paged attention (kernels/cpu/attention_paged.h) against the reference attention_forward of
// cpu_ops.h: every ISA this CPU has, fp32 and fp16 caches, GQA and MHA, head dims 64 and 128, contexts 1 to
// 4,096, batches that mix prefill chunks and decode tokens, key-range splits, sliding windows; and that the
// result for a position is the same bits whatever the pass around it (batch invariance).
//
// Tolerances: an fp32 cache must agree with the reference to 2e-5 + 1e-4 |ref| (the two differ only in the
// order of sums and in exp2 by polynomial, relative error < 2e-7). An fp16, bf16 or int8 cache is compared with
// the reference run on the same K/V rounded as the cache stores them (int8: quantize_kv_int8 per token and head,
// of the head rotated by hadamard_rotate where HD is a power of two),
// to the same bound; and, against the unrounded reference, to what the rounding allows (unrounded_bound): fp16
// keeps 11 bits (K/V in [-2, 2] off by up to 1e-3, a convex mix of V rows by as much), bf16 8 bits (8x that:
// 1e-2), int8 a step of max|x| / 127 (up to 8e-3 here, in each of a score's 64-128 terms as well: 6e-2, where
// 2.5e-2 was seen, at a few keys of head dim 128, the sharpest softmax).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/attention_paged.h"
#include "kernels/cpu/cpu_ops.h"

namespace qs {
namespace {

// T = tokens, NH = query heads, NKV = key/value heads, HD = head dim, BS = block size, L = context.

struct AttnConfig {
  int64_t NH, NKV, HD, BS;
  DType dtype;
  cpu::AttentionIsa isa;
};

std::string config_name(const AttnConfig& c) {
  const char* dtype =
      c.dtype == DType::F16 ? "f16" : c.dtype == DType::BF16 ? "bf16" : c.dtype == DType::I8 ? "i8" : "f32";
  return std::string(cpu::attention_isa_name(c.isa)) + "_" + dtype + "_NH" +
         std::to_string(c.NH) + "_NKV" + std::to_string(c.NKV) + "_HD" + std::to_string(c.HD) + "_BS" +
         std::to_string(c.BS);
}

// How far the fast kernel over a rounded cache may be from the reference over unrounded K/V.
double unrounded_bound(DType dtype) {
  switch (dtype) {
    case DType::F16: return 4e-3;
    case DType::BF16: return 1e-2;
    case DType::I8: return 6e-2;
    default: return 2e-5;
  }
}

// One token's K (or V) of all its heads, as a cache of `dtype` gives them back.
void round_as_stored(float* x, int64_t NKV, int64_t HD, DType dtype) {
  for (int64_t h = 0; h < NKV; ++h) {
    float* head = x + h * HD;
    if (dtype == DType::I8) {   // rotated (where HD is a power of two), rounded, rotated back
      const bool rotate = cpu::kv_int8_rotates(HD);
      if (rotate) cpu::hadamard_rotate(head, HD);
      std::vector<int8_t> q(static_cast<size_t>(HD));
      const float scale = cpu::quantize_kv_int8(head, HD, q.data(), 1);
      for (int64_t d = 0; d < HD; ++d) head[d] = scale * float(q[size_t(d)]);
      if (rotate) cpu::hadamard_rotate(head, HD);
    }
    for (int64_t d = 0; d < HD; ++d) {
      if (dtype == DType::F16) head[d] = f16_to_f32(f32_to_f16(head[d]));
      if (dtype == DType::BF16) head[d] = bf16_to_f32(f32_to_bf16(head[d]));
    }
  }
}

// One sequence of the test: its qkv rows for every position and its (scattered) block table.
struct TestSeq {
  std::vector<float> qkv;       // (L, (NH + 2 NKV) HD)
  std::vector<int32_t> table;
};

struct Slice {
  int seq;
  int64_t first, count;   // positions [first, first + count) in this pass
};

class PagedAttention {
 public:
  PagedAttention(const AttnConfig& c, const std::vector<int64_t>& lens, uint32_t seed, int64_t window = 0)
      : c_(c), window_(window) {
    row_ = (c.NH + 2 * c.NKV) * c.HD;
    int64_t blocks = 0;
    for (int64_t L : lens) blocks += (L + c.BS - 1) / c.BS;
    num_blocks_ = blocks + 3;
    std::vector<int32_t> ids(static_cast<size_t>(num_blocks_));
    std::iota(ids.begin(), ids.end(), 0);
    std::mt19937 rng(seed);
    std::shuffle(ids.begin(), ids.end(), rng);   // non-contiguous, out-of-order tables
    std::uniform_real_distribution<float> u(-2.0f, 2.0f);
    size_t next = 0;
    for (int64_t L : lens) {
      TestSeq s;
      s.qkv.resize(size_t(L * row_));
      for (auto& x : s.qkv) x = u(rng);
      for (int64_t b = 0; b < (L + c.BS - 1) / c.BS; ++b) s.table.push_back(ids[next++]);
      seqs_.push_back(std::move(s));
    }
    const size_t pool = size_t(num_blocks_ * c.BS * c.NKV * c.HD);
    const size_t pool_bytes = size_t(num_blocks_ * c.BS * c.NKV) * kv_head_bytes(c.dtype, c.HD);
    fast_k_.assign(pool_bytes, 0);
    fast_v_.assign(pool_bytes, 0);
    ref_k_.assign(pool, 0.0f);
    ref_v_.assign(pool, 0.0f);
  }

  // Runs one pass through the fast kernel and checks it against the reference on up to max_checked rows (none
  // for 0). Returns the pass's output (T, NH*HD), the slices' rows one after another.
  std::vector<float> run_pass(const std::vector<Slice>& slices, int64_t max_checked, const std::string& what) {
    BatchLayout batch;
    std::vector<float> in;
    for (size_t i = 0; i < slices.size(); ++i) {
      const Slice& sl = slices[i];
      const TestSeq& s = seqs_[size_t(sl.seq)];
      for (int64_t p = sl.first; p < sl.first + sl.count; ++p) {
        batch.token_ids.push_back(0);
        batch.positions.push_back(int32_t(p));
        batch.seq_of_token.push_back(int32_t(i));
        in.insert(in.end(), s.qkv.begin() + p * row_, s.qkv.begin() + (p + 1) * row_);
      }
      batch.block_tables.push_back(s.table);
      batch.seq_lens.push_back(int32_t(sl.first + sl.count));
    }
    const int64_t T = batch.num_tokens(), C = c_.NH * c_.HD;
    std::vector<float> out(static_cast<size_t>(T * C), NAN);
    cpu::attention_paged_forward(out.data(), in.data(), fast_k_.data(), fast_v_.data(), c_.dtype, batch, c_.BS,
                                 c_.NH, c_.NKV, c_.HD, 0, c_.isa, window_);
    if (max_checked == 0) return out;

    // The reference over a subset of each slice's rows (first, last and evenly between), its cache filled with
    // the positions before the slice as the reference itself would have written them.
    for (size_t i = 0; i < slices.size(); ++i) {
      const Slice& sl = slices[i];
      const bool stored_rounded = c_.dtype != DType::F32;
      fill_reference(sl.seq, sl.first, /*round=*/stored_rounded);
      std::vector<int64_t> rows;
      const int64_t n = std::min(sl.count, max_checked);
      for (int64_t k = 0; k < n; ++k) rows.push_back(n == 1 ? sl.count - 1 : k * (sl.count - 1) / (n - 1));
      rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
      int64_t t0 = 0;
      for (size_t j = 0; j < i; ++j) t0 += slices[j].count;
      for (bool rounded : {true, false}) {
        if (!rounded && !stored_rounded) continue;
        if (!rounded) fill_reference(sl.seq, sl.first, false);
        std::vector<float> ref_out = reference(sl, rows, rounded && stored_rounded);
        const double abs = rounded ? 2e-5 : unrounded_bound(c_.dtype), rel = rounded ? 1e-4 : 0.0;
        int failures = 0;
        for (size_t r = 0; r < rows.size(); ++r) {
          for (int64_t ch = 0; ch < C; ++ch) {
            const float got = out[size_t((t0 + rows[r]) * C + ch)], want = ref_out[size_t(int64_t(r) * C + ch)];
            if (!(std::fabs(got - want) <= abs + rel * std::fabs(want)) && failures++ < 4) {
              ADD_FAILURE() << what << ": sequence " << sl.seq << " position " << sl.first + rows[r] << " channel "
                            << ch << ": " << got << " vs reference " << want << (rounded ? "" : " (unrounded K/V)");
            }
          }
        }
      }
    }
    return out;
  }

 private:
  // Writes positions [0, upto) of a sequence into the reference pools (BS, NKV, HD per block).
  void fill_reference(int seq, int64_t upto, bool round) {
    const TestSeq& s = seqs_[size_t(seq)];
    const int64_t kv_row = c_.NKV * c_.HD;
    for (int64_t p = 0; p < upto; ++p) {
      const int64_t slot = int64_t(s.table[size_t(p / c_.BS)]) * c_.BS + p % c_.BS;
      float* k = ref_k_.data() + slot * kv_row;
      float* v = ref_v_.data() + slot * kv_row;
      std::copy_n(s.qkv.begin() + p * row_ + c_.NH * c_.HD, kv_row, k);
      std::copy_n(s.qkv.begin() + p * row_ + (c_.NH + c_.NKV) * c_.HD, kv_row, v);
      if (round) {
        round_as_stored(k, c_.NKV, c_.HD, c_.dtype);
        round_as_stored(v, c_.NKV, c_.HD, c_.dtype);
      }
    }
  }

  std::vector<float> reference(const Slice& sl, const std::vector<int64_t>& rows, bool round) {
    const TestSeq& s = seqs_[size_t(sl.seq)];
    // The slice's own K/V first (the reference writes each token's K/V before any attention), then its rows.
    BatchLayout all;
    std::vector<float> in_all;
    for (int64_t p = sl.first; p < sl.first + sl.count; ++p) {
      all.token_ids.push_back(0);
      all.positions.push_back(int32_t(p));
      all.seq_of_token.push_back(0);
      const size_t at = in_all.size();
      in_all.insert(in_all.end(), s.qkv.begin() + p * row_, s.qkv.begin() + (p + 1) * row_);
      if (round) {
        round_as_stored(in_all.data() + at + c_.NH * c_.HD, c_.NKV, c_.HD, c_.dtype);
        round_as_stored(in_all.data() + at + (c_.NH + c_.NKV) * c_.HD, c_.NKV, c_.HD, c_.dtype);
      }
    }
    all.block_tables.push_back(s.table);
    BatchLayout batch;
    std::vector<float> in;
    for (int64_t r : rows) {
      batch.token_ids.push_back(0);
      batch.positions.push_back(all.positions[size_t(r)]);
      batch.seq_of_token.push_back(0);
      in.insert(in.end(), in_all.begin() + r * row_, in_all.begin() + (r + 1) * row_);
    }
    batch.block_tables.push_back(s.table);
    // The slice's K/V as the reference's own first loop writes them (running it on every row of a long prefill
    // would cost the whole quadratic reference), then the reference on the checked rows.
    const int64_t kv_row = c_.NKV * c_.HD;
    for (int64_t i = 0; i < sl.count; ++i) {
      const int64_t p = sl.first + i;
      const int64_t slot = int64_t(s.table[size_t(p / c_.BS)]) * c_.BS + p % c_.BS;
      std::copy_n(in_all.begin() + i * row_ + c_.NH * c_.HD, kv_row, ref_k_.begin() + slot * kv_row);
      std::copy_n(in_all.begin() + i * row_ + (c_.NH + c_.NKV) * c_.HD, kv_row, ref_v_.begin() + slot * kv_row);
    }
    std::vector<float> out(static_cast<size_t>(int64_t(rows.size()) * c_.NH * c_.HD));
    cpu::attention_forward(out.data(), in.data(), ref_k_.data(), ref_v_.data(), batch, c_.BS, c_.NH, c_.NKV, c_.HD,
                           window_);
    return out;
  }

  AttnConfig c_;
  int64_t window_ = 0;
  int64_t row_ = 0, num_blocks_ = 0;
  std::vector<TestSeq> seqs_;
  std::vector<uint8_t> fast_k_, fast_v_;
  std::vector<float> ref_k_, ref_v_;
};

class FastAttention : public ::testing::TestWithParam<AttnConfig> {
 protected:
  void SetUp() override {
    if (!cpu::attention_isa_available(GetParam().isa)) GTEST_SKIP() << "no " << cpu::attention_isa_name(GetParam().isa);
  }
};

// One sequence per context: its prompt in prefill chunks of 256 (the engine's), then two decode steps.
TEST_P(FastAttention, MatchesReferenceAtContexts) {
  const AttnConfig& c = GetParam();
  std::vector<int64_t> contexts = {1, 17, 255, 1024, 4096};
  if (c.isa == cpu::AttentionIsa::kScalar) contexts.pop_back();   // one lane: a 4,096-token prefill takes long
  for (int64_t L : contexts) {
    PagedAttention a(c, {L + 1}, uint32_t(L));
    const std::string what = config_name(c) + " context " + std::to_string(L);
    for (int64_t p = 0; p < L - 1; p += 256) a.run_pass({{0, p, std::min<int64_t>(256, L - 1 - p)}}, 6, what);
    a.run_pass({{0, L - 1, 1}}, 1, what + " decode");
    a.run_pass({{0, L, 1}}, 1, what + " decode+1");
  }
}

// A whole prompt in one pass (tiles of one sequence, the longest first) and batches mixing prefill and decode.
TEST_P(FastAttention, MixedPrefillAndDecodeBatches) {
  const AttnConfig& c = GetParam();
  PagedAttention a(c, {1100, 300, 40, 5}, 7);
  const std::string what = config_name(c) + " mixed";
  a.run_pass({{0, 0, 700}, {1, 0, 200}, {2, 0, 17}}, 12, what + " pass 1");
  a.run_pass({{2, 17, 1}, {0, 700, 399}, {3, 0, 4}, {1, 200, 1}}, 12, what + " pass 2");
  a.run_pass({{1, 201, 1}, {0, 1099, 1}, {3, 4, 1}, {2, 18, 21}}, 12, what + " pass 3");
}

// Key-range splits and their merge: more threads than (sequence, KV head) pieces at long decode.
TEST_P(FastAttention, SplitKeyRangesAcrossThreads) {
  const AttnConfig& c = GetParam();
  const int saved = omp_get_max_threads();
  const int64_t L = c.isa == cpu::AttentionIsa::kScalar ? 600 : 2000;
  for (int threads : {1, 3, 8}) {
    omp_set_num_threads(threads);
    PagedAttention a(c, {L, 70}, 11);
    const std::string what = config_name(c) + " " + std::to_string(threads) + " threads";
    a.run_pass({{0, 0, L - 1}, {1, 0, 69}}, 4, what + " prefill");
    a.run_pass({{0, L - 1, 1}}, 1, what + " decode b1");
    a.run_pass({{1, 69, 1}}, 1, what + " short decode");
  }
  omp_set_num_threads(saved);
}

// Sliding windows (Mistral, Gemma 3) of 1 position, less than a block, a block, several blocks and more than
// the context: prefill chunks whose tiles straddle window starts, decode, mixed batches, split key ranges.
TEST_P(FastAttention, SlidingWindowMatchesReference) {
  const AttnConfig& c = GetParam();
  const int saved = omp_get_max_threads();
  const int64_t L = c.isa == cpu::AttentionIsa::kScalar ? 300 : 1200;
  for (int64_t window : {1, 5, 16, 100, 512, 5000}) {
    for (int threads : {1, 8}) {
      omp_set_num_threads(threads);
      PagedAttention a(c, {L + 1, 90}, uint32_t(window), window);
      const std::string what = config_name(c) + " window " + std::to_string(window) + ", " +
                               std::to_string(threads) + " threads";
      for (int64_t p = 0; p < L - 1; p += 256) {
        a.run_pass({{0, p, std::min<int64_t>(256, L - 1 - p)}}, 6, what + " prefill");
      }
      a.run_pass({{0, L - 1, 1}, {1, 0, 60}}, 6, what + " decode + prefill");
      a.run_pass({{0, L, 1}}, 1, what + " decode");
      a.run_pass({{1, 60, 30}}, 8, what + " second chunk");
    }
  }
  omp_set_num_threads(saved);
}

// Rows [first, first + count) of got (from row got_row on) against the same positions of want (from row 0),
// bit for bit: the first few differing rows are reported.
void expect_same_bits(const std::vector<float>& got, int64_t got_row, const std::vector<float>& want, int64_t first,
                      int64_t count, int64_t C, const std::string& what) {
  int failures = 0;
  for (int64_t r = 0; r < count; ++r) {
    const float* g = got.data() + (got_row + r) * C;
    const float* w = want.data() + (first + r) * C;
    if (std::memcmp(g, w, size_t(C) * sizeof(float)) == 0) continue;
    int64_t ch = 0;
    while (ch < C && std::memcmp(g + ch, w + ch, sizeof(float)) == 0) ++ch;
    if (failures++ < 3) {
      ADD_FAILURE() << what << ": position " << first + r << " channel " << ch << " is " << g[ch] << ", "
                    << w[ch] << " when the whole prompt is one pass on one thread (not the same bits)";
    }
  }
}

// Batch invariance: a (sequence, position, head)'s output is the same bits however the pass that computes it is
// made up — the whole prompt in one call, one row at a time, prefill chunks of odd sizes, beside other sequences'
// prefill and decode, on 1 or 2 threads (key ranges split among threads or not) — so a prefix-cache hit or a
// chunked prefill cannot change a token. The first pass is also checked against the reference.
TEST_P(FastAttention, BitIdenticalWhateverThePassHolds) {
  const AttnConfig& c = GetParam();
  // A 4,096-token context on the default model's shape; shorter where the kernel has one lane or the shape is
  // covered at length by the default one.
  const bool long_context = c.isa != cpu::AttentionIsa::kScalar && c.NH == 9;
  const int64_t L = long_context ? 4096 : (c.isa == cpu::AttentionIsa::kScalar ? 300 : 600), C = c.NH * c.HD;
  const int saved = omp_get_max_threads();
  for (int64_t window : {int64_t(0), int64_t(200)}) {
    const std::string base = config_name(c) + (window > 0 ? " window 200" : "");
    PagedAttention a(c, {L, 300, 40}, 21, window);
    omp_set_num_threads(1);
    const std::vector<float> whole = a.run_pass({{0, 0, L}}, 6, base + " whole prompt");
    const std::vector<float> whole1 = a.run_pass({{1, 0, 300}}, 0, base);
    const std::vector<float> whole2 = a.run_pass({{2, 0, 40}}, 0, base);
    for (int threads : {1, 2}) {
      omp_set_num_threads(threads);
      const std::string what = base + ", " + std::to_string(threads) + " threads";
      // (a) the whole prompt in one call.
      expect_same_bits(a.run_pass({{0, 0, L}}, 0, what), 0, whole, 0, L, C, what + " whole prompt");
      // (b) one row at a time, at block (16) and key-chunk boundaries and the ends.
      for (int64_t p : {0, 1, 15, 16, 17, 255, 256, 257, 511, 512, 1000, 2047, 2048, 4095}) {
        if (p >= L) continue;
        expect_same_bits(a.run_pass({{0, p, 1}}, 0, what), 0, whole, p, 1, C, what + " one row");
      }
      expect_same_bits(a.run_pass({{0, L - 1, 1}}, 0, what), 0, whole, L - 1, 1, C, what + " last row");
      // (c) prefill chunks of odd sizes.
      const int64_t sizes[] = {7, 333, 13, 100, 1, 250};
      for (int64_t p = 0, i = 0; p < L; ++i) {
        const int64_t n = std::min(sizes[i % 6], L - p);
        expect_same_bits(a.run_pass({{0, p, n}}, 0, what), 0, whole, p, n, C, what + " odd chunks");
        p += n;
      }
      // (d) inside batches: another sequence's prefill chunk before it, a third's decode token after it.
      for (int64_t p = 0, i = 0; p < L; p += 700, ++i) {
        const int64_t n = std::min<int64_t>(700, L - p), p1 = (i * 45) % 300, n1 = std::min<int64_t>(45, 300 - p1);
        const std::vector<float> out = a.run_pass({{1, p1, n1}, {0, p, n}, {2, 39, 1}}, 0, what);
        expect_same_bits(out, 0, whole1, p1, n1, C, what + " batch, other prefill");
        expect_same_bits(out, n1, whole, p, n, C, what + " batch");
        expect_same_bits(out, n1 + n, whole2, 39, 1, C, what + " batch, other decode");
      }
      // ... and decode tokens of three sequences together.
      const std::vector<float> out = a.run_pass({{2, 39, 1}, {0, L - 1, 1}, {1, 299, 1}}, 0, what);
      expect_same_bits(out, 0, whole2, 39, 1, C, what + " decode batch");
      expect_same_bits(out, 1, whole, L - 1, 1, C, what + " decode batch");
      expect_same_bits(out, 2, whole1, 299, 1, C, what + " decode batch");
    }
  }
  omp_set_num_threads(saved);
}

std::vector<AttnConfig> configs() {
  std::vector<AttnConfig> out;
  for (auto isa : {cpu::AttentionIsa::kAvx512, cpu::AttentionIsa::kAvx2, cpu::AttentionIsa::kScalar}) {
    for (DType dtype : {DType::F32, DType::F16}) {
      out.push_back({9, 3, 64, 16, dtype, isa});    // SmolLM2-135M: GQA, 3 query heads per KV head
      out.push_back({4, 4, 64, 16, dtype, isa});    // MHA (GPT-2, Pythia)
      out.push_back({8, 2, 128, 16, dtype, isa});   // GQA at head dim 128
      out.push_back({4, 4, 128, 16, dtype, isa});   // MHA at head dim 128
    }
    out.push_back({6, 2, 64, 12, DType::F16, isa});   // a block size that is not a multiple of the vector width
    for (DType dtype : {DType::BF16, DType::I8}) {
      out.push_back({9, 3, 64, 16, dtype, isa});
      out.push_back({8, 2, 128, 16, dtype, isa});
      out.push_back({6, 2, 64, 12, dtype, isa});
    }
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Cpu, FastAttention, ::testing::ValuesIn(configs()),
                         [](const ::testing::TestParamInfo<AttnConfig>& info) { return config_name(info.param); });

// Head dims the vector kernels cannot take fall to the one-lane kernel.
TEST(FastAttentionAuto, OddHeadDimUsesScalarKernel) {
  PagedAttention a({4, 2, 20, 16, DType::F32, cpu::AttentionIsa::kAuto}, {50}, 3);
  a.run_pass({{0, 0, 49}}, 8, "HD 20 prefill");
  a.run_pass({{0, 49, 1}}, 1, "HD 20 decode");
  PagedAttention i8({4, 2, 20, 16, DType::I8, cpu::AttentionIsa::kAuto}, {50}, 3);   // int8, not rotated
  i8.run_pass({{0, 0, 49}}, 8, "HD 20 int8 prefill");
  i8.run_pass({{0, 49, 1}}, 1, "HD 20 int8 decode");
}

// The int8 cache's rotation: orthogonal (dot products kept), its own inverse, only for powers of two.
TEST(KvInt8Rotation, OrthogonalAndItsOwnInverse) {
  EXPECT_TRUE(cpu::kv_int8_rotates(64));
  EXPECT_TRUE(cpu::kv_int8_rotates(256));
  EXPECT_FALSE(cpu::kv_int8_rotates(20));
  EXPECT_FALSE(cpu::kv_int8_rotates(96));
  EXPECT_FALSE(cpu::kv_int8_rotates(1));
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  for (int64_t n : {2, 64, 128, 256}) {
    std::vector<float> x(static_cast<size_t>(n)), y(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) x[size_t(i)] = normal(rng), y[size_t(i)] = normal(rng);
    std::vector<float> hx = x, hy = y;
    cpu::hadamard_rotate(hx.data(), n);
    cpu::hadamard_rotate(hy.data(), n);
    const double dot = std::inner_product(x.begin(), x.end(), y.begin(), 0.0);
    const double hdot = std::inner_product(hx.begin(), hx.end(), hy.begin(), 0.0);
    EXPECT_NEAR(hdot, dot, 1e-4 * n) << n;
    cpu::hadamard_rotate(hx.data(), n);
    for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(hx[size_t(i)], x[size_t(i)], 1e-5f) << n << " " << i;
  }
}

// Why it rotates: one outlier channel sets a head's absolute max; rotated first, the other channels' rounding is
// several times finer (measured on SmolLM2's keys: half the error; here a sharper outlier, so more).
TEST(KvInt8Rotation, AnOutlierChannelCostsLessRotated) {
  const int64_t n = 64;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = normal(rng);
  x[5] = 40.0f;
  auto error = [&](bool rotate) {
    std::vector<float> h = x;
    if (rotate) cpu::hadamard_rotate(h.data(), n);
    std::vector<int8_t> q(static_cast<size_t>(n));
    const float scale = cpu::quantize_kv_int8(h.data(), n, q.data(), 1);
    for (int64_t i = 0; i < n; ++i) h[size_t(i)] = scale * float(q[size_t(i)]);
    if (rotate) cpu::hadamard_rotate(h.data(), n);
    double e = 0;
    for (int64_t i = 0; i < n; ++i) e += double(h[size_t(i)] - x[size_t(i)]) * (h[size_t(i)] - x[size_t(i)]);
    return std::sqrt(e);
  };
  EXPECT_LT(error(true), 0.5 * error(false));
}

}  // namespace
}  // namespace qs
