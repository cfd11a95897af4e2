// `quantserve bench`: local (no server) prefill and decode throughput, latency and peak memory for a model
// across precisions and batch sizes, printed and written as JSON.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <thread>

#include "engine/kv_cache.h"
#include "kernels/error.h"
#include "server/cli_common.h"
#include "server/commands.h"

namespace qs::cli {

namespace {
using Clock = std::chrono::steady_clock;

struct BenchPoint {
  int64_t batch = 0;
  double prefill_tokens_per_second = 0;
  double decode_tokens_per_second = 0;
  double time_to_first_token_ms = 0;      // mean over the batch
  double inter_token_latency_ms = 0;      // decode step time
  double total_seconds = 0;
};

BenchPoint run_point(Engine& engine, int64_t batch, int64_t prompt_tokens, int64_t new_tokens, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int64_t V = engine.model().config().vocab_size;
  std::uniform_int_distribution<int32_t> pick(0, int32_t(V - 1));
  SamplingParams p;
  p.temperature = 0;
  p.max_new_tokens = int32_t(new_tokens);
  p.ignore_eos = true;
  int64_t first_tokens = 0, finished = 0;
  double ttft_sum = 0;
  Clock::time_point all_first, start = Clock::now();
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<int32_t> ids(static_cast<size_t>(prompt_tokens));
    for (auto& id : ids) id = pick(rng);
    engine.submit(ids, p, [&](const GenerationEvent& ev) {
      if (ev.generated_tokens == 1 || (ev.finish != FinishReason::kNone && ev.generated_tokens <= 1)) {
        ttft_sum += ev.first_token_seconds;
        if (++first_tokens == batch) all_first = Clock::now();
      }
      if (ev.finish != FinishReason::kNone) ++finished;
    });
  }
  while (engine.has_work()) engine.step();
  const auto end = Clock::now();
  BenchPoint r;
  r.batch = batch;
  const double prefill_s = std::chrono::duration<double>(all_first - start).count();
  const double decode_s = std::chrono::duration<double>(end - all_first).count();
  r.prefill_tokens_per_second = double(batch * prompt_tokens) / prefill_s;
  r.decode_tokens_per_second = new_tokens > 1 ? double(batch * (new_tokens - 1)) / decode_s : 0;
  r.time_to_first_token_ms = ttft_sum / double(batch) * 1e3;
  r.inter_token_latency_ms = new_tokens > 1 ? decode_s / double(new_tokens - 1) * 1e3 : 0;
  r.total_seconds = std::chrono::duration<double>(end - start).count();
  return r;
}
}  // namespace

