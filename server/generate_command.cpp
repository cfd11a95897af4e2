// `quantserve generate`: load a model, generate from a prompt on the local device, print the text.
#include <cstdio>
#include <string>
#include <vector>

#include "engine/load_engine.h"
#include "kernels/error.h"
#include "server/cli_common.h"
#include "server/commands.h"

namespace qs::cli {

void add_generate_command(CLI::App& app) {
  struct Args {
    ModelArgs model;
    SamplingArgs sampling;
    std::vector<std::string> prompt;
    bool raw = false;
    bool quiet = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text from a prompt on this machine");
  add_model_args(cmd, args->model);
  add_sampling_args(cmd, args->sampling);
  cmd->add_flag("--raw", args->raw, "Do not apply the model's chat template to the prompt");
  cmd->add_flag("-q,--quiet", args->quiet, "Print only the generated text");
  cmd->add_option("prompt", args->prompt, "The prompt (words are joined with spaces)")->required();
  cmd->callback([args] {
    std::string prompt;
    for (const auto& w : args->prompt) prompt += (prompt.empty() ? "" : " ") + w;
    LoadedEngine loaded = load_model_for_cli(args->model, args->quiet);
    Engine& engine = *loaded.engine;
    const bool chat = !args->raw && !engine.model().config().chat_template.empty();
    const std::string text = chat ? engine.apply_chat_template(prompt) : prompt;
    std::vector<int32_t> ids = engine.tokenizer().encode(text);
    if (engine.tokenizer().add_bos() && engine.tokenizer().bos_id() >= 0) ids.insert(ids.begin(), engine.tokenizer().bos_id());
    const SamplingParams params = to_sampling_params(args->sampling);
    if (!args->quiet && !chat) std::fputs(prompt.c_str(), stdout);
    bool done = false;
    GenerationEvent last;
    engine.submit(ids, params, [&](const GenerationEvent& ev) {
      std::fputs(ev.text.c_str(), stdout);
      std::fflush(stdout);
      if (ev.finish != FinishReason::kNone) {
        done = true;
        last = ev;
      }
    });
    while (!done && engine.has_work()) engine.step();
    std::fputs("\n", stdout);
    QS_CHECK(last.finish != FinishReason::kError, ErrorCode::kInternal, "generation failed: ", last.error);
    if (!args->quiet) {
      const double decode_s = last.total_seconds - last.first_token_seconds;
      std::fprintf(stderr, "[%s, %s: %d prompt tokens, %d generated, finish %s; time to first token %.1f ms, %.1f tokens/s]\n",
                   precision_name(engine.model().report().precision), engine.model().report().device.c_str(),
                   last.prompt_tokens, last.generated_tokens, finish_reason_name(last.finish),
                   last.first_token_seconds * 1e3,
                   last.generated_tokens > 1 && decode_s > 0 ? (last.generated_tokens - 1) / decode_s : 0.0);
    }
  });
}

}  // namespace qs::cli
