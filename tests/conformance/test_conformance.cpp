// Conformance: the engine against Hugging Face transformers' logits and greedy continuations, on the tiny
// random-initialised fixtures of every architecture, in every precision on the CPU backend.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/load_engine.h"
#include "engine/model_file.h"
#include "tests/conformance/fixture_reference.h"

namespace qs {
namespace {

using namespace conformance;


// Measured on these fixtures (see tests/conformance/README.md) and set with headroom. The fixtures are
// random-initialised with large weights, which is harsher on quantization than a trained model.
const Bounds kBounds[] = {
    {Precision::kFp16, 0.98, 2e-4},
    {Precision::kBf16, 0.85, 6e-3},
    {Precision::kInt8WeightOnly, 0.70, 4e-2},
    {Precision::kInt8, 0.75, 6e-2},
    {Precision::kInt8Mixed, 0.75, 6e-2},
    {Precision::kInt8Naive, 0.70, 6e-2},
    {Precision::kInt8Smooth, 0.60, 6e-2},   // measured: top1 >= 0.652, mean KL <= 3.7e-2 (llama_untied)
    // 4-bit round-to-nearest of these large random weights (no GGUF blocks to keep): measured top1 >= 0.304
    // (mistral), mean KL <= 1.26 (llama); a broken kernel scores near 0 top1 over these vocabularies.
    {Precision::kInt4WeightOnly, 0.25, 1.6},
};


LoadedEngine load(const std::string& name, Precision p) {
  LoadEngineOptions o;
  o.model_path = kFixtures + name;
  o.device = "cpu";
  o.load.precision = p;
  return load_engine(o);
}

class Conformance : public ::testing::TestWithParam<std::string> {};

TEST_P(Conformance, Fp32LogitsMatchTransformers) {
  const Reference ref = read_reference(kFixtures + GetParam());
  LoadedEngine e = load(GetParam(), Precision::kFp32);
  auto& model = const_cast<Model&>(e.engine->model());
  const Agreement a = compare(run_logits(model, ref.sequences), ref.logits);
  EXPECT_LE(a.max_rel_error, 1e-4) << GetParam();
  EXPECT_EQ(a.top1, 1.0);
}

TEST_P(Conformance, Fp32ChunkedPrefillMatches) {
  const Reference ref = read_reference(kFixtures + GetParam());
  LoadedEngine e = load(GetParam(), Precision::kFp32);
  auto& model = const_cast<Model&>(e.engine->model());
  const Agreement a = compare(run_logits(model, ref.sequences, /*chunk=*/5), ref.logits);
  EXPECT_LE(a.max_rel_error, 1e-4) << GetParam();
}

TEST_P(Conformance, Fp32GreedyMatchesTransformers) {
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

TEST_P(Conformance, GreedyIsTheSameInOneBatch) {
  // All prompts submitted together (continuous batching) give what each gives alone.
  const Reference ref = read_reference(kFixtures + GetParam());
  LoadedEngine e = load(GetParam(), Precision::kFp32);
  const std::vector<std::vector<int32_t>> got = greedy_in_one_batch(*e.engine, ref.greedy);
  for (size_t i = 0; i < ref.greedy.size(); ++i) EXPECT_EQ(got[i], ref.greedy[i].expected) << GetParam() << " #" << i;
  EXPECT_EQ(e.engine->stats().kv_blocks_used, 0);
}

TEST_P(Conformance, QuantizedPrecisionsStayWithinBounds) {
  const Reference ref = read_reference(kFixtures + GetParam());
  for (const Bounds& b : kBounds) {
    LoadedEngine e = load(GetParam(), b.precision);
    auto& model = const_cast<Model&>(e.engine->model());
    const Agreement a = compare(run_logits(model, ref.sequences), ref.logits);
    std::printf("[conformance] %-13s %-17s top1 %.4f  mean KL %.3e  max rel err %.3e  weights %zu B\n",
                GetParam().c_str(), precision_name(b.precision), a.top1, a.mean_kl, a.max_rel_error,
                model.report().weight_bytes);
    EXPECT_GE(a.top1, b.min_top1) << precision_name(b.precision);
    EXPECT_LE(a.mean_kl, b.max_kl) << precision_name(b.precision);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Conformance, ::testing::ValuesIn(fixture_models()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace qs
