// Conformance on the GPU: the tiny random-initialised fixtures of every architecture (tests/fixtures/models/*)
// loaded on the CUDA backend in fp32, fp16, bf16, int8 and int8-weight-only and compared with transformers'
// logits and greedy continuations (reference.json), as tests/conformance/test_conformance.cpp does on the CPU;
// and decode steps replayed from CUDA graphs against the same steps without graphs. Label gpu; every test
// skips itself where no CUDA device is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/load_engine.h"
#include "engine/model_file.h"
#include "kernels/backend.h"
#include "kernels/error.h"
#include "tests/conformance/fixture_reference.h"

namespace qs {
namespace {

using namespace conformance;

#define SKIP_WITHOUT_GPU()                                               \
  do {                                                                   \
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device on this machine"; \
  } while (0)


// The CPU conformance bounds (tests/conformance/test_conformance.cpp): the GPU computes the same quantization
// with the same formulas, so it is held to the same agreement with transformers.
const Bounds kBounds[] = {
    {Precision::kFp16, 0.98, 2e-4},
    {Precision::kBf16, 0.85, 6e-3},
    {Precision::kInt8WeightOnly, 0.70, 4e-2},
    {Precision::kInt8, 0.75, 6e-2},
};


// QUANTSERVE_CUDA_GRAPHS is read when a CUDA backend is made; this sets it for the backends made in a scope.
class GraphsEnv {
 public:
  explicit GraphsEnv(bool on) {
    if (const char* v = std::getenv("QUANTSERVE_CUDA_GRAPHS")) saved_ = v, had_ = true;
    setenv("QUANTSERVE_CUDA_GRAPHS", on ? "1" : "0", 1);
  }
  ~GraphsEnv() {
    if (had_) setenv("QUANTSERVE_CUDA_GRAPHS", saved_.c_str(), 1);
    else unsetenv("QUANTSERVE_CUDA_GRAPHS");
  }

 private:
  std::string saved_;
  bool had_ = false;
};

LoadedEngine load(const std::string& name, Precision p, bool graphs = true) {
  GraphsEnv env(graphs);
  LoadEngineOptions o;
  o.model_path = kFixtures + name;
  o.device = "cuda";
  o.load.precision = p;
  return load_engine(o);
}

class CudaConformance : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaConformance, Fp32LogitsMatchTransformers) {
  SKIP_WITHOUT_GPU();
  const Reference ref = read_reference(kFixtures + GetParam());
  LoadedEngine e = load(GetParam(), Precision::kFp32);
  auto& model = const_cast<Model&>(e.engine->model());
  EXPECT_EQ(model.backend().name().rfind("cuda", 0), 0u);
  const Agreement a = compare(run_logits(model, ref.sequences), ref.logits);
  // cuBLASLt fp32 (no TF32) and fp32 attention: the same bound as the CPU, with room for summation order.
  EXPECT_LE(a.max_rel_error, 2e-4) << GetParam();
  EXPECT_EQ(a.top1, 1.0);
}

TEST_P(CudaConformance, Fp32ChunkedPrefillMatches) {
  SKIP_WITHOUT_GPU();
  const Reference ref = read_reference(kFixtures + GetParam());
  LoadedEngine e = load(GetParam(), Precision::kFp32);
  auto& model = const_cast<Model&>(e.engine->model());
  const Agreement a = compare(run_logits(model, ref.sequences, /*chunk=*/5), ref.logits);
  EXPECT_LE(a.max_rel_error, 2e-4) << GetParam();
}

TEST_P(CudaConformance, Fp32GreedyMatchesTransformers) {
  // Greedy decoding goes through decode steps, i.e. through the CUDA graphs (bucket 1).
  SKIP_WITHOUT_GPU();
  const Reference ref = read_reference(kFixtures + GetParam());
  LoadedEngine e = load(GetParam(), Precision::kFp32);
  for (const auto& g : ref.greedy) {
    SamplingParams p;
    p.temperature = 0;
    p.max_new_tokens = int32_t(g.expected.size());
    const GenerateResult r = generate_once(*e.engine, g.prompt, p);
    EXPECT_EQ(r.token_ids, g.expected) << GetParam();
  }
}

TEST_P(CudaConformance, GreedyIsTheSameInOneBatch) {
  // All prompts at once (continuous batching; decode steps padded to graph buckets 2, 4, ...).
  SKIP_WITHOUT_GPU();
  const Reference ref = read_reference(kFixtures + GetParam());
  LoadedEngine e = load(GetParam(), Precision::kFp32);
  const std::vector<std::vector<int32_t>> got = greedy_in_one_batch(*e.engine, ref.greedy);
  for (size_t i = 0; i < ref.greedy.size(); ++i) EXPECT_EQ(got[i], ref.greedy[i].expected) << GetParam() << " #" << i;
  EXPECT_EQ(e.engine->stats().kv_blocks_used, 0);
}

TEST_P(CudaConformance, QuantizedPrecisionsStayWithinBounds) {
  SKIP_WITHOUT_GPU();
  const Reference ref = read_reference(kFixtures + GetParam());
  for (const Bounds& b : kBounds) {
    LoadedEngine e = load(GetParam(), b.precision);
    auto& model = const_cast<Model&>(e.engine->model());
    const Agreement a = compare(run_logits(model, ref.sequences), ref.logits);
    std::printf("[cuda conformance] %-13s %-17s top1 %.4f  mean KL %.3e  max rel err %.3e  weights %zu B\n",
                GetParam().c_str(), precision_name(b.precision), a.top1, a.mean_kl, a.max_rel_error,
                model.report().weight_bytes);
    EXPECT_GE(a.top1, b.min_top1) << precision_name(b.precision);
    EXPECT_LE(a.mean_kl, b.max_kl) << precision_name(b.precision);
  }
}

// Decode steps of S sequences with CUDA graphs (padded to the bucket, replayed from the second step of a
// bucket on) against the same steps with graphs off: the same logits up to the GEMMs' summation order (the
// padded pass multiplies more rows, for which cuBLASLt may pick another algorithm).
TEST_P(CudaConformance, DecodeStepsWithGraphsMatchWithout) {
  SKIP_WITHOUT_GPU();
  const Reference ref = read_reference(kFixtures + GetParam());
  struct Case {
    Precision precision;
    double tolerance;   // x max(1, max |logit|)
  };
  for (const Case c : {Case{Precision::kFp32, 1e-4}, Case{Precision::kFp16, 2e-3}, Case{Precision::kInt8, 2e-3},
                       Case{Precision::kInt8WeightOnly, 2e-3}}) {
    LoadedEngine with = load(GetParam(), c.precision, /*graphs=*/true);
    LoadedEngine without = load(GetParam(), c.precision, /*graphs=*/false);
    auto& mg = const_cast<Model&>(with.engine->model());
    auto& me = const_cast<Model&>(without.engine->model());
    const ModelConfig& cfg = mg.config();
    const int64_t V = cfg.vocab_size, bs = 16, steps = 6;
    for (int64_t S : {1, 3, 6, 9}) {   // buckets 1, 4, 8 and 16 (int8 weight-only: GEMV up to 8, GEMM above)
      KvCacheConfig kc{cfg.num_layers, 8 * S, bs, cfg.num_kv_heads, cfg.head_dim};
      auto cache_g = mg.backend().make_kv_cache(kc);
      auto cache_e = me.backend().make_kv_cache(kc);
      // Prefill S prompts (the fixture's sequences, cycled, first 5 tokens) in one pass on each.
      std::vector<std::vector<int32_t>> tokens(static_cast<size_t>(S)), tables(static_cast<size_t>(S));
      BatchLayout prefill;
      for (int64_t s = 0; s < S; ++s) {
        const auto& src = ref.sequences[size_t(s) % ref.sequences.size()];
        tokens[size_t(s)].assign(src.begin(), src.begin() + std::min<ptrdiff_t>(5, ptrdiff_t(src.size())));
        for (int64_t b = 0; b < 8; ++b) tables[size_t(s)].push_back(int32_t(s * 8 + b));
        for (size_t p = 0; p < tokens[size_t(s)].size(); ++p) {
          prefill.token_ids.push_back(tokens[size_t(s)][p]);
          prefill.positions.push_back(int32_t(p));
          prefill.seq_of_token.push_back(int32_t(s));
        }
        prefill.logit_rows.push_back(int32_t(prefill.token_ids.size()) - 1);
        prefill.block_tables.push_back(tables[size_t(s)]);
        prefill.seq_lens.push_back(int32_t(tokens[size_t(s)].size()));
      }
      std::vector<float> lg, le;
      mg.forward(prefill, *cache_g, lg);
      me.forward(prefill, *cache_e, le);
      for (int64_t step = 0; step < steps; ++step) {
        // Next token of each sequence: the argmax of the reference (no graphs) run, fed to both.
        BatchLayout decode;
        for (int64_t s = 0; s < S; ++s) {
          const float* row = le.data() + s * V;
          tokens[size_t(s)].push_back(int32_t(std::max_element(row, row + V) - row));
          const int32_t pos = int32_t(tokens[size_t(s)].size()) - 1;
          decode.token_ids.push_back(tokens[size_t(s)].back());
          decode.positions.push_back(pos);
          decode.seq_of_token.push_back(int32_t(s));
          decode.logit_rows.push_back(int32_t(s));
          decode.block_tables.push_back(tables[size_t(s)]);
          decode.seq_lens.push_back(pos + 1);
        }
        mg.forward(decode, *cache_g, lg);
        me.forward(decode, *cache_e, le);
        ASSERT_EQ(lg.size(), size_t(S * V));
        ASSERT_EQ(le.size(), size_t(S * V));
        double max_diff = 0, max_ref = 1;
        for (size_t i = 0; i < le.size(); ++i) {
          max_diff = std::max(max_diff, double(std::fabs(lg[i] - le[i])));
          max_ref = std::max(max_ref, double(std::fabs(le[i])));
        }
        EXPECT_LE(max_diff, c.tolerance * max_ref)
            << GetParam() << " " << precision_name(c.precision) << " S=" << S << " step " << step;
      }
    }
  }
}

// Every architecture, Gemma 3 (GeGLU, QK-norm, the embedding scale, sliding windows over one block table),
// Qwen3 (QK-norm) and Mistral (sliding windows, its tables giving back the blocks before the window) included.
INSTANTIATE_TEST_SUITE_P(Fixtures, CudaConformance, ::testing::ValuesIn(fixture_models()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace qs
