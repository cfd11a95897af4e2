// One call from a model path to a ready Engine: open the file, pick the backend, load and quantize, tokenizer.
#pragma once
#include <memory>
#include <string>

#include "engine/engine.h"

namespace qs {

// The default model (SmolLM2-135M-Instruct, GGUF) as fetched by scripts/setup.sh: $QUANTSERVE_DEFAULT_MODEL,
// else models/SmolLM2-135M-Instruct.Q4_1.gguf under the current directory or the source tree.
std::string default_model_path();

struct LoadedEngine {
  std::unique_ptr<Backend> backend;   // outlives the engine (declared first, destroyed last)
  std::unique_ptr<Engine> engine;
};

struct LoadEngineOptions {
  std::string model_path;             // empty = default_model_path()
  std::string device = "cpu";         // cpu, cuda, cuda:N, auto
  LoadOptions load;
  EngineOptions engine;
};

LoadedEngine load_engine(const LoadEngineOptions& options);

}  // namespace qs
