// Gemma 3 (text): embeddings scaled by sqrt(C), RMSNorm with (1 + w) before and after both attention and the
// MLP, QK-norm, GeGLU (gelu-tanh gate), grouped-query attention in which five of every six layers slide over the
// latest sliding_window positions with their own RoPE base, and a tied LM head.
#include <cmath>

#include "engine/transformer.h"

namespace qs {
namespace {

// C = hidden, F = MLP width, NH / NKV = query / key-value heads, HD = head dim. Every norm is (1 + w).
struct Gemma3Layer {
  DenseWeight input_norm;                // (C)  input_layernorm
  DenseWeight post_attention_norm;       // (C)  post_attention_layernorm, on the attention's output
  DenseWeight pre_feedforward_norm;      // (C)
  DenseWeight post_feedforward_norm;     // (C)  on the MLP's output
  DenseWeight q_norm, k_norm;            // (HD) q_norm also carries the query_pre_attn_scalar correction
  std::unique_ptr<LinearWeight> qkv;     // (NH HD + 2 NKV HD, C): q_proj, k_proj, v_proj stacked
  std::unique_ptr<LinearWeight> o_proj;  // (C, NH HD)
  std::unique_ptr<LinearWeight> gate_up; // (2F, C): gate_proj, up_proj stacked
  std::unique_ptr<LinearWeight> down;    // (C, F)
};

class Gemma3Model final : public TransformerModel {
 public:
  Gemma3Model(const ModelFile& file, Backend& backend, const LoadOptions& options)
      : TransformerModel(file, backend, options) {
    require_ops({BackendOp::kGeluTanhGate, BackendOp::kHeadRmsNorm, BackendOp::kScale,
                 BackendOp::kSlidingWindowAttention});
    const int64_t C = config_.hidden_size, F = config_.intermediate_size, HD = config_.head_dim;
    const int64_t q_rows = config_.num_heads * HD, kv_rows = config_.num_kv_heads * HD;
    // Scores are q.k / sqrt(query_pre_attn_scalar); the attention divides by sqrt(HD), so q (through its norm's
    // weight) is multiplied by sqrt(HD / query_pre_attn_scalar) — 1 for the models where they are equal.
    const double qpas = config_.query_pre_attn_scalar > 0 ? config_.query_pre_attn_scalar : double(HD);
    const float q_correction = float(std::sqrt(double(HD) / qpas));
    embedding_multiplier_ = float(std::sqrt(double(C)));   // HF: hidden_size ** 0.5 in the activations' dtype
    load_embeddings("model.embed_tokens.weight", "lm_head.weight");
    for (int64_t l = 0; l < config_.num_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      const std::string a = p + "self_attn.", m = p + "mlp.";
      Gemma3Layer layer;
      HostLinear qkv = concat_rows({read_linear(a + "q_proj.weight", "", q_rows, C),
                                    read_linear(a + "k_proj.weight", "", kv_rows, C),
                                    read_linear(a + "v_proj.weight", "", kv_rows, C)});
      HostLinear gate_up = concat_rows({read_linear(m + "gate_proj.weight", "", F, C),
                                        read_linear(m + "up_proj.weight", "", F, C)});
      HostLinear o_proj = read_linear(a + "o_proj.weight", "", C, q_rows);
      HostLinear down = read_linear(m + "down_proj.weight", "", C, F);
      layer.input_norm = make_dense_plus_one(p + "input_layernorm.weight", "norm", C, smooth(a + "qkv_proj", qkv));
      layer.post_attention_norm = make_dense_plus_one(p + "post_attention_layernorm.weight", "norm", C);
      layer.pre_feedforward_norm = make_dense_plus_one(p + "pre_feedforward_layernorm.weight", "norm", C,
                                                       smooth(m + "gate_up_proj", gate_up));
      layer.post_feedforward_norm = make_dense_plus_one(p + "post_feedforward_layernorm.weight", "norm", C);
      // After the norms' folds; exact here too (QK-norm is on q and k only, GeGLU is gelu(gate) * up).
      smooth_o_proj(a + "o_proj.weight", o_proj, qkv, q_rows + kv_rows);
      smooth_down_proj(m + "down_proj.weight", down, gate_up, F);
      const std::vector<float> q_divide = q_correction == 1.0f ? std::vector<float>{}
                                                               : std::vector<float>(size_t(HD), 1.0f / q_correction);
      layer.q_norm = make_dense_plus_one(a + "q_norm.weight", "norm", HD, q_divide);
      layer.k_norm = make_dense_plus_one(a + "k_norm.weight", "norm", HD);
      layer.qkv = make_linear(a + "qkv_proj", "attention", qkv, block_precision());
      layer.o_proj = make_linear(a + "o_proj.weight", "attention", o_proj, block_precision());
      layer.gate_up = make_linear(m + "gate_up_proj", "mlp", gate_up, block_precision());
      layer.down = make_linear(m + "down_proj.weight", "mlp", down, block_precision());
      layers_.push_back(std::move(layer));
    }
    norm_ = make_dense_plus_one("model.norm.weight", "norm", C);
    final_norm_ = [this](Tensor out, Tensor in) { backend_->rmsnorm(out, in, norm_, config_.norm_eps); };
    finish_load();
  }

 protected:
  void forward_layers(const BatchLayout&, KvCache& cache) override {
    Backend& b = *backend_;
    const float eps = config_.norm_eps;
    for (int64_t l = 0; l < config_.num_layers; ++l) {
      const Gemma3Layer& layer = layers_[size_t(l)];
      const bool slides = config_.layer_slides(l);
      AttentionOptions attention;
      attention.rotary_dim = config_.rotary_dim;
      attention.rope_theta = slides ? config_.rope_local_theta : config_.rope_theta;
      attention.window = slides ? config_.sliding_window : 0;
      attention.q_norm = &layer.q_norm;
      attention.k_norm = &layer.k_norm;
      b.rmsnorm(h_, x_, layer.input_norm, eps);
      self_attention(out_, h_, cache, l, *layer.qkv, *layer.o_proj, attention);
      b.rmsnorm(h2_, out_, layer.post_attention_norm, eps);
      b.add(x_, x_, h2_);
      b.rmsnorm(h_, x_, layer.pre_feedforward_norm, eps);
      gated_mlp(out_, h_, *layer.gate_up, *layer.down, Activation::kGeluTanh);
      b.rmsnorm(h2_, out_, layer.post_feedforward_norm, eps);
      b.add(x_, x_, h2_);
    }
  }

 private:
  std::vector<Gemma3Layer> layers_;
  DenseWeight norm_;
};

}  // namespace

std::unique_ptr<Model> make_gemma3(const ModelFile& file, Backend& backend, const LoadOptions& options) {
  return std::make_unique<Gemma3Model>(file, backend, options);
}

}  // namespace qs