void add_bench_command(CLI::App& app) {
  struct Args {
    ModelArgs model;
    std::vector<std::string> precisions{"fp32"};
    std::vector<int64_t> batches{1};
    int64_t prompt_tokens = 128;
    int64_t new_tokens = 64;
    std::string output;
    std::string kv_cache_dtype;   // empty: the backend's default
    bool prefix_cache = true;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("bench", "Local prefill/decode throughput and peak memory (no server)");
  add_model_args(cmd, args->model);
  cmd->add_option("--precisions", args->precisions, "Precisions to measure (comma-separated)")->delimiter(',');
  cmd->add_option("--batch", args->batches, "Batch sizes (comma-separated)")->delimiter(',');
  cmd->add_option("--prompt-tokens", args->prompt_tokens, "Prompt length in tokens")->check(CLI::PositiveNumber);
  cmd->add_option("--new-tokens", args->new_tokens, "Generated tokens per sequence")->check(CLI::PositiveNumber);
  cmd->add_option("-o,--output", args->output, "Write the results as JSON to this file");
  cmd->add_option("--kv-cache-dtype", args->kv_cache_dtype,
                  std::string("KV-cache storage: ") + kKvCacheDtypeNames + " (default: the backend's, fp16 on the CPU)");
  add_prefix_cache_option(cmd, args->prefix_cache);
  cmd->callback([args] {
    std::optional<DType> kv_cache_dtype;
    if (!args->kv_cache_dtype.empty()) {
      kv_cache_dtype = parse_kv_cache_dtype(args->kv_cache_dtype);
      QS_CHECK(kv_cache_dtype.has_value(), ErrorCode::kInvalidArgument, "--kv-cache-dtype '",
               args->kv_cache_dtype.substr(0, 32), "' is not one of: ", kKvCacheDtypeNames);
    }
    nlohmann::json out = {{"tool", "quantserve bench"},
                          {"threads", int(std::thread::hardware_concurrency())},
                          {"prompt_tokens", args->prompt_tokens},
                          {"new_tokens", args->new_tokens},
                          {"prefix_cache", args->prefix_cache},
                          {"results", nlohmann::json::array()}};
    std::printf("%-17s %6s %14s %14s %10s %10s %12s %12s\n", "precision", "batch", "prefill tok/s", "decode tok/s",
                "TTFT ms", "ITL ms", "weights MB", "peak RSS MB");
    for (const auto& name : args->precisions) {
      const ModelArgs m = args_for_precision(args->model, name);
      EngineOptions eo;
      int64_t max_batch = 1;
      for (int64_t b : args->batches) max_batch = std::max(max_batch, b);
      eo.max_batch_size = max_batch;
      eo.max_batch_tokens = std::max<int64_t>(512, max_batch);
      eo.kv_cache_tokens = max_batch * (args->prompt_tokens + args->new_tokens);
      eo.prefix_cache = args->prefix_cache;
      eo.kv_cache_dtype = kv_cache_dtype;
      LoadedEngine loaded = load_model_for_cli(m, /*quiet=*/true, eo);
      Engine& engine = *loaded.engine;
      const LoadReport& report = engine.model().report();
      out["model"] = report.model_path;
      out["device"] = report.device;
      // CUDA graphs for decode steps are on unless QUANTSERVE_CUDA_GRAPHS=0 (an A/B switch; CPU: no graphs).
      const char* graphs = std::getenv("QUANTSERVE_CUDA_GRAPHS");
      const std::string g = graphs ? graphs : "";
      out["cuda_graphs"] = report.device.rfind("cuda", 0) == 0 && g != "0" && g != "off" && g != "false";
      run_point(engine, 1, std::min<int64_t>(args->prompt_tokens, 16), 4, 1);   // warm-up
      for (int64_t b : args->batches) {
        // Each point its own random prompts: none begins like an earlier one, so the prefix cache finds nothing.
        const BenchPoint r = run_point(engine, b, args->prompt_tokens, args->new_tokens, 42 + uint64_t(b));
        const MemoryInfo mem = engine.model().backend().memory_info();
        std::printf("%-17s %6lld %14.1f %14.1f %10.1f %10.2f %12.1f %12.1f\n", name.c_str(), (long long)b,
                    r.prefill_tokens_per_second, r.decode_tokens_per_second, r.time_to_first_token_ms,
                    r.inter_token_latency_ms, double(report.weight_bytes) / 1e6, double(mem.peak_bytes) / 1e6);
        std::fflush(stdout);
        out["results"].push_back({{"precision", name},
                                  {"batch", b},
                                  {"prefill_tokens_per_second", r.prefill_tokens_per_second},
                                  {"decode_tokens_per_second", r.decode_tokens_per_second},
                                  {"time_to_first_token_ms", r.time_to_first_token_ms},
                                  {"inter_token_latency_ms", r.inter_token_latency_ms},
                                  {"weight_bytes", report.weight_bytes},
                                  {"group_size", report.group_size},
                                  {"kv_cache_dtype", kv_cache_dtype_name(*engine.options().kv_cache_dtype)},
                                  {"original_bytes", report.original_bytes},
                                  {"load_seconds", report.load_seconds},
                                  {"quantize_seconds", report.quantize_seconds},
                                  {"load_peak_memory_bytes", report.peak_device_bytes},
                                  {"peak_memory_bytes", mem.peak_bytes},
                                  {"device_memory_used_bytes", mem.used_bytes},
                                  {"device_memory_total_bytes", mem.total_bytes},
                                  {"total_seconds", r.total_seconds}});
      }
    }
    if (!args->output.empty()) {
      std::ofstream f(args->output);
      QS_CHECK(f.good(), ErrorCode::kInvalidArgument, "cannot write '", args->output, "'");
      f << out.dump(2) << "\n";
    }
  });
}

}  // namespace qs::cli
