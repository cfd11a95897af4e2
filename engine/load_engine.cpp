// From a model path to a ready Engine (see load_engine.h).
#include "engine/load_engine.h"

#include <cstdlib>
#include <filesystem>

#include "engine/model_file.h"
#include "kernels/error.h"

namespace qs {

std::string default_model_path() {
  if (const char* env = std::getenv("QUANTSERVE_DEFAULT_MODEL"); env && *env) return env;
  const std::string rel = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (std::filesystem::exists(rel)) return rel;
#ifdef QS_SOURCE_DIR
  const std::string in_tree = std::string(QS_SOURCE_DIR) + "/" + rel;
  if (std::filesystem::exists(in_tree)) return in_tree;
#endif
  QS_FAIL(ErrorCode::kNotFound, "the default model ", rel, " is missing: run scripts/setup.sh to fetch it, or pass "
          "--model PATH");
}

LoadedEngine load_engine(const LoadEngineOptions& options) {
  const std::string path = options.model_path.empty() ? default_model_path() : options.model_path;
  LoadedEngine out;
  out.backend = make_backend(options.device);
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  {
    // The file (and its mappings) is only needed while loading.
    const auto file = ModelFile::open(path);
    QS_CHECK(!file->tokenizer_spec().empty(), ErrorCode::kInvalidModel, path, ": the model has no tokenizer "
             "(tokenizer.json, vocab.json + merges.txt, or GGUF tokenizer metadata)");
    tokenizer = std::make_unique<Tokenizer>(file->tokenizer_spec());
    model = Model::load(*file, *out.backend, options.load);
  }
  out.engine = std::make_unique<Engine>(std::move(model), std::move(tokenizer), options.engine);
  return out;
}

}  // namespace qs
