// Mistral: Llama with sliding-window attention (config sliding_window: each token sees that many latest
// positions) over the paged cache, and no biases.
#include "engine/transformer.h"

namespace qs {

std::unique_ptr<Model> make_mistral(const ModelFile& file, Backend& backend, const LoadOptions& options) {
  return make_llama_variant(file, backend, options, LlamaVariant{false, false, false});
}

}  // namespace qs
