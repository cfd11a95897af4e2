// The CUDA backend against the CPU backend (the reference): every op, make_linear + linear in each precision,
// and the load-time peak-memory bound. Every test skips itself where no CUDA device is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <list>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/backend.h"
#include "kernels/dtype.h"
#include "kernels/error.h"
#include "kernels/gguf_blocks.h"
#include "kernels/precision.h"

namespace qs {
namespace {

// T = tokens, C = channels, N = out features, K = in features, NH/NKV = heads, HD = head dim.

std::vector<float> random_values(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = dist(rng);
  return v;
}

std::vector<uint16_t> to_half(const std::vector<float>& v, DType t) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = t == DType::F16 ? f32_to_f16(v[i]) : f32_to_bf16(v[i]);
  return out;
}

// A layout where token t is token id t at position t of one sequence: how tests load activations.
BatchLayout identity_layout(int64_t T) {
  BatchLayout b;
  for (int32_t t = 0; t < int32_t(T); ++t) {
    b.token_ids.push_back(t);
    b.positions.push_back(t);
    b.seq_of_token.push_back(0);
  }
  std::vector<int32_t> blocks;
  for (int32_t i = 0; i * 16 < int32_t(std::max<int64_t>(T, 1)); ++i) blocks.push_back(i);
  b.block_tables.push_back(blocks);
  b.seq_lens.push_back(int32_t(T));
  return b;
}

struct DeviceTensor {
  std::unique_ptr<DeviceBuffer> holder;
  Tensor t;
};

LinearOptions no_error() {
  LinearOptions o;
  o.compute_error = false;
  return o;
}

// Max |got - want| must stay within tol * max(1, max |want|).
void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double worst = 0, scale = 1;
  size_t at = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << what << ": element " << i << " is " << got[i];
    scale = std::max(scale, double(std::fabs(want[i])));
    const double d = std::fabs(double(got[i]) - double(want[i]));
    if (d > worst) {
      worst = d;
      at = i;
    }
  }
  EXPECT_LE(worst, tol * scale) << what << ": worst at " << at << ": got " << got[at] << ", want " << want[at]
                                << " (tolerance " << tol << " x " << scale << ")";
}

class CudaVsCpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device on this machine";
    gpu_ = make_cuda_backend(0);
    cpu_ = make_cpu_backend();
  }

  // The CPU backend keeps a pointer to the layout: layouts live as long as the fixture.
  void begin(Backend& b, BatchLayout layout) {
    layouts_.push_back(std::move(layout));
    b.begin_batch(layouts_.back());
  }
  void begin_both(const BatchLayout& layout) {
    begin(*cpu_, layout);
    begin(*gpu_, layout);
  }

  // Loads rows x cols host values as an activation (through an fp32 embedding: the interface's way in).
  DeviceTensor upload(Backend& b, const std::vector<float>& values, int64_t rows, int64_t cols) {
    auto table = b.make_linear(HostTensor{values.data(), DType::F32, rows, cols}, nullptr, Precision::kFp32, no_error());
    begin(b, identity_layout(rows));
    DeviceTensor d;
    d.t = b.new_tensor(d.holder, rows, cols);
    b.embedding(d.t, *table, nullptr);
    b.synchronize();
    return d;
  }
  DeviceTensor empty(Backend& b, int64_t rows, int64_t cols) {
    DeviceTensor d;
    d.t = b.new_tensor(d.holder, rows, cols);
    return d;
  }
  std::vector<float> download(Backend& b, const Tensor& t) {
    b.synchronize();
    const int64_t n = t.rows * t.cols;
    std::vector<float> out(static_cast<size_t>(n));
    if (t.dtype == DType::F32) {
      b.copy_to_host(out.data(), t.data, size_t(n) * sizeof(float));
    } else {
      std::vector<uint16_t> raw(static_cast<size_t>(n));
      b.copy_to_host(raw.data(), t.data, size_t(n) * 2);
      for (int64_t i = 0; i < n; ++i)
        out[size_t(i)] = t.dtype == DType::F16 ? f16_to_f32(raw[size_t(i)]) : bf16_to_f32(raw[size_t(i)]);
    }
    return out;
  }

  // Attention over a prefill pass, then a decode pass on the same cache, on the CPU ([0]) and the GPU ([1]):
  // attention() with window 0, attention_window() otherwise. Returns {prefill outputs, decode outputs}.
  struct TwoPasses {
    std::vector<float> prefill[2], decode[2];
  };
  TwoPasses prefill_then_decode(const KvCacheConfig& cfg, const BatchLayout& prefill, const BatchLayout& decode,
                                int64_t layer, int64_t NH, int64_t NKV, int64_t HD, int64_t window, uint32_t seed) {
    const int64_t W = (NH + 2 * NKV) * HD;
    const int64_t T1 = prefill.num_tokens(), T2 = decode.num_tokens();
    const auto qkv1 = random_values(T1 * W, seed);
    const auto qkv2 = random_values(T2 * W, seed + 1);
    TwoPasses r;
    int i = 0;
    for (Backend* b : {cpu_.get(), gpu_.get()}) {
      auto cache = b->make_kv_cache(cfg);
      auto q1 = upload(*b, qkv1, T1, W);
      auto q2 = upload(*b, qkv2, T2, W);
      for (int pass = 0; pass < 2; ++pass) {
        begin(*b, pass == 0 ? prefill : decode);
        auto& q = pass == 0 ? q1 : q2;
        auto out = empty(*b, pass == 0 ? T1 : T2, NH * HD);
        if (window == 0) {
          b->attention(out.t, q.t, *cache, layer, NH, NKV, HD);
        } else {
          b->attention_window(out.t, q.t, *cache, layer, NH, NKV, HD, window);
        }
        (pass == 0 ? r.prefill : r.decode)[i] = download(*b, out.t);
      }
      ++i;
    }
    return r;
  }

  std::unique_ptr<Backend> cpu_, gpu_;
  std::list<BatchLayout> layouts_;
};

