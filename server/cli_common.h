// Flags the local CLI commands share (model, precision, device, sampling) and the model loading they do.
#pragma once
#include <CLI/CLI.hpp>
#include <optional>
#include <string>

#include "engine/load_engine.h"

namespace qs::cli {

struct ModelArgs {
  std::string model;            // empty = the default model
  std::string precision = "fp32";
  std::string device = "cpu";
  int threads = 0;
  std::string quantize_embeddings = "auto";   // auto, on, off (LoadOptions::quantize_embeddings)
  int64_t group_size = kGroupSizeAuto;   // int8-weight-only: inputs per weight scale (auto, 0 = per row, 32)
};
// --group-size (QUANTSERVE_GROUP_SIZE): 0 or 32; 64 and 128 are refused by name (not built).
void add_group_size_option(CLI::App* cmd, int64_t& group_size);
// --quantize-embeddings[=auto|on|off] (QUANTSERVE_QUANTIZE_EMBEDDINGS), the bare flag meaning on; and what it
// means for LoadOptions::quantize_embeddings (nullopt for auto).
void add_quantize_embeddings_option(CLI::App* cmd, std::string& choice);
std::optional<bool> quantize_embeddings_choice(const std::string& choice);
// `args` loading `precision` instead, for commands that load several (bench, inspect, perplexity --compare-to):
// --group-size goes to the int8-weight-only loads only (a single load in another precision is refused instead).
ModelArgs args_for_precision(const ModelArgs& args, const std::string& precision);
void add_model_args(CLI::App* cmd, ModelArgs& args);
// --prefix-cache on|off (QUANTSERVE_PREFIX_CACHE), on by default: reuse the KV blocks of prompts' common prefixes.
void add_prefix_cache_option(CLI::App* cmd, bool& enabled);
// Loads with a one-line summary on stderr unless quiet.
LoadedEngine load_model_for_cli(const ModelArgs& args, bool quiet, const EngineOptions& engine = {});
Precision parse_precision_arg(const std::string& name);

struct SamplingArgs {
  int max_new_tokens = 64;
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  float repetition_penalty = 1.0f;
  int64_t seed = -1;
  std::vector<std::string> stop;
  bool ignore_eos = false;
};
void add_sampling_args(CLI::App* cmd, SamplingArgs& args);
SamplingParams to_sampling_params(const SamplingArgs& args);

}  // namespace qs::cli
