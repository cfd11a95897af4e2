// Shared pieces of the three architectures: loading tensors into backend weights (with the load report),
// activation buffers, and the attention / MLP blocks each architecture's forward pass is a sequence of.
#pragma once
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/model.h"

namespace qs {

// T = tokens, C = hidden, F = MLP width, NH / NKV = query / key-value heads, HD = head dim, V = vocab.

// Host weights prepared for make_linear: fp32, [N, K] row-major (after any transpose or reordering).
struct HostLinear {
  std::vector<float> weight;   // (N, K)
  std::vector<float> bias;     // (N) or empty
  int64_t rows = 0, cols = 0;
  // int4-weight-only: the file's own GGUF blocks (Q4_0, Q4_1 or Q8_0; N rows of K/32 blocks), so the backend
  // keeps them instead of rounding `weight` again; empty otherwise (and block_dtype F32).
  std::vector<uint8_t> blocks;
  DType block_dtype = DType::F32;
};

// How one layer's attention runs beyond q, k, v and the output projection.
struct AttentionOptions {
  int64_t rotary_dim = 0;               // 0: no rotary embedding
  float rope_theta = 10000.0f;
  int64_t window = 0;                   // sliding window (0: none)
  const DenseWeight* q_norm = nullptr;  // QK-norm weights (HD) when the architecture has them
  const DenseWeight* k_norm = nullptr;
};

// The Llama family differs in which projections carry biases, QK-norm and sliding windows (from the config).
struct LlamaVariant {
  bool qkv_bias = false;   // q_proj, k_proj, v_proj biases
  bool o_bias = false;     // o_proj bias
  bool qk_norm = false;    // self_attn.q_norm / k_norm (HD) before RoPE
};

class TransformerModel : public Model {
 public:
  TransformerModel(const ModelFile& file, Backend& backend, const LoadOptions& options);
  void forward(const BatchLayout& batch, KvCache& cache, std::vector<float>& logits) override;

  // int8-smooth calibration (on an fp32 model): runs `ids` through the model in windows of at most the model's
  // context and returns, per linear that follows a norm and per o_proj / down_proj (by name), the
  // per-input-channel absmax of its input (of the unsmoothed model: smoothing happens in the later load);
  // `samples` (if given) gets, per such linear, up to kSmoothingSampleTokens of its input rows, evenly spaced.
  std::map<std::string, std::vector<float>> calibrate(const std::vector<int32_t>& ids,
                                                      std::map<std::string, std::vector<float>>* samples = nullptr);

 protected:
  // Architecture files implement: the layer stack from embedded x (T, C) to final hidden state in x.
  virtual void forward_layers(const BatchLayout& batch, KvCache& cache) = 0;
  // GPT-2's learned position embeddings; null for rotary models.
  virtual const DenseWeight* position_table() const { return nullptr; }

  // --- loading (the architecture's constructor calls these, then finish_load()) ---
  HostLinear read_linear(const std::string& weight, const std::string& bias, int64_t rows, int64_t cols) const;
  // GPT-2's Conv1D stores (K, N); this reads and transposes to (N, K).
  HostLinear read_conv1d(const std::string& weight, const std::string& bias, int64_t in, int64_t out) const;
  // Stacks linears along N (q, k, v -> qkv; gate, up -> gate_up).
  static HostLinear concat_rows(std::vector<HostLinear> parts);
  std::unique_ptr<LinearWeight> make_linear(const std::string& name, const std::string& tensor_class,
                                            const HostLinear& host, Precision precision);
  // `divide_by` (rows entries, or empty): the int8-smooth factors folded into a norm's weight or bias.
  DenseWeight make_dense(const std::string& name, const std::string& tensor_class, int64_t rows, int64_t cols,
                         const std::vector<float>& divide_by = {});
  // int8-smooth: for the linear `name` that follows a norm, computes the smoothing factors from the calibrated
  // activation absmax and host's column absmax, multiplies them into host's columns and returns them (for the
  // norm's make_dense). No calibration data: returns empty and leaves host alone. Model::load sets it for
  // int8-smooth only; a test may set it with another precision (fp32: the smoothed weights in fp32 math).
  std::vector<float> smooth(const std::string& name, HostLinear& host);
  // The calibrated per-input-channel absmax of linear `name` (fails naming it when there is none).
  const std::vector<float>& calibrated_absmax(const std::string& name) const;
  // int8-smooth through a linear instead of a norm: `name`'s input channel k is, up to a per-channel scale,
  // the output row first_row + (k / (group * head_dim)) * head_dim + k % head_dim of `prev` (attention: v_proj's
  // rows, group = query heads per KV head; a gated MLP: up_proj's rows, group 1 and head_dim = K). One factor per
  // such row, from the max of the calibrated absmax over the channels sharing it, multiplies host's columns and
  // divides prev's row (and bias). `prev` may be smoothed already (its columns): the row scaling composes.
  // Returns whether it smoothed (the precision, the calibration data and the options allow it).
  bool smooth_through(const std::string& name, HostLinear& host, HostLinear& prev, int64_t first_row,
                      int64_t group, int64_t head_dim);
  // The two folds the options enable: o_proj through v_proj (rows from v_first_row of the stacked qkv), and
  // down_proj through up_proj (rows from up_first_row of gate_up).
  void smooth_o_proj(const std::string& name, HostLinear& o_proj, HostLinear& qkv, int64_t v_first_row);
  void smooth_down_proj(const std::string& name, HostLinear& down, HostLinear& gate_up, int64_t up_first_row);
  // The precision of blocks' linears and of the embedding / LM head under the load options.
  Precision block_precision() const { return options_.precision; }
  // `table`: the stored tensor's name (int4-weight-only keeps a table stored in GGUF blocks in them).
  Precision embedding_precision(const std::string& table) const;
  void load_embeddings(const std::string& table, const std::string& lm_head);   // sets embed_, lm_head_
  void finish_load();
  // Refuses (kUnsupported, naming the op and the architecture) when the backend lacks one of `ops`.
  void require_ops(std::initializer_list<BackendOp> ops) const;
  // Gemma's norms multiply by (1 + w): the stored w plus one, as a DenseWeight.
  DenseWeight make_dense_plus_one(const std::string& name, const std::string& tensor_class, int64_t rows,
                                  const std::vector<float>& divide_by = {});
  // Uploads host values (fp32, `shape`) as a DenseWeight and reports it under `name`.
  DenseWeight upload_dense(const std::string& name, const std::string& tensor_class, const std::vector<int64_t>& shape,
                           const std::vector<float>& host);