TEST_F(CudaVsCpu, NameMemoryAndPrecisions) {
  EXPECT_EQ(gpu_->name(), "cuda:0");
  const MemoryInfo info = gpu_->memory_info();
  EXPECT_EQ(info.device, "cuda:0");
  EXPECT_GT(info.total_bytes, 0u);
  EXPECT_GT(info.peak_bytes, 0u);  // the cuBLASLt workspace at least
  for (Precision p : {Precision::kFp32, Precision::kFp16, Precision::kBf16, Precision::kInt8,
                      Precision::kInt8WeightOnly, Precision::kInt8Naive, Precision::kInt4WeightOnly})
    EXPECT_TRUE(gpu_->supports(p)) << precision_name(p);
  EXPECT_FALSE(gpu_->supports(Precision::kInt8Smooth));
  const auto w = random_values(16 * 16, 1);
  try {
    gpu_->make_linear(HostTensor{w.data(), DType::F32, 16, 16}, nullptr, Precision::kInt8Smooth, LinearOptions{});
    FAIL() << "int8-smooth should be refused";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("int8-smooth"), std::string::npos) << e.what();
  }
  // Blocks of 32 inputs: a K that is not whole blocks is refused with the precision's name.
  const auto w70 = random_values(8 * 70, 2);
  try {
    gpu_->make_linear(HostTensor{w70.data(), DType::F32, 8, 70}, nullptr, Precision::kInt4WeightOnly, LinearOptions{});
    FAIL() << "int4-weight-only with K = 70 should be refused";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("not a multiple of 32"), std::string::npos) << e.what();
  }
}

TEST_F(CudaVsCpu, WeightGroupsOnlyForInt8WeightOnlyAndOnlyOnRequest) {
  // int8-weight-only by groups runs the block GEMV when asked (--group-size 32); --group-size auto stays per row on
  // CUDA until it is measured there. W8A8 by groups has no CUDA kernel: refused with the flag's name.
  EXPECT_TRUE(gpu_->supports_weight_groups(Precision::kInt8WeightOnly));
  EXPECT_FALSE(gpu_->weight_groups_by_default(Precision::kInt8WeightOnly));
  EXPECT_FALSE(gpu_->supports_weight_groups(Precision::kInt8));
  const auto w = random_values(16 * 32, 1);
  LinearOptions options;
  options.group_size = kInt8WeightGroup;
  try {
    gpu_->make_linear(HostTensor{w.data(), DType::F32, 16, 32}, nullptr, Precision::kInt8, options);
    FAIL() << "group-wise int8 (W8A8) should be refused";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("--group-size 0"), std::string::npos) << e.what();
  }
}

