// `quantserve inspect`: per precision, the weight bytes (total, per tensor class, per tensor), quantization
// error of every tensor and load time — the memory/quality table users choose a precision by.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "kernels/error.h"
#include "server/cli_common.h"
#include "server/commands.h"

namespace qs::cli {

namespace {
nlohmann::json report_json(const LoadReport& r, bool tensors) {
  nlohmann::json j = {{"precision", precision_name(r.precision)},
                      {"group_size", r.group_size},
                      {"device", r.device},
                      {"weight_bytes", r.weight_bytes},
                      {"fp32_bytes", r.original_bytes},
                      {"compression", r.weight_bytes ? double(r.original_bytes) / double(r.weight_bytes) : 0.0},
                      {"load_seconds", r.load_seconds},
                      {"quantize_seconds", r.quantize_seconds},
                      {"bytes_by_class", r.bytes_by_class}};
  double worst_rel = 0, sum_rel = 0;
  int64_t quantized = 0;
  nlohmann::json list = nlohmann::json::array();
  for (const auto& t : r.tensors) {
    if (t.precision != Precision::kFp32) {
      worst_rel = std::max(worst_rel, t.error.rel_frobenius);
      sum_rel += t.error.rel_frobenius;
      ++quantized;
    }
    if (tensors) {
      list.push_back({{"name", t.name},
                      {"class", t.tensor_class},
                      {"precision", precision_name(t.precision)},
                      {"shape", t.shape},
                      {"bytes", t.bytes},
                      {"fp32_bytes", t.original_bytes},
                      {"max_abs_error", t.error.max_abs},
                      {"mean_abs_error", t.error.mean_abs},
                      {"median_abs_error", t.error.median_abs},
                      {"rel_frobenius_error", t.error.rel_frobenius}});
    }
  }
  j["mean_rel_frobenius_error"] = quantized ? sum_rel / double(quantized) : 0.0;
  j["max_rel_frobenius_error"] = worst_rel;
  if (tensors) j["tensors"] = list;
  return j;
}
}  // namespace

void add_inspect_command(CLI::App& app) {
  struct Args {
    ModelArgs model;
    std::vector<std::string> precisions;
    bool json = false;
    bool tensors = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("inspect", "Weight bytes and quantization error of a model in each precision");
  add_model_args(cmd, args->model);
  cmd->add_option("--precisions", args->precisions, "Precisions to load (default: all this device supports)")
      ->delimiter(',');
  cmd->add_flag("--json", args->json, "Print JSON (each precision's total under \"weight_bytes\")");
  cmd->add_flag("--tensors", args->tensors, "List every tensor's bytes and error (always in --json)");
  cmd->callback([args] {
    std::vector<std::string> names = args->precisions;
    if (names.empty()) {
      for (Precision p : all_precisions()) names.push_back(precision_name(p));
    }
    nlohmann::json out = {{"precisions", nlohmann::json::array()}};
    bool header = false;
    for (const auto& name : names) {
      const ModelArgs m = args_for_precision(args->model, name);
      const Precision p = parse_precision_arg(name);
      LoadedEngine loaded;
      try {
        loaded = load_model_for_cli(m, /*quiet=*/true);
      } catch (const Error& e) {
        if (e.code() != ErrorCode::kUnsupported || !args->precisions.empty()) throw;
        if (!args->json) std::printf("%-17s (skipped: %s)\n", precision_name(p), e.what());
        continue;
      }
      const Model& model = loaded.engine->model();
      const LoadReport& r = model.report();
      out["model"] = r.model_path;
      out["architecture"] = architecture_name(r.arch);
      out["format"] = r.format;
      // The shape a KV-cache budget is sized from: K and V take 2 * num_layers * num_kv_heads * head_dim values a
      // token (--kv-cache-bytes, bench/kv_cache_quality.py).
      const ModelConfig& c = model.config();
      out["shape"] = {{"vocab_size", c.vocab_size},       {"hidden_size", c.hidden_size},
                      {"num_layers", c.num_layers},       {"num_heads", c.num_heads},
                      {"num_kv_heads", c.num_kv_heads},   {"head_dim", c.head_dim},
                      {"intermediate_size", c.intermediate_size}, {"max_positions", c.max_positions},
                      {"sliding_window", c.sliding_window}};
      out["precisions"].push_back(report_json(r, args->json || args->tensors));
      if (args->json) continue;
      if (!header) {
        std::printf("model %s (%s, %s)\n\n", r.model_path.c_str(), architecture_name(r.arch), r.format.c_str());
        std::printf("%-17s %14s %8s %10s %10s %10s %10s %12s %12s %8s\n", "precision", "weight bytes", "vs fp32",
                    "embedding", "attention", "mlp", "norm", "mean relF", "max relF", "load s");
        header = true;
      }
      const auto cls = [&](const char* c) {
        const auto it = r.bytes_by_class.find(c);
        return double(it == r.bytes_by_class.end() ? 0 : it->second) / 1e6;
      };
      const auto j = report_json(r, false);
      std::printf("%-17s %14zu %7.2fx %9.1fM %9.1fM %9.1fM %9.2fM %12.3e %12.3e %8.2f\n", precision_name(p),
                  r.weight_bytes, double(r.original_bytes) / double(r.weight_bytes), cls("embedding") + cls("lm_head"),
                  cls("attention"), cls("mlp"), cls("norm"), j["mean_rel_frobenius_error"].get<double>(),
                  j["max_rel_frobenius_error"].get<double>(), r.load_seconds);
      if (args->tensors) {
        for (const auto& t : r.tensors) {
          std::printf("    %-52s %-10s %12zu B  max %.3e  mean %.3e  median %.3e  relF %.3e\n", t.name.c_str(),
                      t.tensor_class.c_str(), t.bytes, t.error.max_abs, t.error.mean_abs, t.error.median_abs,
                      t.error.rel_frobenius);
        }
      }
    }
    if (args->json) std::printf("%s\n", out.dump(2).c_str());
  });
}

}  // namespace qs::cli