  // --- forward helpers ---
  // Grows (never shrinks) the activation buffers to T tokens.
  void ensure_activations(int64_t T);
  void self_attention(Tensor out, Tensor in, KvCache& cache, int64_t layer, const LinearWeight& qkv,
                      const LinearWeight& proj, int64_t rotary_dim);
  void self_attention(Tensor out, Tensor in, KvCache& cache, int64_t layer, const LinearWeight& qkv,
                      const LinearWeight& proj, const AttentionOptions& attention);
  void gelu_mlp(Tensor out, Tensor in, const LinearWeight& fc, const LinearWeight& proj, Activation act);
  void swiglu_mlp(Tensor out, Tensor in, const LinearWeight& gate_up, const LinearWeight& down);
  // down(act(gate) * up) for a gate_up linear (2F, C): kSilu is SwiGLU, kGeluTanh GeGLU.
  void gated_mlp(Tensor out, Tensor in, const LinearWeight& gate_up, const LinearWeight& down, Activation act);
  // During calibrate(): folds `in`'s per-column absmax into the statistics of `weight` (a linear after a norm,
  // or o_proj / down_proj for the folds through v_proj / up_proj).
  void observe_input(Tensor in, const LinearWeight& weight);

  const ModelFile& file_;
  LoadOptions options_;
  double quantize_seconds_ = 0;
  std::map<std::string, double> smoothing_alphas_;   // smooth() records the alpha of each linear
  std::unique_ptr<LinearWeight> embed_;          // (V, C), also the LM head when tied
  std::unique_ptr<LinearWeight> lm_head_;        // (V, C) when untied
  std::function<void(Tensor out, Tensor in)> final_norm_;   // set by the architecture
  float embedding_multiplier_ = 1.0f;                       // Gemma: sqrt(C), applied to the embedded tokens
  std::map<const LinearWeight*, std::string> linear_names_;
  std::map<std::string, std::vector<float>>* calibration_ = nullptr;   // set while calibrate() runs
  std::map<std::string, std::vector<float>>* calibration_samples_ = nullptr;   // likewise, when sampling
  int64_t calibration_first_ = 0;    // position in the calibration text of the current window's first token
  int64_t calibration_stride_ = 1;   // sample the tokens at positions stride/2 + i*stride
  std::vector<float> observe_host_;

  // Activations, (T, ...) each.
  Tensor x_, h_, h2_, qkv_, att_, mlp_, act_, out_, out2_;
  std::unique_ptr<DeviceBuffer> x_buf_, h_buf_, h2_buf_, qkv_buf_, att_buf_, mlp_buf_, act_buf_, out_buf_, out2_buf_;
  std::unique_ptr<DeviceBuffer> last_buf_, logits_buf_;
  std::vector<uint16_t> logits_half_;
  int64_t capacity_tokens_ = 0;
  int64_t mlp_width_ = 0;   // columns of mlp_ (F, or 2F for gate_up)
  // Decode steps through backend graphs (forward()): the padded batch, and the activation addresses the
  // backend's recorded graphs hold (when one moves, they are reset).
  BatchLayout graph_batch_;
  std::vector<const void*> graph_buffers_;
};

// Architecture factories, one file each in engine/models/.
std::unique_ptr<Model> make_gpt2(const ModelFile& file, Backend& backend, const LoadOptions& options);
std::unique_ptr<Model> make_gpt_neox(const ModelFile& file, Backend& backend, const LoadOptions& options);
std::unique_ptr<Model> make_llama(const ModelFile& file, Backend& backend, const LoadOptions& options);
std::unique_ptr<Model> make_llama_variant(const ModelFile& file, Backend& backend, const LoadOptions& options,
                                          const LlamaVariant& variant);
std::unique_ptr<Model> make_qwen2(const ModelFile& file, Backend& backend, const LoadOptions& options);
std::unique_ptr<Model> make_qwen3(const ModelFile& file, Backend& backend, const LoadOptions& options);
std::unique_ptr<Model> make_mistral(const ModelFile& file, Backend& backend, const LoadOptions& options);
std::unique_ptr<Model> make_gemma3(const ModelFile& file, Backend& backend, const LoadOptions& options);

}  // namespace qs