// int4-weight-only and int8-weight-only by groups against the CPU backend: from floats (both round to the same
// blocks with the same quantizer) and from a file's Q4_0 / Q4_1 / Q8_0 blocks (kept, or rewritten exactly), at
// real shapes (SmolLM2-135M's down_proj, GPT-2-small's c_attn, Pythia-1.4B's dense_4h_to_h) and an odd one, at
// the GEMV's token counts and past them (the fp16 GEMM); the same bytes and error on both; the block embedding.
TEST_F(CudaVsCpu, BlockWeightsAgainstCpu) {
  struct Shape {
    int64_t N, K;
  };
  const Shape shapes[] = {{576, 1536}, {2304, 768}, {2048, 8192}, {37, 96}};
  for (const Shape& sh : shapes) {
    const int64_t N = sh.N, K = sh.K, nb = N * K / 32;
    const auto w32 = random_values(N * K, uint32_t(N + K), 0.05f);
    std::vector<BlockQ4_1> q4_1(static_cast<size_t>(nb));
    std::vector<BlockQ4_0> q4_0(static_cast<size_t>(nb));
    std::vector<BlockQ8_0> q8_0(static_cast<size_t>(nb));
    std::mt19937 gen{uint32_t(N * K)};
    for (int64_t b = 0; b < nb; ++b) {
      auto& a = q4_1[size_t(b)];
      a.d = f32_to_f16(0.002f * float(1 + gen() % 7)), a.m = f32_to_f16(-0.01f * float(1 + gen() % 5));
      auto& c = q4_0[size_t(b)];
      c.d = f32_to_f16(0.003f * float(1 + gen() % 7));
      auto& e = q8_0[size_t(b)];
      e.d = f32_to_f16(0.0004f * float(1 + gen() % 9));
      for (int j = 0; j < 16; ++j) a.qs[j] = uint8_t(gen()), c.qs[j] = uint8_t(gen());
      for (int j = 0; j < 32; ++j) e.qs[j] = int8_t(int(gen() % 255) - 127);
    }
    const auto bias = random_values(N, uint32_t(N + 3), 0.1f);
    const HostTensor bt{bias.data(), DType::F32, N, 1};
    struct Source {
      const char* name;
      HostTensor w;
    };
    const Source sources[] = {{"F32", HostTensor{w32.data(), DType::F32, N, K}},
                              {"Q4_1", HostTensor{q4_1.data(), DType::Q4_1, N, K}},
                              {"Q4_0", HostTensor{q4_0.data(), DType::Q4_0, N, K}},
                              {"Q8_0", HostTensor{q8_0.data(), DType::Q8_0, N, K}}};
    LinearOptions groups;
    groups.group_size = kInt8WeightGroup;
    for (Precision p : {Precision::kInt4WeightOnly, Precision::kInt8WeightOnly}) {
      const LinearOptions& options = p == Precision::kInt8WeightOnly ? groups : LinearOptions{};
      for (const Source& src : sources) {
        const std::string name = str(precision_name(p), " from ", src.name, " N=", N, " K=", K);
        auto cpu_w = cpu_->make_linear(src.w, &bt, p, options);
        auto gpu_w = gpu_->make_linear(src.w, &bt, p, options);
        EXPECT_EQ(gpu_w->weight_bytes, cpu_w->weight_bytes) << name;
        EXPECT_NEAR(gpu_w->error.rel_frobenius, cpu_w->error.rel_frobenius, 1e-4 * cpu_w->error.rel_frobenius + 1e-9)
            << name;
        EXPECT_NEAR(gpu_w->error.max_abs, cpu_w->error.max_abs, 1e-6 * std::max(1.0, cpu_w->error.max_abs) + 1e-9)
            << name;
        for (int64_t T : {1, 3, 8, 9, 40}) {
          if (N * K > 4'000'000 && T == 3) continue;   // the large shape: fewer runs
          const auto x = random_values(T * K, uint32_t(T * 31 + K));
          std::vector<float> results[2];
          int i = 0;
          for (Backend* be : {cpu_.get(), gpu_.get()}) {
            auto xt = upload(*be, x, T, K);
            auto out = empty(*be, T, N);
            be->linear(out.t, xt.t, be == cpu_.get() ? *cpu_w : *gpu_w, Activation::kNone);
            results[i++] = download(*be, out.t);
          }
          // Up to 8 tokens the GEMV sums in fp32 as the CPU does (other order); past it the fp16 GEMM rounds.
          expect_close(results[1], results[0], T <= 8 ? 2e-5 : 5e-3, str(name, " T=", T));
        }
      }
    }
  }
  // A block table as an embedding (int4-weight-only keeps a file's Q8_0 / Q4_1 table as blocks).
  const int64_t V = 40, C = 64;
  std::vector<BlockQ8_0> table(size_t(V * C / 32));
  std::mt19937 gen{5};
  for (auto& blk : table) {
    blk.d = f32_to_f16(0.01f * float(1 + gen() % 5));
    for (auto& q : blk.qs) q = int8_t(int(gen() % 255) - 127);
  }
  BatchLayout layout = identity_layout(4);
  layout.token_ids = {3, 0, 39, 3};
  std::vector<float> results[2];
  int i = 0;
  for (Backend* b : {cpu_.get(), gpu_.get()}) {
    auto lin = b->make_linear(HostTensor{table.data(), DType::Q8_0, V, C}, nullptr, Precision::kInt4WeightOnly,
                              no_error());
    begin(*b, layout);
    auto out = empty(*b, 4, C);
    b->embedding(out.t, *lin, nullptr);
    results[i++] = download(*b, out.t);
  }
  expect_close(results[1], results[0], 0.0, "Q8_0 embedding");
}

