// Shared CLI flags and model loading for the local commands (see cli_common.h).
#include "server/cli_common.h"

#include <omp.h>

#include <cstdio>

#include "kernels/error.h"

namespace qs::cli {

Precision parse_precision_arg(const std::string& name) {
  const auto p = parse_precision(name);
  QS_CHECK(p.has_value(), ErrorCode::kInvalidArgument, "unknown precision '", name, "'; expected one of ",
           precision_list());
  return *p;
}

void add_model_args(CLI::App* cmd, ModelArgs& args) {
  cmd->add_option("-m,--model", args.model, "Model: a Hugging Face directory or a .gguf file (default: SmolLM2-135M-Instruct)")
      ->envname("QUANTSERVE_MODEL");
  cmd->add_option("-p,--precision", args.precision, precision_list())
      ->envname("QUANTSERVE_PRECISION");
  cmd->add_option("-d,--device", args.device, "cpu, cuda, cuda:N or auto")->envname("QUANTSERVE_DEVICE");
  cmd->add_option("--threads", args.threads, "CPU threads (0 = all cores)")->envname("QUANTSERVE_THREADS");
  add_quantize_embeddings_option(cmd, args.quantize_embeddings);
  add_group_size_option(cmd, args.group_size);
}

void add_quantize_embeddings_option(CLI::App* cmd, std::string& choice) {
  cmd->add_flag("--quantize-embeddings{on}", choice,
                "In the int8 modes, quantize the embedding table and LM head too: on (the bare flag), off (fp16), "
                "or auto: on where the weights are in groups of 32 (--group-size), fp16 per row")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->envname("QUANTSERVE_QUANTIZE_EMBEDDINGS")
      ->type_name("[=auto|on|off]")
      ->default_str("auto");
}

std::optional<bool> quantize_embeddings_choice(const std::string& choice) {
  if (choice == "auto") return std::nullopt;
  return choice == "on";
}

void add_group_size_option(CLI::App* cmd, int64_t& group_size) {
  cmd->add_option("--group-size", group_size,
                  "int8-weight-only, int8, int8-smooth: one weight scale per this many inputs along K, 32 (GGUF "
                  "Q8_0 blocks, a Q8_0 tensor kept as it is; int8 and int8-smooth then also quantize activations "
                  "by groups of 32), 0 = one scale per output row (and per token), or auto: 32 where the backend "
                  "has group kernels (the CPU; W8A8 groups need AVX-512 VNNI) and the model's in-features are "
                  "whole groups, else 0")
      ->envname("QUANTSERVE_GROUP_SIZE")
      ->transform(CLI::Transformer({{"auto", std::to_string(kGroupSizeAuto)}}).description(""))
      ->type_name("auto|0|32")
      ->default_str("auto");
}

ModelArgs args_for_precision(const ModelArgs& args, const std::string& precision) {
  ModelArgs m = args;
  m.precision = precision;
  if (!has_weight_groups(parse_precision_arg(precision))) m.group_size = 0;
  return m;
}

void add_prefix_cache_option(CLI::App* cmd, bool& enabled) {
  // CLI11 reads "on"/"off" as a bool; the check keeps the other spellings it would take (yes, 1, ...) out.
  cmd->add_option("--prefix-cache", enabled,
                  "on: keep the KV blocks of finished prompts and reuse them for later prompts with the same "
                  "beginning (least recently used evicted first); off: compute every prompt")
      ->check(CLI::IsMember({"on", "off"}))
      ->envname("QUANTSERVE_PREFIX_CACHE")
      ->default_str("on");
}

LoadedEngine load_model_for_cli(const ModelArgs& args, bool quiet, const EngineOptions& engine) {
  if (args.threads > 0) omp_set_num_threads(args.threads);
  LoadEngineOptions o;
  o.model_path = args.model;
  o.device = args.device;
  o.load.precision = parse_precision_arg(args.precision);
  o.load.quantize_embeddings = quantize_embeddings_choice(args.quantize_embeddings);
  o.load.group_size = args.group_size;
  o.engine = engine;
  LoadedEngine loaded = load_engine(o);
  if (!quiet) {
    const LoadReport& r = loaded.engine->model().report();
    const std::string groups = r.group_size ? " (groups of " + std::to_string(r.group_size) + ")" : "";
    std::fprintf(stderr, "[loaded %s (%s, %s) as %s%s on %s: %.1f MB of weights (%.1f MB in fp32), %.2f s]\n",
                 loaded.engine->model().config().name.c_str(), architecture_name(r.arch), r.format.c_str(),
                 precision_name(r.precision), groups.c_str(), r.device.c_str(), double(r.weight_bytes) / 1e6,
                 double(r.original_bytes) / 1e6, r.load_seconds);
  }
  return loaded;
}

void add_sampling_args(CLI::App* cmd, SamplingArgs& args) {
  cmd->add_option("-n,--max-new-tokens", args.max_new_tokens, "Tokens to generate at most")->check(CLI::PositiveNumber);
  cmd->add_option("-t,--temperature", args.temperature, "0 = greedy")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-k", args.top_k, "Keep the k most likely tokens (0 = off)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", args.top_p, "Nucleus sampling mass (1 = off)")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--repetition-penalty", args.repetition_penalty, "1 = off");
  cmd->add_option("-s,--seed", args.seed, "Seed that makes sampling reproducible");
  cmd->add_option("--stop", args.stop, "Stop sequence (repeatable)");
  cmd->add_flag("--ignore-eos", args.ignore_eos, "Keep generating past the end-of-sequence token");
}

SamplingParams to_sampling_params(const SamplingArgs& a) {
  SamplingParams p;
  p.max_new_tokens = a.max_new_tokens;
  p.temperature = a.temperature;
  p.top_k = a.top_k;
  p.top_p = a.top_p;
  p.repetition_penalty = a.repetition_penalty;
  if (a.seed >= 0) p.seed = uint64_t(a.seed);
  p.stop = a.stop;
  p.ignore_eos = a.ignore_eos;
  return p;
}

}  // namespace qs::cli
