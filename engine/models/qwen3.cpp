// Qwen3: Llama with QK-norm (self_attn.q_norm / k_norm, an RMSNorm over each head before RoPE), no q/k/v
// biases unless attention_bias says so, and an explicit head_dim.
#include "engine/transformer.h"

namespace qs {

std::unique_ptr<Model> make_qwen3(const ModelFile& file, Backend& backend, const LoadOptions& options) {
  const bool bias = file.config().attention_bias;
  return make_llama_variant(file, backend, options, LlamaVariant{bias, bias, /*qk_norm=*/true});
}

}  // namespace qs
