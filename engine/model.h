// A loaded model: its weights on a backend and its forward pass. One implementation per architecture file.
#pragma once
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/model_config.h"
#include "engine/model_file.h"
#include "kernels/backend.h"

namespace qs {

// Per tensor class ("attention", "mlp", "embedding", "lm_head", "norm") and per tensor: bytes and error.
struct TensorReport {
  std::string name;
  std::string tensor_class;
  Precision precision = Precision::kFp32;
  std::vector<int64_t> shape;
  size_t original_bytes = 0;   // as fp32
  size_t bytes = 0;            // as loaded
  QuantError error;
};

struct LoadReport {
  std::string model_path;
  std::string format;
  Architecture arch = Architecture::kGpt2;
  Precision precision = Precision::kFp32;
  int64_t group_size = 0;            // int8-weight-only: inputs per weight scale (0 = per row)
  std::string device;
  size_t weight_bytes = 0;           // everything resident for the weights
  size_t original_bytes = 0;         // the same tensors in fp32
  double load_seconds = 0;           // open + read + upload + quantize
  double quantize_seconds = 0;       // the part spent in make_linear / make_dense
  size_t peak_device_bytes = 0;      // peak during load
  std::vector<TensorReport> tensors;
  std::map<std::string, size_t> bytes_by_class;
  // int8-smooth: per smoothed linear, the alpha it was smoothed with (negative: the search chose no smoothing).
  std::map<std::string, double> smoothing_alpha;
};

// --group-size auto: int8-weight-only, int8 and int8-smooth in groups of kInt8WeightGroup where the backend has
// the kernels for that precision (Backend::weight_groups_by_default: the CPU; W8A8 groups need AVX-512 VNNI) and
// every linear's in-features (hidden, heads x head_dim, intermediate) are whole groups, one scale per row
// otherwise; 0 for every other precision. Chosen by the numbers (docs/QUANTIZATION.md), llama.cpp's method on all
// of three texts: int8-weight-only +0.06% mean perplexity change in groups (+0.46% per row, on fewer tokens) for
// 3.7% more weight bytes at the same GEMV time (bench/results/int8_group_size.json); int8 +0.38% in groups against
// +3.57% per row and token (llama.cpp's Q8_0 +0.31%), int8-smooth +0.07% against +0.97%, for about 5% of batch-1
// decode and 19% of prefill (bench/results/quality_w8a8_groups_full_texts.json, int8_w8a8_groups_speed.json).
constexpr int64_t kGroupSizeAuto = -1;
int64_t resolve_group_size(int64_t requested, Precision precision, bool backend_has_groups,
                           const ModelConfig& config);

// What the quantization plan decides for the tensors that are not ordinary linears.
struct LoadOptions {
  Precision precision = Precision::kFp32;
  // int8 modes: also quantize the embedding table and the LM head (in the weights' precision and groups);
  // nullopt (auto): where the weights are in groups of 32, whose Q8_0 blocks keep a Q8_0 table as the file has it,
  // else fp16. Chosen by the numbers: on the default model (its table Q8_0 in the file), llama.cpp's method on all
  // of three texts, int8 in groups +0.29% mean perplexity with the table quantized against +0.38% in fp16, and
  // int8-weight-only +0.05% against +0.06% (bench/results/quality_int8_embeddings_groups.json), for a third less
  // of the bytes a decode step reads; per row it cost +0.96% (bench/results/int8_embeddings_choice.json).
  std::optional<bool> quantize_embeddings;
  bool compute_error = true;
  // int8-weight-only, int8, int8-smooth: inputs per weight scale along K, 0 (one scale per output row) or 32
  // (Q8_0 blocks; int8 and int8-smooth then quantize activations by groups of 32 too); anything else, another
  // precision, or a backend without group kernels for it is refused at load. kGroupSizeAuto (the default) is
  // resolve_group_size's choice; the load report says what was loaded.
  int64_t group_size = kGroupSizeAuto;
  // int8-smooth (SmoothQuant): Model::load first loads the model in fp32 and runs it over a calibration text,
  // recording the per-input-channel absmax of the activations entering each linear that follows a norm (and
  // o_proj / down_proj, for the folds below; and a sample of those activations); the smoothing factors s = absmax(X)^alpha / absmax(W)^(1-alpha) are then
  // divided out of that norm's weight (and bias) and multiplied into the linear's weight columns before W8A8
  // quantization. alpha is fixed (0.5) or searched per linear (engine/smoothing.h): measured on the default
  // model, the search (which picks 0.6-0.9) scores worse than 0.5 (bench/results/int8_smooth_search.json).
  std::vector<int32_t> calibration_ids;     // calibration token ids; empty = tokenize calibration_file
  std::string calibration_file;             // empty = $QUANTSERVE_CALIBRATION_FILE, else
                                            // /usr/share/common-licenses/Apache-2.0, else a built-in paragraph
  int64_t calibration_tokens = 512;         // the first N tokens of the calibration text
  float smoothing_alpha = 0.5f;             // in [0, 1]: fixed; negative: searched per linear.
                                            // $QUANTSERVE_SMOOTHING_ALPHA (a number or 'search') overrides
  // int8-smooth beyond the norms: o_proj's input is smoothed with the factors folded into v_proj's output rows
  // (one factor per KV channel, shared by the query heads of a group, so the fold is exact under GQA) and
  // down_proj's input with them folded into up_proj's output rows (act(gate) * up is linear in up). The
  // architectures where a fold is not exact (a GELU MLP's second linear) leave that linear unsmoothed.
  // These linears take `fold_alpha` (the search does not cover them: o_proj's factors are tied per group).
  // Default: down_proj's fold at alpha 0.6, o_proj's off. On the default model (mean Δ perplexity vs fp32 over
  // three texts, bench/results/int8_smooth_folds.json): norms alone +1.171%; + down_proj at 0.6 +0.335%, better
  // on every text (0.5: +0.985%, 0.7: +0.588%); + o_proj alone +1.243% at 0.5 (0.4: +1.222%, 0.6: +1.472%);
  // both at 0.5 +0.759%. $QUANTSERVE_SMOOTH_FOLDS (none, o, down, both) and $QUANTSERVE_FOLD_ALPHA override.
  bool smooth_o_proj = false;
  bool smooth_down_proj = true;
  float fold_alpha = 0.6f;
  // Plain int8 only: clip each weight row before rounding, at the clip minimising its rounding error
  // (engine/smoothing.h clip_rows_for_int8). Off by default: +3.542% -> +3.297% on the default model, short of
  // plain int8's +2.5% target and slower to load. $QUANTSERVE_INT8_CLIP (search or none) overrides.
  bool int8_clip_search = false;
  // Set by Model::load for the second (quantized) load: per linear name, its input's per-channel absmax, and
  // up to kSmoothingSampleTokens of its input rows (row-major, K floats each) for the alpha search.
  const std::map<std::string, std::vector<float>>* activation_absmax = nullptr;
  const std::map<std::string, std::vector<float>>* activation_samples = nullptr;
};

class Model {
 public:
  virtual ~Model() = default;
  const ModelConfig& config() const { return config_; }
  const LoadReport& report() const { return report_; }
  Backend& backend() const { return *backend_; }

  // Logits [L, V] (host floats, row-major) for the batch's logit_rows; writes the batch's K/V into `cache`.
  virtual void forward(const BatchLayout& batch, KvCache& cache, std::vector<float>& logits) = 0;

  // Factory: picks the architecture from the file's config.
  static std::unique_ptr<Model> load(const ModelFile& file, Backend& backend, const LoadOptions& options);

 protected:
  ModelConfig config_;
  LoadReport report_;
  Backend* backend_ = nullptr;
};

}  // namespace qs
