// GPT-2: learned positions, pre-LayerNorm blocks, fused QKV (Conv1D), GELU (tanh) MLP, tied LM head.
#include "engine/transformer.h"

namespace qs {
namespace {

// C = hidden, F = MLP width, V = vocab, P = positions.
struct Gpt2Layer {
  DenseWeight ln_1_w, ln_1_b;            // (C)
  std::unique_ptr<LinearWeight> c_attn;  // (3C, C) + bias: q, k, v
  std::unique_ptr<LinearWeight> c_proj;  // (C, C) + bias
  DenseWeight ln_2_w, ln_2_b;            // (C)
  std::unique_ptr<LinearWeight> c_fc;    // (F, C) + bias
  std::unique_ptr<LinearWeight> mlp_proj;// (C, F) + bias
};

class Gpt2Model final : public TransformerModel {
 public:
  Gpt2Model(const ModelFile& file, Backend& backend, const LoadOptions& options)
      : TransformerModel(file, backend, options) {
    // Checkpoints come with or without the "transformer." prefix.
    prefix_ = file.find("transformer.wte.weight") ? "transformer." : "";
    const int64_t C = config_.hidden_size, F = config_.intermediate_size;
    load_embeddings(prefix_ + "wte.weight", "lm_head.weight");
    wpe_ = make_dense(prefix_ + "wpe.weight", "embedding", config_.max_positions, C);
    for (int64_t l = 0; l < config_.num_layers; ++l) {
      const std::string p = prefix_ + "h." + std::to_string(l) + ".";
      Gpt2Layer layer;
      // int8-smooth folds each norm's smoothing factors into the linear it feeds (a no-op otherwise).
      HostLinear c_attn = read_conv1d(p + "attn.c_attn.weight", p + "attn.c_attn.bias", C, 3 * C);
      HostLinear c_fc = read_conv1d(p + "mlp.c_fc.weight", p + "mlp.c_fc.bias", C, F);
      const std::vector<float> s1 = smooth(p + "attn.c_attn.weight", c_attn);
      const std::vector<float> s2 = smooth(p + "mlp.c_fc.weight", c_fc);
      // c_proj's input is the attention over c_attn's v block (rows 2C..3C, one KV head per head): foldable.
      // mlp.c_proj's input is gelu(c_fc(x)), and gelu(x / s) is not gelu(x) / s: it stays unsmoothed.
      HostLinear c_proj = read_conv1d(p + "attn.c_proj.weight", p + "attn.c_proj.bias", C, C);
      smooth_o_proj(p + "attn.c_proj.weight", c_proj, c_attn, 2 * C);
      layer.ln_1_w = make_dense(p + "ln_1.weight", "norm", C, 1, s1);
      layer.ln_1_b = make_dense(p + "ln_1.bias", "norm", C, 1, s1);
      layer.c_attn = make_linear(p + "attn.c_attn.weight", "attention", c_attn, block_precision());
      layer.c_proj = make_linear(p + "attn.c_proj.weight", "attention", c_proj, block_precision());
      layer.ln_2_w = make_dense(p + "ln_2.weight", "norm", C, 1, s2);
      layer.ln_2_b = make_dense(p + "ln_2.bias", "norm", C, 1, s2);
      layer.c_fc = make_linear(p + "mlp.c_fc.weight", "mlp", c_fc, block_precision());
      layer.mlp_proj = make_linear(p + "mlp.c_proj.weight", "mlp",
                                   read_conv1d(p + "mlp.c_proj.weight", p + "mlp.c_proj.bias", F, C),
                                   block_precision());
      layers_.push_back(std::move(layer));
    }
    ln_f_w_ = make_dense(prefix_ + "ln_f.weight", "norm", C, 1);
    ln_f_b_ = make_dense(prefix_ + "ln_f.bias", "norm", C, 1);
    final_norm_ = [this](Tensor out, Tensor in) {
      backend_->layernorm(out, in, ln_f_w_, &ln_f_b_, config_.norm_eps);
    };
    finish_load();
  }

 protected:
  const DenseWeight* position_table() const override { return &wpe_; }

  void forward_layers(const BatchLayout&, KvCache& cache) override {
    Backend& b = *backend_;
    const Activation act = config_.hidden_act == HiddenAct::kGeluErf ? Activation::kGeluErf : Activation::kGeluTanh;
    for (int64_t l = 0; l < config_.num_layers; ++l) {
      const Gpt2Layer& layer = layers_[size_t(l)];
      b.layernorm(h_, x_, layer.ln_1_w, &layer.ln_1_b, config_.norm_eps);
      self_attention(out_, h_, cache, l, *layer.c_attn, *layer.c_proj, /*rotary_dim=*/0);
      b.add(x_, x_, out_);
      b.layernorm(h_, x_, layer.ln_2_w, &layer.ln_2_b, config_.norm_eps);
      gelu_mlp(out_, h_, *layer.c_fc, *layer.mlp_proj, act);
      b.add(x_, x_, out_);
    }
  }

 private:
  std::string prefix_;
  DenseWeight wpe_;              // (P, C)
  std::vector<Gpt2Layer> layers_;
  DenseWeight ln_f_w_, ln_f_b_;  // (C)
};

}  // namespace

std::unique_ptr<Model> make_gpt2(const ModelFile& file, Backend& backend, const LoadOptions& options) {
  return std::make_unique<Gpt2Model>(file, backend, options);
}

}  // namespace qs
