// Qwen2 / Qwen2.5: Llama with biases on q_proj, k_proj and v_proj (none on o_proj); its optional sliding window
// (use_sliding_window) comes through the config.
#include "engine/transformer.h"

namespace qs {

std::unique_ptr<Model> make_qwen2(const ModelFile& file, Backend& backend, const LoadOptions& options) {
  return make_llama_variant(file, backend, options, LlamaVariant{/*qkv_bias=*/true, /*o_bias=*/false,
                                                                 /*qk_norm=*/false});
}

}  // namespace qs