TEST_F(CudaVsCpu, EmbeddingWithPositions) {
  const int64_t V = 37, C = 48, P = 20;
  const auto table = random_values(V * C, 2);
  const auto pos = random_values(P * C, 3, 0.1f);
  BatchLayout layout;
  layout.token_ids = {5, 0, 36, 5, 17};
  layout.positions = {0, 1, 2, 19, 7};
  layout.seq_of_token = {0, 0, 0, 1, 1};
  layout.block_tables = {{0}, {1, 2}};
  layout.seq_lens = {3, 20};
  for (Precision p : {Precision::kFp32, Precision::kFp16, Precision::kBf16, Precision::kInt8, Precision::kInt8Naive}) {
    std::vector<float> results[2];
    int i = 0;
    for (Backend* b : {cpu_.get(), gpu_.get()}) {
      auto lin = b->make_linear(HostTensor{table.data(), DType::F32, V, C}, nullptr, p, no_error());
      DenseWeight pt = b->make_dense(HostTensor{pos.data(), DType::F32, P, C}, DType::F32);
      begin(*b, layout);
      auto out = empty(*b, 5, C);
      b->embedding(out.t, *lin, &pt);
      results[i++] = download(*b, out.t);
    }
    expect_close(results[1], results[0], 1e-6, str("embedding ", precision_name(p)));
  }
}

TEST_F(CudaVsCpu, NormsAddSiluMulGather) {
  const int64_t T = 7, C = 200;
  const auto x = random_values(T * C, 4, 2.0f);
  const auto y = random_values(T * C, 5);
  const auto w = random_values(C, 6, 0.5f);
  const auto bias = random_values(C, 7, 0.5f);
  BatchLayout layout = identity_layout(T);
  layout.logit_rows = {6, 2, 3};
  std::vector<float> ln[2], rms[2], sum[2], sm[2], gathered[2];
  int i = 0;
  for (Backend* b : {cpu_.get(), gpu_.get()}) {
    auto xt = upload(*b, x, T, C);
    auto yt = upload(*b, y, T, C);
    begin(*b, layout);
    DenseWeight wd = b->make_dense(HostTensor{w.data(), DType::F32, C, 1}, DType::F32);
    DenseWeight bd = b->make_dense(HostTensor{bias.data(), DType::F32, C, 1}, DType::F32);
    auto out = empty(*b, T, C);
    b->layernorm(out.t, xt.t, wd, &bd, 1e-5f);
    ln[i] = download(*b, out.t);
    b->rmsnorm(out.t, xt.t, wd, 1e-6f);
    rms[i] = download(*b, out.t);
    auto half_out = empty(*b, T, C / 2);
    b->silu_mul(half_out.t, xt.t);
    sm[i] = download(*b, half_out.t);
    auto rows = empty(*b, 3, C);
    b->gather_logit_rows(rows.t, xt.t);
    gathered[i] = download(*b, rows.t);
    b->add(xt.t, xt.t, yt.t);  // out aliases a
    sum[i] = download(*b, xt.t);
    ++i;
  }
  expect_close(ln[1], ln[0], 1e-5, "layernorm");
  expect_close(rms[1], rms[0], 1e-5, "rmsnorm");
  expect_close(sm[1], sm[0], 1e-5, "silu_mul");
  expect_close(gathered[1], gathered[0], 0, "gather_logit_rows");
  expect_close(sum[1], sum[0], 0, "add");
}

