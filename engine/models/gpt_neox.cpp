// GPT-NeoX (Pythia): LayerNorm blocks, fused per-head QKV, partial rotary, parallel or sequential residual.
#include "engine/transformer.h"

namespace qs {
namespace {

// C = hidden, F = MLP width, NH = heads, HD = head dim.
struct NeoXLayer {
  DenseWeight ln_1_w, ln_1_b;            // input_layernorm (C)
  DenseWeight ln_2_w, ln_2_b;            // post_attention_layernorm (C)
  std::unique_ptr<LinearWeight> qkv;     // (3C, C) + bias, reordered to q, k, v
  std::unique_ptr<LinearWeight> dense;   // (C, C) + bias
  std::unique_ptr<LinearWeight> fc_in;   // dense_h_to_4h (F, C) + bias
  std::unique_ptr<LinearWeight> fc_out;  // dense_4h_to_h (C, F) + bias
};

// NeoX stores query_key_value rows as (NH, 3, HD); the attention op wants (3, NH, HD).
HostLinear reorder_neox_qkv(HostLinear h, int64_t NH, int64_t HD) {
  HostLinear out = h;
  const int64_t K = h.cols;
  for (int64_t head = 0; head < NH; ++head) {
    for (int64_t part = 0; part < 3; ++part) {
      for (int64_t d = 0; d < HD; ++d) {
        const int64_t src = (head * 3 + part) * HD + d;
        const int64_t dst = (part * NH + head) * HD + d;
        std::copy_n(h.weight.begin() + src * K, K, out.weight.begin() + dst * K);
        if (!h.bias.empty()) out.bias[size_t(dst)] = h.bias[size_t(src)];
      }
    }
  }
  return out;
}

class NeoXModel final : public TransformerModel {
 public:
  NeoXModel(const ModelFile& file, Backend& backend, const LoadOptions& options)
      : TransformerModel(file, backend, options) {
    const int64_t C = config_.hidden_size, F = config_.intermediate_size;
    load_embeddings("gpt_neox.embed_in.weight", "embed_out.weight");
    for (int64_t l = 0; l < config_.num_layers; ++l) {
      const std::string p = "gpt_neox.layers." + std::to_string(l) + ".";
      NeoXLayer layer;
      // int8-smooth folds each norm's smoothing factors into the linear it feeds (a no-op otherwise).
      HostLinear qkv = reorder_neox_qkv(read_linear(p + "attention.query_key_value.weight",
                                                    p + "attention.query_key_value.bias", 3 * C, C),
                                        config_.num_heads, config_.head_dim);
      HostLinear fc_in = read_linear(p + "mlp.dense_h_to_4h.weight", p + "mlp.dense_h_to_4h.bias", F, C);
      const std::vector<float> s1 = smooth(p + "attention.query_key_value.weight", qkv);
      const std::vector<float> s2 = smooth(p + "mlp.dense_h_to_4h.weight", fc_in);
      // attention.dense's input is the attention over the reordered qkv's v block (rows 2C..3C): foldable, the
      // parallel residual or not (it only moves where ln_2 reads). dense_4h_to_h's input is gelu(dense_h_to_4h),
      // which does not commute with a per-channel scale: it stays unsmoothed.
      HostLinear dense = read_linear(p + "attention.dense.weight", p + "attention.dense.bias", C, C);
      smooth_o_proj(p + "attention.dense.weight", dense, qkv, 2 * C);
      layer.ln_1_w = make_dense(p + "input_layernorm.weight", "norm", C, 1, s1);
      layer.ln_1_b = make_dense(p + "input_layernorm.bias", "norm", C, 1, s1);
      layer.ln_2_w = make_dense(p + "post_attention_layernorm.weight", "norm", C, 1, s2);
      layer.ln_2_b = make_dense(p + "post_attention_layernorm.bias", "norm", C, 1, s2);
      layer.qkv = make_linear(p + "attention.query_key_value.weight", "attention", qkv, block_precision());
      layer.dense = make_linear(p + "attention.dense.weight", "attention", dense, block_precision());
      layer.fc_in = make_linear(p + "mlp.dense_h_to_4h.weight", "mlp", fc_in, block_precision());
      layer.fc_out = make_linear(p + "mlp.dense_4h_to_h.weight", "mlp",
                                 read_linear(p + "mlp.dense_4h_to_h.weight", p + "mlp.dense_4h_to_h.bias", C, F),
                                 block_precision());
      layers_.push_back(std::move(layer));
    }
    ln_f_w_ = make_dense("gpt_neox.final_layer_norm.weight", "norm", C, 1);
    ln_f_b_ = make_dense("gpt_neox.final_layer_norm.bias", "norm", C, 1);
    final_norm_ = [this](Tensor out, Tensor in) {
      backend_->layernorm(out, in, ln_f_w_, &ln_f_b_, config_.norm_eps);
    };
    finish_load();
  }

 protected:
  void forward_layers(const BatchLayout&, KvCache& cache) override {
    Backend& b = *backend_;
    const Activation act = config_.hidden_act == HiddenAct::kGeluTanh ? Activation::kGeluTanh
                           : config_.hidden_act == HiddenAct::kRelu  ? Activation::kRelu
                                                                      : Activation::kGeluErf;
    for (int64_t l = 0; l < config_.num_layers; ++l) {
      const NeoXLayer& layer = layers_[size_t(l)];
      b.layernorm(h_, x_, layer.ln_1_w, &layer.ln_1_b, config_.norm_eps);
      self_attention(out_, h_, cache, l, *layer.qkv, *layer.dense, config_.rotary_dim);
      if (config_.parallel_residual) {
        // x = x + attn(ln_1(x)) + mlp(ln_2(x))
        b.layernorm(h2_, x_, layer.ln_2_w, &layer.ln_2_b, config_.norm_eps);
        gelu_mlp(out2_, h2_, *layer.fc_in, *layer.fc_out, act);
        b.add(out_, out_, out2_);
        b.add(x_, x_, out_);
      } else {
        b.add(x_, x_, out_);
        b.layernorm(h_, x_, layer.ln_2_w, &layer.ln_2_b, config_.norm_eps);
        gelu_mlp(out_, h_, *layer.fc_in, *layer.fc_out, act);
        b.add(x_, x_, out_);
      }
    }
  }

 private:
  std::vector<NeoXLayer> layers_;
  DenseWeight ln_f_w_, ln_f_b_;
};

}  // namespace

std::unique_ptr<Model> make_gpt_neox(const ModelFile& file, Backend& backend, const LoadOptions& options) {
  return std::make_unique<NeoXModel>(file, backend, options);
}

}  // namespace qs
