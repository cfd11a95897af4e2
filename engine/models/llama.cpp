// Llama (SmolLM2, TinyLlama) and its family: RMSNorm, rotary, grouped-query attention, SwiGLU, optionally tied
// embeddings; Qwen2, Qwen3 and Mistral are variants of it (qwen2.cpp, qwen3.cpp, mistral.cpp say how).
#include "engine/transformer.h"

namespace qs {
namespace {

// C = hidden, F = MLP width, NH / NKV = query / key-value heads, HD = head dim.
struct LlamaLayer {
  DenseWeight input_norm;                // (C)
  DenseWeight post_attention_norm;       // (C)
  DenseWeight q_norm, k_norm;            // (HD) each, QK-norm variants only
  std::unique_ptr<LinearWeight> qkv;     // (NH HD + 2 NKV HD, C): q_proj, k_proj, v_proj stacked
  std::unique_ptr<LinearWeight> o_proj;  // (C, NH HD)
  std::unique_ptr<LinearWeight> gate_up; // (2F, C): gate_proj, up_proj stacked
  std::unique_ptr<LinearWeight> down;    // (C, F)
};

class LlamaModel final : public TransformerModel {
 public:
  LlamaModel(const ModelFile& file, Backend& backend, const LoadOptions& options, const LlamaVariant& variant)
      : TransformerModel(file, backend, options), variant_(variant) {
    if (variant.qk_norm) require_ops({BackendOp::kHeadRmsNorm});
    if (config_.sliding_window > 0) require_ops({BackendOp::kSlidingWindowAttention});
    const int64_t C = config_.hidden_size, F = config_.intermediate_size, HD = config_.head_dim;
    const int64_t q_rows = config_.num_heads * HD, kv_rows = config_.num_kv_heads * HD;
    load_embeddings("model.embed_tokens.weight", "lm_head.weight");
    const auto bias = [&](const std::string& name, bool has) { return has ? name : std::string(); };
    for (int64_t l = 0; l < config_.num_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      const std::string a = p + "self_attn.", m = p + "mlp.";
      const bool ab = variant.qkv_bias, ob = variant.o_bias, mb = config_.mlp_bias;
      LlamaLayer layer;
      // int8-smooth folds each norm's smoothing factors into the linear it feeds (a no-op otherwise).
      HostLinear qkv = concat_rows({read_linear(a + "q_proj.weight", bias(a + "q_proj.bias", ab), q_rows, C),
                                    read_linear(a + "k_proj.weight", bias(a + "k_proj.bias", ab), kv_rows, C),
                                    read_linear(a + "v_proj.weight", bias(a + "v_proj.bias", ab), kv_rows, C)});
      HostLinear gate_up = concat_rows({read_linear(m + "gate_proj.weight", bias(m + "gate_proj.bias", mb), F, C),
                                        read_linear(m + "up_proj.weight", bias(m + "up_proj.bias", mb), F, C)});
      HostLinear o_proj = read_linear(a + "o_proj.weight", bias(a + "o_proj.bias", ob), C, q_rows);
      HostLinear down = read_linear(m + "down_proj.weight", bias(m + "down_proj.bias", mb), C, F);
      layer.input_norm = make_dense(p + "input_layernorm.weight", "norm", C, 1, smooth(a + "qkv_proj", qkv));
      layer.post_attention_norm = make_dense(p + "post_attention_layernorm.weight", "norm", C, 1,
                                             smooth(m + "gate_up_proj", gate_up));
      // After the norms' folds (which scale qkv's and gate_up's columns): these scale v's and up's rows.
      smooth_o_proj(a + "o_proj.weight", o_proj, qkv, q_rows + kv_rows);
      smooth_down_proj(m + "down_proj.weight", down, gate_up, F);
      if (variant.qk_norm) {
        layer.q_norm = make_dense(a + "q_norm.weight", "norm", HD, 1);
        layer.k_norm = make_dense(a + "k_norm.weight", "norm", HD, 1);
      }
      layer.qkv = make_linear(a + "qkv_proj", "attention", qkv, block_precision());
      layer.o_proj = make_linear(a + "o_proj.weight", "attention", o_proj, block_precision());
      layer.gate_up = make_linear(m + "gate_up_proj", "mlp", gate_up, block_precision());
      layer.down = make_linear(m + "down_proj.weight", "mlp", down, block_precision());
      layers_.push_back(std::move(layer));
    }
    norm_ = make_dense("model.norm.weight", "norm", C, 1);
    final_norm_ = [this](Tensor out, Tensor in) { backend_->rmsnorm(out, in, norm_, config_.norm_eps); };
    finish_load();
  }

 protected:
  void forward_layers(const BatchLayout&, KvCache& cache) override {
    Backend& b = *backend_;
    for (int64_t l = 0; l < config_.num_layers; ++l) {
      const LlamaLayer& layer = layers_[size_t(l)];
      AttentionOptions attention;
      attention.rotary_dim = config_.rotary_dim;
      attention.rope_theta = config_.rope_theta;
      attention.window = config_.layer_slides(l) ? config_.sliding_window : 0;
      if (variant_.qk_norm) attention.q_norm = &layer.q_norm, attention.k_norm = &layer.k_norm;
      b.rmsnorm(h_, x_, layer.input_norm, config_.norm_eps);
      self_attention(out_, h_, cache, l, *layer.qkv, *layer.o_proj, attention);
      b.add(x_, x_, out_);
      b.rmsnorm(h_, x_, layer.post_attention_norm, config_.norm_eps);
      swiglu_mlp(out_, h_, *layer.gate_up, *layer.down);
      b.add(x_, x_, out_);
    }
  }

 private:
  LlamaVariant variant_;
  std::vector<LlamaLayer> layers_;
  DenseWeight norm_;
};

}  // namespace

std::unique_ptr<Model> make_llama_variant(const ModelFile& file, Backend& backend, const LoadOptions& options,
                                          const LlamaVariant& variant) {
  return std::make_unique<LlamaModel>(file, backend, options, variant);
}

std::unique_ptr<Model> make_llama(const ModelFile& file, Backend& backend, const LoadOptions& options) {
  // Llama's attention_bias covers all four projections.
  const bool bias = file.config().attention_bias;
  return make_llama_variant(file, backend, options, LlamaVariant{bias, bias, false});
}

}  // namespace qs