TEST_F(CudaVsCpu, NormWeightsInHalfPrecision) {
  const int64_t T = 3, C = 96;
  const auto x = random_values(T * C, 8);
  const auto w = random_values(C, 9);
  const auto w16 = to_half(w, DType::BF16);
  std::vector<float> results[2];
  int i = 0;
  for (Backend* b : {cpu_.get(), gpu_.get()}) {
    auto xt = upload(*b, x, T, C);
    DenseWeight wd = b->make_dense(HostTensor{w16.data(), DType::BF16, C, 1}, DType::BF16);
    b->rmsnorm(xt.t, xt.t, wd, 1e-6f);  // in place
    results[i++] = download(*b, xt.t);
  }
  expect_close(results[1], results[0], 1e-5, "rmsnorm with bf16 weight, in place");
}

TEST_F(CudaVsCpu, RopePartialRotaryAtBatchPositions) {
  const int64_t NH = 4, NKV = 2, HD = 16, T = 5;
  const int64_t W = (NH + 2 * NKV) * HD;
  const auto qkv = random_values(T * W, 10);
  BatchLayout layout;
  layout.token_ids = {1, 2, 3, 4, 5};
  layout.positions = {0, 1, 2, 1000, 4095};
  layout.seq_of_token = {0, 0, 0, 1, 1};
  layout.block_tables = {{0}, {1}};
  layout.seq_lens = {3, 4096};
  for (int64_t rotary_dim : {HD, HD / 2}) {
    std::vector<float> results[2];
    int i = 0;
    for (Backend* b : {cpu_.get(), gpu_.get()}) {
      auto t = upload(*b, qkv, T, W);
      begin(*b, layout);
      b->rope(t.t, NH, NKV, HD, rotary_dim, 10000.0f);
      results[i++] = download(*b, t.t);
    }
    expect_close(results[1], results[0], 2e-5, str("rope rotary_dim ", rotary_dim));
  }
}

// Two sequences in non-contiguous blocks: a prefill pass (5 + 3 tokens), then a decode pass (1 + 1),
// GQA with 2 query heads per kv head; head dims that are and are not multiples of 32.
TEST_F(CudaVsCpu, PagedAttentionPrefillThenDecode) {
  for (int64_t HD : {int64_t(32), int64_t(40), int64_t(128)}) {
    const int64_t NH = 4, NKV = 2, BS = 4;
    KvCacheConfig cfg;
    cfg.num_layers = 2;
    cfg.num_blocks = 6;
    cfg.block_size = BS;
    cfg.num_kv_heads = NKV;
    cfg.head_dim = HD;
    BatchLayout prefill;
    prefill.token_ids = {1, 2, 3, 4, 5, 6, 7, 8};
    prefill.positions = {0, 1, 2, 3, 4, 0, 1, 2};
    prefill.seq_of_token = {0, 0, 0, 0, 0, 1, 1, 1};
    prefill.block_tables = {{3, 0}, {5, 1}};
    prefill.seq_lens = {5, 3};
    BatchLayout decode;
    decode.token_ids = {9, 10};
    decode.positions = {5, 3};
    decode.seq_of_token = {0, 1};
    decode.block_tables = {{3, 0}, {5, 1}};
    decode.seq_lens = {6, 4};
    const TwoPasses r = prefill_then_decode(cfg, prefill, decode, 1, NH, NKV, HD, 0, 11);
    expect_close(r.prefill[1], r.prefill[0], 1e-5, str("attention prefill, head_dim ", HD));
    expect_close(r.decode[1], r.decode[0], 1e-5, str("attention decode, head_dim ", HD));
  }
}

