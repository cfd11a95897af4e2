// `quantserve perplexity`: perplexity of a text file under a model in one precision, windowed as Hugging Face's
// guide (the default) or llama.cpp's perplexity tool (--method llama.cpp) does.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "engine/kv_cache.h"
#include "engine/perplexity.h"
#include "kernels/error.h"
#include "server/cli_common.h"
#include "server/commands.h"

namespace qs::cli {

void add_perplexity_command(CLI::App& app) {
  struct Args {
    ModelArgs model;
    std::string file;
    int64_t context = 0;
    int64_t stride = 0;
    int64_t max_tokens = 0;
    std::string ids_file;
    std::string save_ids;
    std::string save_nll;
    std::string save_logits;
    std::string compare_to;
    std::string method = "sliding-window";
    std::string kv_cache_dtype = "fp32";
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("perplexity", "Sliding-window perplexity of a text file");
  add_model_args(cmd, args->model);
  auto* file_opt = cmd->add_option("-f,--file", args->file, "UTF-8 text file");
  auto* ids_opt = cmd->add_option("--ids-file", args->ids_file,
                                  "Score these token ids (a JSON array) instead of tokenizing a text file");
  file_opt->excludes(ids_opt);
  cmd->add_option("--save-ids", args->save_ids, "Write the scored token ids as a JSON array to this file");
  cmd->add_option("--save-nll", args->save_nll,
                  "Write each scored position's negative log-likelihood (nats, in scoring order) as a JSON array to "
                  "this file, to pair runs position by position");
  cmd->add_option("--save-logits", args->save_logits,
                  "Write each scored position's logits (the row it was predicted from) to this file: raw float32, "
                  "little-endian, one row of vocab_size per scored position, in --save-nll's order");
  cmd->add_option("--compare-to", args->compare_to,
                  "Also load the model in this precision (e.g. fp32) and report top-1 agreement and mean "
                  "KL(reference || this precision) over the scored positions");
  cmd->add_option("--context", args->context, "Window length in tokens (default: the model's context, at most 1024)");
  auto* stride_opt = cmd->add_option("--stride", args->stride, "Window stride in tokens (default: half the window)");
  cmd->add_option("--method", args->method,
                  "sliding-window (Hugging Face's guide: strided windows, every token scored once) or llama.cpp "
                  "(its perplexity tool: non-overlapping chunks of --context, BOS first when the vocabulary adds "
                  "one, the second half of each scored, the remainder dropped)")
      ->capture_default_str();
  cmd->add_option("--kv-cache-dtype", args->kv_cache_dtype,
                  "KV-cache storage of the model under test: fp32 (the default, so the figure is the precision's "
                  "alone), fp16 (what the CPU serves with), bf16 or int8; a --compare-to reference keeps fp32")
      ->capture_default_str();
  cmd->add_option("--max-tokens", args->max_tokens, "Score only the first N tokens of the text (0 = all)");
  cmd->add_flag("--json", args->json, "Print JSON (the perplexity is under \"perplexity\")");
  cmd->callback([args, stride_opt] {
    QS_CHECK(!args->file.empty() || !args->ids_file.empty(), ErrorCode::kInvalidArgument,
             "perplexity needs --file TEXT or --ids-file IDS.json");
    const PerplexityMethod method = parse_perplexity_method(args->method);
    QS_CHECK(method != PerplexityMethod::kLlamaCpp || stride_opt->count() == 0, ErrorCode::kInvalidArgument,
             "--stride does not apply to --method llama.cpp (it scores non-overlapping chunks of --context)");
    const std::optional<DType> kv_cache_dtype = parse_kv_cache_dtype(args->kv_cache_dtype);
    QS_CHECK(kv_cache_dtype.has_value(), ErrorCode::kInvalidArgument, "--kv-cache-dtype '",
             args->kv_cache_dtype.substr(0, 32), "' is not one of: ", kKvCacheDtypeNames);
    QS_CHECK(args->context == 0 || args->context >= 2, ErrorCode::kInvalidArgument,
             "--context must be at least 2 tokens, got ", args->context);
    QS_CHECK(args->stride >= 0, ErrorCode::kInvalidArgument, "--stride must be positive, got ", args->stride);
    const auto read_all = [](const std::string& path, const char* what) {
      std::ifstream in(path, std::ios::binary);
      QS_CHECK(in.good(), ErrorCode::kNotFound, "cannot read ", what, " '", path, "'");
      std::stringstream ss;
      ss << in.rdbuf();
      return ss.str();
    };
    // --save-ids and --save-nll: one JSON value on one line.
    const auto write_json = [](const std::string& path, const nlohmann::json& value) {
      std::ofstream f(path);
      QS_CHECK(f.good(), ErrorCode::kInvalidArgument, "cannot write '", path, "'");
      f << value.dump() << "\n";
      QS_CHECK(f.good(), ErrorCode::kInternal, "writing '", path, "' failed");
    };
    const std::string text = args->file.empty() ? std::string() : read_all(args->file, "text file");
    const auto load = [&](const std::string& precision, bool quiet) {
      ModelArgs m = args->model;
      m.precision = precision;
      // The --compare-to reference takes --group-size only if its precision has groups too.
      return load_model_for_cli(precision == args->model.precision ? m : args_for_precision(m, precision), quiet);
    };
    const auto token_ids = [&](const Tokenizer& tok, int64_t vocab) {
      std::vector<int32_t> ids;
      if (!args->ids_file.empty()) {
        const nlohmann::json j = nlohmann::json::parse(read_all(args->ids_file, "ids file"));
        QS_CHECK(j.is_array(), ErrorCode::kInvalidArgument, args->ids_file, ": expected a JSON array of token ids");
        for (const auto& v : j) {
          QS_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() < vocab,
                   ErrorCode::kInvalidArgument, args->ids_file, ": token id ", v.dump(), " is not in [0, ", vocab, ")");
          ids.push_back(v.get<int32_t>());
        }
      } else {
        ids = tok.encode(text, /*parse_special=*/false);
        if (tok.add_bos() && tok.bos_id() >= 0) ids.insert(ids.begin(), tok.bos_id());
      }
      if (args->max_tokens > 0 && int64_t(ids.size()) > args->max_tokens) ids.resize(size_t(args->max_tokens));
      return ids;
    };
    const auto windows = [&](const Model& model) {
      const int64_t context = args->context > 0 ? args->context : std::min<int64_t>(model.config().max_positions, 1024);
      if (method == PerplexityMethod::kLlamaCpp)
        return std::make_pair(std::min<int64_t>(context, model.config().max_positions), int64_t(0));
      return std::make_pair(context, args->stride > 0 ? args->stride : context / 2);
    };
    // llama.cpp puts BOS in each chunk's first place when its vocabulary adds one (tokenizer.ggml.add_bos_token).
    const auto options = [&](const Tokenizer& tok) {
      PerplexityOptions o;
      o.method = method;
      if (tok.add_bos() && tok.bos_id() >= 0) o.chunk_first_token = tok.bos_id();
      return o;
    };
    // The reference run first (its log-probabilities are kept), then the model under test compared with it.
    PerplexityTrace reference;
    PerplexityResult reference_result;
    if (!args->compare_to.empty()) {
      LoadedEngine ref = load(args->compare_to, /*quiet=*/true);
      auto& model = const_cast<Model&>(ref.engine->model());
      const auto [context, stride] = windows(model);
      reference.keep_logprobs = true;
      reference_result = compute_perplexity(model, token_ids(ref.engine->tokenizer(), model.config().vocab_size),
                                            context, stride, &reference, options(ref.engine->tokenizer()));
    }
    LoadedEngine loaded = load(args->model.precision, args->json);
    auto& model = const_cast<Model&>(loaded.engine->model());
    const std::vector<int32_t> ids = token_ids(loaded.engine->tokenizer(), model.config().vocab_size);
    if (!args->save_ids.empty()) write_json(args->save_ids, nlohmann::json(ids));
    const auto [context, stride] = windows(model);
    PerplexityTrace trace;
    trace.reference = args->compare_to.empty() ? nullptr : &reference;
    trace.keep_logits = !args->save_logits.empty();
    PerplexityOptions opts = options(loaded.engine->tokenizer());
    opts.kv_cache_dtype = *kv_cache_dtype;
    const PerplexityResult r = compute_perplexity(model, ids, context, stride, &trace, opts);
    if (!args->save_nll.empty()) write_json(args->save_nll, nlohmann::json(trace.nll));
    if (!args->save_logits.empty()) {
      std::ofstream f(args->save_logits, std::ios::binary);
      f.write(reinterpret_cast<const char*>(trace.logits.data()), std::streamsize(trace.logits.size() * sizeof(float)));
      QS_CHECK(f.good(), ErrorCode::kInvalidArgument, "cannot write the logits to '", args->save_logits, "'");
    }
    const double agreement = trace.compared ? double(trace.top1_agree) / double(trace.compared) : 0.0;
    const double mean_kl = trace.compared ? trace.kl_sum / double(trace.compared) : 0.0;
    const NllDelta delta = paired_nll_delta(trace);
    if (args->json) {
      nlohmann::json j = {{"model", model.report().model_path},
                          {"precision", precision_name(model.report().precision)},
                          {"group_size", model.report().group_size},
                          {"device", model.report().device},
                          {"file", args->file.empty() ? args->ids_file : args->file},
                          {"tokens", ids.size()},
                          {"context", context},
                          {"method", perplexity_method_name(method)},
                          // llama.cpp's chunks do not overlap: they advance by the context.
                          {"stride", method == PerplexityMethod::kLlamaCpp ? context : stride},
                          {"windows", r.windows},
                          {"predicted_tokens", r.predicted_tokens},
                          {"mean_nll", r.mean_nll},
                          {"perplexity", r.perplexity},
                          {"nll_stderr", r.nll_stderr},
                          {"perplexity_stderr", r.perplexity_stderr},
                          {"seconds", r.seconds},
                          {"weight_bytes", model.report().weight_bytes},
                          {"kv_cache_dtype", kv_cache_dtype_name(opts.kv_cache_dtype)}};
      if (method == PerplexityMethod::kLlamaCpp) {
        j["chunk_first_token"] = opts.chunk_first_token >= 0 ? nlohmann::json(opts.chunk_first_token)
                                                              : nlohmann::json(nullptr);
        j["dropped_tokens"] = int64_t(ids.size()) - r.windows * context;
      }
      if (!args->compare_to.empty()) {
        j["compare_to"] = {{"precision", args->compare_to},
                           {"perplexity", reference_result.perplexity},
                           {"mean_nll", reference_result.mean_nll},
                           {"compared_positions", trace.compared},
                           // Paired per token: this model's NLL minus the reference's at each position.
                           {"delta_mean_nll", delta.mean},
                           {"delta_mean_nll_stderr", delta.stderr_mean},
                           {"delta_perplexity_percent", delta.perplexity_percent},
                           {"delta_perplexity_percent_stderr", delta.perplexity_percent_stderr},
                           {"top1_agreement", agreement},
                           {"mean_kl", mean_kl},
                           {"max_kl", trace.kl_max}};
      }
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      if (opts.kv_cache_dtype != DType::F32) std::printf("KV cache in %s\n", kv_cache_dtype_name(opts.kv_cache_dtype));
      if (method == PerplexityMethod::kLlamaCpp) {
        std::printf("perplexity %.4f +/- %.4f (mean NLL %.5f over %lld tokens, llama.cpp's method: %lld chunks of "
                    "%lld, the second half of each scored, %lld tokens dropped; %.1f s)\n",
                    r.perplexity, r.perplexity_stderr, r.mean_nll, (long long)r.predicted_tokens, (long long)r.windows,
                    (long long)context, (long long)(int64_t(ids.size()) - r.windows * context), r.seconds);
      } else {
        std::printf("perplexity %.4f +/- %.4f (mean NLL %.5f over %lld tokens, %lld windows of %lld, stride %lld; "
                    "%.1f s)\n",
                    r.perplexity, r.perplexity_stderr, r.mean_nll, (long long)r.predicted_tokens, (long long)r.windows,
                    (long long)context, (long long)stride, r.seconds);
      }
      if (!args->compare_to.empty()) {
        std::printf("vs %s (perplexity %.4f): %+.3f%% +/- %.3f%% (paired per token), top-1 agreement %.2f%%, mean "
                    "KL %.5f nats (max %.4f) over %lld positions\n", args->compare_to.c_str(),
                    reference_result.perplexity, delta.perplexity_percent, delta.perplexity_percent_stderr,
                    100.0 * agreement, mean_kl, trace.kl_max, (long long)trace.compared);
      }
    }
  });
}

}  // namespace qs::cli
