// Llama (SmolLM2, TinyLlama): RMSNorm, rotary, grouped-query attention, SwiGLU, optionally tied embeddings.
#include "engine/transformer.h"

namespace qs {
namespace {

// C = hidden, F = MLP width, NH / NKV = query / key-value heads, HD = head dim.
struct LlamaLayer {
  DenseWeight input_norm;                // (C)
  DenseWeight post_attention_norm;       // (C)
  std::unique_ptr<LinearWeight> qkv;     // (NH HD + 2 NKV HD, C): q_proj, k_proj, v_proj stacked
  std::unique_ptr<LinearWeight> o_proj;  // (C, NH HD)
  std::unique_ptr<LinearWeight> gate_up; // (2F, C): gate_proj, up_proj stacked
  std::unique_ptr<LinearWeight> down;    // (C, F)
};

class LlamaModel final : public TransformerModel {
 public:
  LlamaModel(const ModelFile& file, Backend& backend, const LoadOptions& options)
      : TransformerModel(file, backend, options) {
    const int64_t C = config_.hidden_size, F = config_.intermediate_size;
    const int64_t q_rows = config_.num_heads * config_.head_dim, kv_rows = config_.num_kv_heads * config_.head_dim;
    load_embeddings("model.embed_tokens.weight", "lm_head.weight");
    const auto bias = [&](const std::string& name, bool has) { return has ? name : std::string(); };
    for (int64_t l = 0; l < config_.num_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      const std::string a = p + "self_attn.", m = p + "mlp.";
      const bool ab = config_.attention_bias, mb = config_.mlp_bias;
      LlamaLayer layer;
      // int8-smooth folds each norm's smoothing factors into the linear it feeds (a no-op otherwise).
      HostLinear qkv = concat_rows({read_linear(a + "q_proj.weight", bias(a + "q_proj.bias", ab), q_rows, C),
                                    read_linear(a + "k_proj.weight", bias(a + "k_proj.bias", ab), kv_rows, C),
                                    read_linear(a + "v_proj.weight", bias(a + "v_proj.bias", ab), kv_rows, C)});
      HostLinear gate_up = concat_rows({read_linear(m + "gate_proj.weight", bias(m + "gate_proj.bias", mb), F, C),
                                        read_linear(m + "up_proj.weight", bias(m + "up_proj.bias", mb), F, C)});
      layer.input_norm = make_dense(p + "input_layernorm.weight", "norm", C, 1, smooth(a + "qkv_proj", qkv));
      layer.post_attention_norm = make_dense(p + "post_attention_layernorm.weight", "norm", C, 1,
                                             smooth(m + "gate_up_proj", gate_up));
      layer.qkv = make_linear(a + "qkv_proj", "attention", qkv, block_precision());
      layer.o_proj = make_linear(a + "o_proj.weight", "attention",
                                 read_linear(a + "o_proj.weight", bias(a + "o_proj.bias", ab), C, q_rows),
                                 block_precision());
      layer.gate_up = make_linear(m + "gate_up_proj", "mlp", gate_up, block_precision());
      layer.down = make_linear(m + "down_proj.weight", "mlp",
                               read_linear(m + "down_proj.weight", bias(m + "down_proj.bias", mb), C, F),
                               block_precision());
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
      b.rmsnorm(h_, x_, layer.input_norm, config_.norm_eps);
      self_attention(out_, h_, cache, l, *layer.qkv, *layer.o_proj, config_.rotary_dim);
      b.add(x_, x_, out_);
      b.rmsnorm(h_, x_, layer.post_attention_norm, config_.norm_eps);
      swiglu_mlp(out_, h_, *layer.gate_up, *layer.down);
      b.add(x_, x_, out_);
    }
  }

 private:
  std::vector<LlamaLayer> layers_;
  DenseWeight norm_;
};

}  // namespace

std::unique_ptr<Model> make_llama(const ModelFile& file, Backend& backend, const LoadOptions& options) {
  return std::make_unique<LlamaModel>(file, backend, options);
}

}  // namespace qs