// The ops Gemma 3, Qwen3 and Mistral add: GeGLU's gelu-tanh gate, QK-norm (weights in fp32 and bf16), the
// embedding scale, and attention over a sliding window in prefill and decode, where the decode table has given
// back the block wholly before the window (-1 in its place, as KvBlockManager::release_front leaves it).
TEST_F(CudaVsCpu, GemmaQwen3AndMistralOps) {
  const int64_t T = 5, F = 96, NH = 4, NKV = 2, HD = 40;
  const int64_t W = (NH + 2 * NKV) * HD;
  const auto gate_up = random_values(T * 2 * F, 21, 3.0f);
  const auto qkv = random_values(T * W, 22, 2.0f);
  const auto qw = random_values(HD, 23, 1.5f), kw = random_values(HD, 24, 1.5f);
  std::vector<float> gated[2], normed[2], normed16[2], scaled[2];
  int i = 0;
  for (Backend* b : {cpu_.get(), gpu_.get()}) {
    auto g = upload(*b, gate_up, T, 2 * F);
    auto out = empty(*b, T, F);
    b->gated_activation(out.t, g.t, Activation::kGeluTanh);
    gated[i] = download(*b, out.t);
    b->scale(out.t, 25.298221f);   // sqrt(640), Gemma 3 270M's embedding multiplier
    scaled[i] = download(*b, out.t);
    for (DType wt : {DType::F32, DType::BF16}) {
      auto x = upload(*b, qkv, T, W);
      const std::vector<uint16_t> q16 = to_half(qw, DType::BF16), k16 = to_half(kw, DType::BF16);
      DenseWeight q = wt == DType::F32 ? b->make_dense(HostTensor{qw.data(), DType::F32, HD, 1}, DType::F32)
                                       : b->make_dense(HostTensor{q16.data(), DType::BF16, HD, 1}, DType::BF16);
      DenseWeight k = wt == DType::F32 ? b->make_dense(HostTensor{kw.data(), DType::F32, HD, 1}, DType::F32)
                                       : b->make_dense(HostTensor{k16.data(), DType::BF16, HD, 1}, DType::BF16);
      b->head_rmsnorm(x.t, q, k, NH, NKV, HD, 1e-6f);
      (wt == DType::F32 ? normed : normed16)[i] = download(*b, x.t);
    }
    ++i;
  }
  expect_close(gated[1], gated[0], 1e-5, "gelu-tanh gate");
  expect_close(scaled[1], scaled[0], 1e-5, "scale");
  expect_close(normed[1], normed[0], 1e-5, "head_rmsnorm");
  expect_close(normed16[1], normed16[0], 1e-5, "head_rmsnorm, bf16 weights");
}

TEST_F(CudaVsCpu, SlidingWindowAttentionPrefillThenDecode) {
  const int64_t NH = 4, NKV = 2, HD = 32, BS = 4, kWindow = 5;
  KvCacheConfig cfg;
  cfg.num_layers = 1;
  cfg.num_blocks = 8;
  cfg.block_size = BS;
  cfg.num_kv_heads = NKV;
  cfg.head_dim = HD;
  BatchLayout prefill;   // sequence 0: 11 positions over blocks 6, 2, 4; sequence 1: 3 positions in block 1
  for (int32_t p = 0; p < 11; ++p) {
    prefill.token_ids.push_back(p + 1);
    prefill.positions.push_back(p);
    prefill.seq_of_token.push_back(0);
  }
  for (int32_t p = 0; p < 3; ++p) {
    prefill.token_ids.push_back(p + 20);
    prefill.positions.push_back(p);
    prefill.seq_of_token.push_back(1);
  }
  prefill.block_tables = {{6, 2, 4}, {1}};
  prefill.seq_lens = {11, 3};
  BatchLayout decode;    // position 11 sees 7..11: block 0 (positions 0..3) was given back
  decode.token_ids = {30, 31};
  decode.positions = {11, 3};
  decode.seq_of_token = {0, 1};
  decode.block_tables = {{-1, 2, 4}, {1}};
  decode.seq_lens = {12, 4};
  const TwoPasses r = prefill_then_decode(cfg, prefill, decode, 0, NH, NKV, HD, kWindow, 25);
  expect_close(r.prefill[1], r.prefill[0], 1e-5, "sliding-window attention, prefill");
  expect_close(r.decode[1], r.decode[0], 1e-5, "sliding-window attention, decode past a given-back block");
}

