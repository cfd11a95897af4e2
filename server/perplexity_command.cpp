// `quantserve perplexity`: sliding-window perplexity of a text file under a model in one precision.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

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
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("perplexity", "Sliding-window perplexity of a text file");
  add_model_args(cmd, args->model);
  cmd->add_option("-f,--file", args->file, "UTF-8 text file")->required();
  cmd->add_option("--context", args->context, "Window length in tokens (default: the model's context, at most 1024)");
  cmd->add_option("--stride", args->stride, "Window stride in tokens (default: half the window)");
  cmd->add_option("--max-tokens", args->max_tokens, "Score only the first N tokens of the text (0 = all)");
  cmd->add_flag("--json", args->json, "Print JSON (the perplexity is under \"perplexity\")");
  cmd->callback([args] {
    std::ifstream in(args->file, std::ios::binary);
    QS_CHECK(in.good(), ErrorCode::kNotFound, "cannot read text file '", args->file, "'");
    std::stringstream ss;
    ss << in.rdbuf();
    LoadedEngine loaded = load_model_for_cli(args->model, args->json);
    auto& model = const_cast<Model&>(loaded.engine->model());
    const Tokenizer& tok = loaded.engine->tokenizer();
    std::vector<int32_t> ids = tok.encode(ss.str(), /*parse_special=*/false);
    if (tok.add_bos() && tok.bos_id() >= 0) ids.insert(ids.begin(), tok.bos_id());
    if (args->max_tokens > 0 && int64_t(ids.size()) > args->max_tokens) ids.resize(size_t(args->max_tokens));
    const int64_t context = args->context > 0 ? args->context : std::min<int64_t>(model.config().max_positions, 1024);
    const int64_t stride = args->stride > 0 ? args->stride : context / 2;
    const PerplexityResult r = compute_perplexity(model, ids, context, stride);
    if (args->json) {
      nlohmann::json j = {{"model", model.report().model_path},
                          {"precision", precision_name(model.report().precision)},
                          {"device", model.report().device},
                          {"file", args->file},
                          {"tokens", ids.size()},
                          {"context", context},
                          {"stride", stride},
                          {"windows", r.windows},
                          {"predicted_tokens", r.predicted_tokens},
                          {"mean_nll", r.mean_nll},
                          {"perplexity", r.perplexity},
                          {"seconds", r.seconds},
                          {"weight_bytes", model.report().weight_bytes}};
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      std::printf("perplexity %.4f (mean NLL %.5f over %lld tokens, %lld windows of %lld, stride %lld; %.1f s)\n",
                  r.perplexity, r.mean_nll, (long long)r.predicted_tokens, (long long)r.windows, (long long)context,
                  (long long)stride, r.seconds);
    }
  });
}

}  // namespace qs::cli
