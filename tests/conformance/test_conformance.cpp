// Conformance: the engine against Hugging Face transformers' logits and greedy continuations, on the tiny
// random-initialised fixtures of every architecture, in every precision on the CPU backend.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/load_engine.h"
#include "engine/model_file.h"
#include "kernels/cpu/gemv.h"
#include "kernels/error.h"
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
    // int8-weight-only with one scale per 32 inputs (Q8_0 blocks), its tables quantized too (the default with
    // groups): measured top1 >= 0.783 (llama_untied, 0.739 per row), mean KL <= 3.13e-2 (llama; 1.93e-2 with fp16
    // tables).
    {Precision::kInt8WeightOnly, 0.60, 4e-2, kInt8WeightGroup},
    // W8A8 with weights and activations by groups of 32 (VNNI CPUs; skipped elsewhere), the embedding table and LM
    // head quantized too as groups make them by default (LoadOptions::quantize_embeddings). int8: measured top1 >=
    // 0.739 (llama_untied; 0.826 with the tables in fp16, 0.783 per row and token), mean KL <= 4.57e-2 (llama;
    // 2.89e-2 with fp16 tables, 4.04e-2 per row): these random tables have no Q8_0 blocks to keep, so their rounding
    // shows here, where the default model's Q8_0 table costs nothing (docs/QUANTIZATION.md). int8-smooth:
    // top1 >= 0.783 (mistral), mean KL <= 4.42e-2 (gpt2; 5.37e-2 with fp16 tables, 3.35e-2 per row: smoothing's
    // factors were chosen for per-token activations, and these random weights have no outlier channels to confine).
    {Precision::kInt8, 0.70, 6e-2, kInt8WeightGroup},
    {Precision::kInt8Smooth, 0.60, 7e-2, kInt8WeightGroup},
};


LoadedEngine load(const std::string& name, Precision p, int64_t group_size = 0) {
  LoadEngineOptions o;
  o.model_path = kFixtures + name;
  o.device = "cpu";
  o.load.precision = p;
  o.load.group_size = group_size;
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
    if (b.group_size != 0 && b.precision != Precision::kInt8WeightOnly && !cpu::gemv_vnni_available()) continue;
    LoadedEngine e = load(GetParam(), b.precision, b.group_size);
    auto& model = const_cast<Model&>(e.engine->model());
    const Agreement a = compare(run_logits(model, ref.sequences), ref.logits);
    std::printf("[conformance] %-13s %-17s group %3lld top1 %.4f  mean KL %.3e  max rel err %.3e  weights %zu B\n",
                GetParam().c_str(), precision_name(b.precision), static_cast<long long>(b.group_size), a.top1,
                a.mean_kl, a.max_rel_error, model.report().weight_bytes);
    EXPECT_GE(a.top1, b.min_top1) << precision_name(b.precision) << " group " << b.group_size;
    EXPECT_LE(a.mean_kl, b.max_kl) << precision_name(b.precision) << " group " << b.group_size;
  }
}

// --group-size is refused at load, before any weight is read, wherever it cannot apply; a fixture with 96 MLP
// inputs (llama_untied) loads in groups since every K is a multiple of 32.
TEST(GroupSize, RefusedWhereItCannotApply) {
  const auto refused = [](Precision p, int64_t group_size, ErrorCode code, const std::string& words) {
    try {
      load("llama_untied", p, group_size);
      ADD_FAILURE() << precision_name(p) << " with group " << group_size << " was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  };
  refused(Precision::kInt8WeightOnly, 64, ErrorCode::kInvalidArgument, "--group-size 64 is not built");
  refused(Precision::kInt8WeightOnly, -32, ErrorCode::kInvalidArgument, "--group-size -32 is not built");
  refused(Precision::kInt8Mixed, kInt8WeightGroup, ErrorCode::kInvalidArgument, "not to int8-mixed");
  refused(Precision::kFp32, kInt8WeightGroup, ErrorCode::kInvalidArgument, "not to fp32");
  if (!cpu::gemv_vnni_available()) {
    refused(Precision::kInt8, kInt8WeightGroup, ErrorCode::kUnsupported, "no group-wise int8 kernels");
  }
  LoadedEngine e = load("llama_untied", Precision::kInt8WeightOnly, kInt8WeightGroup);
  EXPECT_EQ(e.engine->model().report().group_size, kInt8WeightGroup);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Conformance, ::testing::ValuesIn(fixture_models()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace qs