struct LinearCase {
  int64_t N, K;
  std::vector<int64_t> tokens;
  std::vector<Activation> acts;
  DType weight_dtype;
};

double linear_tolerance(Precision p, Activation act) {
  double tol = 0;
  switch (p) {
    case Precision::kFp32: tol = 1e-5; break;
    case Precision::kFp16: tol = 5e-3; break;   // activations are rounded to fp16 for the GEMM
    case Precision::kBf16: tol = 3e-2; break;
    case Precision::kInt8: tol = 1e-4; break;   // same integers as the CPU; only float rounding differs
    case Precision::kInt8WeightOnly: tol = 5e-3; break;  // T > 8 goes through an fp16 GEMM
    case Precision::kInt8Naive: tol = 1e-5; break;
    default: tol = 1e-2; break;
  }
  // cuBLASLt's fused GELU may use its own tanh; allow for it.
  if (act == Activation::kGeluTanh) tol = std::max(tol, 1e-3);
  return tol;
}

TEST_F(CudaVsCpu, LinearEveryPrecisionAgainstCpu) {
  const std::vector<LinearCase> cases = {
      {48, 64, {1, 3, 8, 9, 33}, {Activation::kNone, Activation::kGeluTanh, Activation::kGeluErf, Activation::kRelu,
                                  Activation::kSilu}, DType::F32},
      {50, 36, {1, 5, 17}, {Activation::kNone}, DType::F32},    // N and K not multiples of 4: padded int8 paths
      {264, 200, {2, 64}, {Activation::kNone}, DType::F16},     // stored fp16
      {96, 256, {1, 40}, {Activation::kGeluTanh}, DType::BF16}, // stored bf16
      {1000, 512, {1, 130}, {Activation::kNone}, DType::F32},
  };
  const Precision precisions[] = {Precision::kFp32, Precision::kFp16, Precision::kBf16, Precision::kInt8,
                                  Precision::kInt8WeightOnly, Precision::kInt8Naive};
  for (const auto& c : cases) {
    const auto w32 = random_values(c.N * c.K, uint32_t(c.N * 7 + c.K), 0.05f);
    const auto bias = random_values(c.N, uint32_t(c.N + 1), 0.1f);
    std::vector<uint16_t> w16;
    HostTensor w{w32.data(), DType::F32, c.N, c.K};
    if (c.weight_dtype != DType::F32) {
      w16 = to_half(w32, c.weight_dtype);
      w = HostTensor{w16.data(), c.weight_dtype, c.N, c.K};
    }
    const HostTensor b{bias.data(), DType::F32, c.N, 1};
    for (Precision p : precisions) {
      auto cpu_w = cpu_->make_linear(w, &b, p, LinearOptions{});
      auto gpu_w = gpu_->make_linear(w, &b, p, LinearOptions{});
      const std::string name = str(precision_name(p), " N=", c.N, " K=", c.K, " ", dtype_name(c.weight_dtype));
      EXPECT_EQ(gpu_w->weight_bytes, cpu_w->weight_bytes) << name;
      EXPECT_EQ(gpu_w->original_bytes, cpu_w->original_bytes) << name;
      const QuantError& ge = gpu_w->error;
      const QuantError& ce = cpu_w->error;
      EXPECT_NEAR(ge.max_abs, ce.max_abs, 1e-6 * std::max(1.0, ce.max_abs) + 1e-9) << name;
      EXPECT_NEAR(ge.mean_abs, ce.mean_abs, 1e-4 * ce.mean_abs + 1e-9) << name;
      EXPECT_NEAR(ge.rel_frobenius, ce.rel_frobenius, 1e-4 * ce.rel_frobenius + 1e-9) << name;
      EXPECT_NEAR(ge.median_abs, ce.median_abs, ce.max_abs / 4096 + 1e-9) << name << " (histogram median)";
      for (int64_t T : c.tokens) {
        const auto x = random_values(T * c.K, uint32_t(T * 31 + c.K));
        for (Activation act : c.acts) {
          std::vector<float> results[2];
          int i = 0;
          for (Backend* be : {cpu_.get(), gpu_.get()}) {
            auto xt = upload(*be, x, T, c.K);
            auto out = empty(*be, T, c.N);
            be->linear(out.t, xt.t, be == cpu_.get() ? *cpu_w : *gpu_w, act);
            results[i++] = download(*be, out.t);
          }
          expect_close(results[1], results[0], linear_tolerance(p, act), str(name, " T=", T, " act=", int(act)));
        }
      }
    }
  }
}

// The dp4a int8 GEMM (the fallback when cuBLASLt fails the load-time check), forced through the environment.
TEST_F(CudaVsCpu, Int8Dp4aFallbackAgainstCpu) {
  setenv("QUANTSERVE_CUDA_INT8_GEMM", "dp4a", 1);
  auto dp4a = make_cuda_backend(0);
  unsetenv("QUANTSERVE_CUDA_INT8_GEMM");
  for (auto [N, K] : {std::pair<int64_t, int64_t>{50, 36}, {130, 300}}) {
    const auto w = random_values(N * K, uint32_t(N + K), 0.05f);
    const auto bias = random_values(N, 15, 0.1f);
    const HostTensor wt{w.data(), DType::F32, N, K}, bt{bias.data(), DType::F32, N, 1};
    auto cpu_w = cpu_->make_linear(wt, &bt, Precision::kInt8, no_error());
    auto gpu_w = dp4a->make_linear(wt, &bt, Precision::kInt8, no_error());
    for (int64_t T : {1, 7, 65, 130}) {
      const auto x = random_values(T * K, uint32_t(T));
      std::vector<float> results[2];
      int i = 0;
      for (Backend* be : {cpu_.get(), dp4a.get()}) {
        auto xt = upload(*be, x, T, K);
        auto out = empty(*be, T, N);
        be->linear(out.t, xt.t, be == cpu_.get() ? *cpu_w : *gpu_w, Activation::kGeluErf);
        results[i++] = download(*be, out.t);
      }
      expect_close(results[1], results[0], 1e-4, str("dp4a int8 N=", N, " K=", K, " T=", T));
    }
  }
}

// Loading quantizes on the device and frees each original before the next: the peak is the model so far plus
// one original tensor (plus small temporaries), never the whole fp32 model.
TEST_F(CudaVsCpu, QuantizeOnDevicePeakMemory) {
  gpu_->synchronize();
  const size_t before = gpu_->memory_info().peak_bytes;
  const int64_t N = 1024, K = 2048, layers = 6;
  const auto w = random_values(N * K, 13, 0.02f);
  std::vector<std::unique_ptr<LinearWeight>> model;
  size_t model_bytes = 0;
  for (int64_t l = 0; l < layers; ++l) {
    model.push_back(gpu_->make_linear(HostTensor{w.data(), DType::F32, N, K}, nullptr, Precision::kInt8, LinearOptions{}));
    model_bytes += model.back()->weight_bytes;
  }
  const size_t original = size_t(N * K) * sizeof(float);
  const size_t slack = size_t(1) << 20;  // scales padding, error accumulators, the int8 GEMM check's buffers
  const size_t peak = gpu_->memory_info().peak_bytes;
  EXPECT_LE(peak, before + model_bytes + original + slack)
      << "peak " << peak << " with " << before << " before, model " << model_bytes << ", one original " << original;
  EXPECT_LT(peak, before + size_t(layers) * original / 2) << "the fp32 originals were not freed as they were quantized";
}

TEST_F(CudaVsCpu, UnknownDeviceAndBadTokenAreErrors) {
  EXPECT_THROW(make_cuda_backend(1 << 20), Error);
  const auto table = random_values(10 * 8, 14);
  auto lin = gpu_->make_linear(HostTensor{table.data(), DType::F32, 10, 8}, nullptr, Precision::kFp32, no_error());
  BatchLayout layout = identity_layout(2);
  layout.token_ids = {3, 10};
  begin(*gpu_, layout);
  auto out = empty(*gpu_, 2, 8);
  try {
    gpu_->embedding(out.t, *lin, nullptr);
    FAIL() << "token id 10 of a 10-token vocabulary should be refused";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace qs
