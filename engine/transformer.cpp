// Shared transformer machinery (see transformer.h) and Model::load, the architecture dispatch.
#include "engine/transformer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/smoothing.h"
#include "engine/tokenizer.h"
#include "kernels/error.h"

namespace qs {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}
}  // namespace

const char* architecture_name(Architecture a) {
  switch (a) {
    case Architecture::kGpt2: return "gpt2";
    case Architecture::kGptNeoX: return "gpt_neox";
    case Architecture::kLlama: return "llama";
    case Architecture::kQwen2: return "qwen2";
    case Architecture::kQwen3: return "qwen3";
    case Architecture::kMistral: return "mistral";
    case Architecture::kGemma3: return "gemma3";
  }
  return "?";
}

namespace {

std::unique_ptr<Model> make_model(const ModelFile& file, Backend& backend, const LoadOptions& options) {
  switch (file.config().arch) {
    case Architecture::kGpt2: return make_gpt2(file, backend, options);
    case Architecture::kGptNeoX: return make_gpt_neox(file, backend, options);
    case Architecture::kLlama: return make_llama(file, backend, options);
    case Architecture::kQwen2: return make_qwen2(file, backend, options);
    case Architecture::kQwen3: return make_qwen3(file, backend, options);
    case Architecture::kMistral: return make_mistral(file, backend, options);
    case Architecture::kGemma3: return make_gemma3(file, backend, options);
  }
  QS_FAIL(ErrorCode::kInternal, "unknown architecture");
}

// Calibration text where no file is found: plain English prose, a few hundred tokens.
constexpr const char* kBuiltinCalibrationText =
    "The purpose of a public library is to give everyone the same chance to read, to learn and to find out "
    "about the world. Anyone may walk in, sit down at a table and open a book about history, science, cooking, "
    "music or the law. The librarians answer questions, help people find what they are looking for and keep the "
    "collection in order, so that a book returned on Monday can be found again on Tuesday. Many libraries also "
    "lend newspapers, films and recordings, and they offer computers to those who have none at home. Children "
    "come after school to do their homework; older people come to read the news, to write letters or to meet "
    "friends. In the evening there may be a talk by a local writer, a class for people learning a new language, "
    "or a meeting of a club that discusses one novel each month. None of this is free to run: buildings must be "
    "heated and repaired, staff must be paid and new books must be bought every year. Towns pay for it because "
    "they believe that a community in which people can read and think for themselves is a better place to live, "
    "to work and to raise a family. When the weather is bad, the reading room is full; when the sun shines, "
    "people borrow a book and take it to the park.";

std::vector<int32_t> calibration_ids(const ModelFile& file, const LoadOptions& options) {
  if (!options.calibration_ids.empty()) return options.calibration_ids;
  std::string path = options.calibration_file;
  if (path.empty()) {
    if (const char* env = std::getenv("QUANTSERVE_CALIBRATION_FILE"); env && *env) {
      path = env;
    } else if (std::filesystem::exists("/usr/share/common-licenses/Apache-2.0")) {
      path = "/usr/share/common-licenses/Apache-2.0";
    }
  }
  std::string text = kBuiltinCalibrationText;
  if (!path.empty()) {
    std::ifstream in(path, std::ios::binary);
    QS_CHECK(in.good(), ErrorCode::kNotFound, "cannot read the int8-smooth calibration text '", path, "'");
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  QS_CHECK(!file.tokenizer_spec().empty(), ErrorCode::kInvalidModel,
           "int8-smooth calibration needs the model's tokenizer, and this model has none");
  const Tokenizer tok(file.tokenizer_spec());
  std::vector<int32_t> ids = tok.encode(text, /*parse_special=*/false);
  if (tok.add_bos() && tok.bos_id() >= 0) ids.insert(ids.begin(), tok.bos_id());
  if (options.calibration_tokens > 0 && int64_t(ids.size()) > options.calibration_tokens) {
    ids.resize(size_t(options.calibration_tokens));
  }
  QS_CHECK(!ids.empty(), ErrorCode::kInvalidArgument, "the int8-smooth calibration text is empty");
  return ids;
}

// Refuses a group size the load cannot honour, before anything is read.
void check_group_size(const LoadOptions& options, const Backend& backend) {
  if (options.group_size == 0) return;
  QS_CHECK(options.group_size == kInt8WeightGroup, ErrorCode::kInvalidArgument, "--group-size ",
           options.group_size, " is not built: the int8 modes scale per row (0) or per group of ",
           kInt8WeightGroup, " inputs (Q8_0 blocks)");
  QS_CHECK(has_weight_groups(options.precision), ErrorCode::kInvalidArgument, "--group-size ", options.group_size,
           " applies to int8-weight-only, int8 and int8-smooth, not to ", precision_name(options.precision),
           "; use --group-size 0");
  QS_CHECK(backend.supports_weight_groups(options.precision), ErrorCode::kUnsupported, "the ", backend.name(),
           " backend has no group-wise ", precision_name(options.precision),
           " kernels on this machine; use --group-size 0");
}

// `options` with plain int8's clip search as $QUANTSERVE_INT8_CLIP says (search or none), read once per load.
LoadOptions with_int8_clip_from_env(const LoadOptions& options) {
  LoadOptions o = options;
  if (const char* env = std::getenv("QUANTSERVE_INT8_CLIP"); env && *env) {
    const std::string clip = env;
    QS_CHECK(clip == "search" || clip == "none", ErrorCode::kInvalidArgument,
             "QUANTSERVE_INT8_CLIP must be search or none, got '", clip.substr(0, 32), "'");
    o.int8_clip_search = clip == "search";
  }
  return o;
}

// `options` with --group-size auto replaced by what resolve_group_size picks for this backend and model.
LoadOptions with_group_size_resolved(LoadOptions options, const Backend& backend, const ModelConfig& config) {
  options.group_size = resolve_group_size(options.group_size, options.precision,
                                          backend.weight_groups_by_default(options.precision), config);
  return options;
}

}  // namespace

int64_t resolve_group_size(int64_t requested, Precision precision, bool backend_has_groups,
                           const ModelConfig& config) {
  if (requested != kGroupSizeAuto) return requested;
  if (!has_weight_groups(precision) || !backend_has_groups) return 0;
  const bool whole_groups = config.hidden_size % kInt8WeightGroup == 0 &&
                            (config.num_heads * config.head_dim) % kInt8WeightGroup == 0 &&
                            config.intermediate_size % kInt8WeightGroup == 0;
  return whole_groups ? kInt8WeightGroup : 0;
}

std::unique_ptr<Model> Model::load(const ModelFile& file, Backend& backend, const LoadOptions& requested) {
  const LoadOptions options = with_group_size_resolved(with_int8_clip_from_env(requested), backend, file.config());
  QS_CHECK(backend.supports(options.precision), ErrorCode::kUnsupported, "the ", backend.name(),
           " backend does not support precision ", precision_name(options.precision));
  check_group_size(options, backend);
  const auto start = Clock::now();
  std::unique_ptr<Model> model;
  if (options.precision == Precision::kInt8Smooth && options.activation_absmax == nullptr) {
    // SmoothQuant: calibrate an fp32 copy (freed before the quantized load), then load with the factors folded.
    // The alpha is settled first, so a bad value is refused before the calibration runs, and the activation rows
    // the search scores on are recorded only when it is searched.
    LoadOptions smoothed = options;
    if (const char* env = std::getenv("QUANTSERVE_SMOOTHING_ALPHA"); env && std::string(env) == "search") {
      smoothed.smoothing_alpha = -1.0f;
    } else if (env && *env) {
      smoothed.smoothing_alpha = std::strtof(env, nullptr);
      QS_CHECK(smoothed.smoothing_alpha >= 0 && smoothed.smoothing_alpha <= 1, ErrorCode::kInvalidArgument,
               "QUANTSERVE_SMOOTHING_ALPHA must be in [0, 1] or 'search', got '", env, "'");
    }
    if (const char* env = std::getenv("QUANTSERVE_SMOOTH_FOLDS"); env && *env) {
      const std::string folds = env;
      QS_CHECK(folds == "none" || folds == "o" || folds == "down" || folds == "both", ErrorCode::kInvalidArgument,
               "QUANTSERVE_SMOOTH_FOLDS must be none, o, down or both, got '", folds, "'");
      smoothed.smooth_o_proj = folds == "o" || folds == "both";
      smoothed.smooth_down_proj = folds == "down" || folds == "both";
    }
    if (const char* env = std::getenv("QUANTSERVE_FOLD_ALPHA"); env && *env) {
      smoothed.fold_alpha = std::strtof(env, nullptr);
      QS_CHECK(smoothed.fold_alpha >= 0 && smoothed.fold_alpha <= 1, ErrorCode::kInvalidArgument,
               "QUANTSERVE_FOLD_ALPHA must be in [0, 1], got '", env, "'");
    }
    const bool search = smoothed.smoothing_alpha < 0;
    std::map<std::string, std::vector<float>> absmax, samples;
    {
      LoadOptions fp32 = options;
      fp32.precision = Precision::kFp32;
      fp32.compute_error = false;
      auto reference = make_model(file, backend, fp32);
      absmax = static_cast<TransformerModel&>(*reference)
                   .calibrate(calibration_ids(file, options), search ? &samples : nullptr);
    }
    smoothed.activation_absmax = &absmax;
    smoothed.activation_samples = search ? &samples : nullptr;
    model = make_model(file, backend, smoothed);
  } else {
    model = make_model(file, backend, options);
  }
  model->report_.load_seconds = seconds_since(start);
  return model;
}

TransformerModel::TransformerModel(const ModelFile& file, Backend& backend, const LoadOptions& options)
    : file_(file), options_(options) {
  config_ = file.config();
  backend_ = &backend;
  report_.model_path = file.path();
  report_.format = file.format();
  report_.arch = config_.arch;
  report_.precision = options.precision;
  report_.group_size = options.group_size;
  report_.device = backend.name();
}

HostLinear TransformerModel::read_linear(const std::string& weight, const std::string& bias, int64_t rows,
                                         int64_t cols) const {
  HostLinear h;
  h.rows = rows;
  h.cols = cols;
  h.weight = file_.get_f32(weight, {rows, cols});
  if (!bias.empty()) h.bias = file_.get_f32(bias, {rows});
  const StoredTensor& stored = file_.get(weight, {rows, cols});
  // Blocks the backend keeps without rounding them again: int4-weight-only's Q4 and Q8_0 ones, group-32
  // int8-weight-only's too (Q4_0 as Q8_0, Q4_1 as U8Min, both exact), group-32 W8A8's Q8_0 ones.
  const bool gguf_4_or_8 = stored.dtype == DType::Q4_0 || stored.dtype == DType::Q4_1 || stored.dtype == DType::Q8_0;
  const bool groups = options_.group_size == kInt8WeightGroup;
  const bool int4_blocks = options_.precision == Precision::kInt4WeightOnly && gguf_4_or_8;
  const bool int8_blocks = (options_.precision == Precision::kInt8WeightOnly && groups && gguf_4_or_8) ||
                           (options_.precision == Precision::kInt8 && groups && stored.dtype == DType::Q8_0);
  if (int4_blocks || int8_blocks) {
    const auto* data = static_cast<const uint8_t*>(stored.data);
    h.blocks.assign(data, data + stored.nbytes);
    h.block_dtype = stored.dtype;
  }
  return h;
}

HostLinear TransformerModel::read_conv1d(const std::string& weight, const std::string& bias, int64_t in,
                                         int64_t out) const {
  const std::vector<float> w = file_.get_f32(weight, {in, out});
  HostLinear h;
  h.rows = out;
  h.cols = in;
  h.weight.resize(size_t(in * out));
  for (int64_t k = 0; k < in; ++k) {
    for (int64_t n = 0; n < out; ++n) h.weight[size_t(n * in + k)] = w[size_t(k * out + n)];
  }
  if (!bias.empty()) h.bias = file_.get_f32(bias, {out});
  return h;
}

HostLinear TransformerModel::concat_rows(std::vector<HostLinear> parts) {
  HostLinear h;
  h.cols = parts.at(0).cols;
  const bool has_bias = !parts[0].bias.empty();
  // Stored blocks stack too (rows of whole blocks), when every part has them in the same type; otherwise the
  // stack is floats only and int4-weight-only rounds it.
  bool same_blocks = true;
  for (auto& p : parts) same_blocks = same_blocks && !p.blocks.empty() && p.block_dtype == parts[0].block_dtype;
  for (auto& p : parts) {
    QS_CHECK(p.cols == h.cols && p.bias.empty() != has_bias, ErrorCode::kInternal, "concat_rows: parts differ");
    h.rows += p.rows;
    h.weight.insert(h.weight.end(), p.weight.begin(), p.weight.end());
    h.bias.insert(h.bias.end(), p.bias.begin(), p.bias.end());
    if (same_blocks) h.blocks.insert(h.blocks.end(), p.blocks.begin(), p.blocks.end());
  }
  if (same_blocks) h.block_dtype = parts[0].block_dtype;
  return h;
}

std::unique_ptr<LinearWeight> TransformerModel::make_linear(const std::string& name, const std::string& tensor_class,
                                                            const HostLinear& host, Precision precision) {
  const auto start = Clock::now();
  HostTensor w{host.weight.data(), DType::F32, host.rows, host.cols};
  // Plain int8 with the clip search: the backend rounds the clamped copy (its reported error is against it).
  HostLinear clipped;
  // Groups of 32 have no row-wide scale for a clip to shrink: the search is for one scale per row.
  if (precision == Precision::kInt8 && tensor_class != "embedding" && tensor_class != "lm_head" &&
      options_.int8_clip_search && options_.group_size == 0) {
    clipped = host;
    clip_rows_for_int8(clipped.weight.data(), clipped.rows, clipped.cols);
    w.data = clipped.weight.data();
  }
  if ((precision == Precision::kInt4WeightOnly || precision == Precision::kInt8WeightOnly ||
       precision == Precision::kInt8) && !host.blocks.empty()) {
    w = HostTensor{host.blocks.data(), host.block_dtype, host.rows, host.cols};
  }
  HostTensor b{host.bias.data(), DType::F32, host.rows, 1};
  LinearOptions lo;
  lo.compute_error = options_.compute_error;
  // The group size is the load's precision's: a linear loaded in another one (an fp16 LM head) has none.
  if (precision == options_.precision && has_weight_groups(precision)) lo.group_size = options_.group_size;
  auto lin = backend_->make_linear(w, host.bias.empty() ? nullptr : &b, precision, lo);
  linear_names_[lin.get()] = name;
  quantize_seconds_ += seconds_since(start);
  TensorReport r;
  r.name = name;
  r.tensor_class = tensor_class;
  r.precision = precision;
  r.shape = {host.rows, host.cols};
  r.original_bytes = size_t(host.rows * host.cols) * 4 + host.bias.size() * 4;
  r.bytes = lin->weight_bytes + host.bias.size() * 4;
  r.error = lin->error;
  report_.tensors.push_back(r);
  return lin;
}

DenseWeight TransformerModel::make_dense(const std::string& name, const std::string& tensor_class, int64_t rows,
                                         int64_t cols, const std::vector<float>& divide_by) {
  const std::vector<int64_t> shape = cols == 1 ? std::vector<int64_t>{rows} : std::vector<int64_t>{rows, cols};
  std::vector<float> host = file_.get_f32(name, shape);
  if (!divide_by.empty()) {
    QS_CHECK(int64_t(divide_by.size()) == rows * cols, ErrorCode::kInternal, name, ": smoothing factors for ",
             divide_by.size(), " channels, the tensor has ", rows * cols);
    for (size_t i = 0; i < host.size(); ++i) host[i] /= divide_by[i];
  }
  return upload_dense(name, tensor_class, shape, host);
}

DenseWeight TransformerModel::upload_dense(const std::string& name, const std::string& tensor_class,
                                           const std::vector<int64_t>& shape, const std::vector<float>& host) {
  const int64_t rows = shape[0], cols = shape.size() == 2 ? shape[1] : 1;
  const auto start = Clock::now();
  DenseWeight d = backend_->make_dense(HostTensor{host.data(), DType::F32, rows, cols}, DType::F32);
  quantize_seconds_ += seconds_since(start);
  TensorReport r;
  r.name = name;
  r.tensor_class = tensor_class;
  r.precision = Precision::kFp32;
  r.shape = shape;
  r.original_bytes = host.size() * 4;
  r.bytes = d.bytes();
  report_.tensors.push_back(r);
  return d;
}

const std::vector<float>& TransformerModel::calibrated_absmax(const std::string& name) const {
  const auto it = options_.activation_absmax->find(name);
  QS_CHECK(it != options_.activation_absmax->end(), ErrorCode::kInternal, "int8-smooth: no calibration data for ",
           name);
  return it->second;
}

namespace {
// Multiplies W's (N x K) column k by s[col_factor(k)].
template <typename ColumnFactor>
void scale_columns(std::vector<float>& w, int64_t N, int64_t K, const std::vector<float>& s, ColumnFactor col_factor) {
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) w[size_t(n * K + k)] *= s[size_t(col_factor(k))];
  }
}
}  // namespace

std::vector<float> TransformerModel::smooth(const std::string& name, HostLinear& host) {
  if (options_.activation_absmax == nullptr) return {};
  const int64_t N = host.rows, K = host.cols;
  const std::vector<float>& x_max = calibrated_absmax(name);
  QS_CHECK(int64_t(x_max.size()) == K, ErrorCode::kInternal, name, ": calibration has ", x_max.size(),
           " channels, the weight ", K);
  // s_j = max|X_j|^a / max|W_j|^(1-a): moves part of the activations' outlier range into the weights; a is
  // fixed by the options or searched for this linear on the recorded activations (engine/smoothing.h).
  std::vector<float> s;
  double alpha = options_.smoothing_alpha;
  if (alpha >= 0) {
    s = smoothing_factors(x_max, weight_column_absmax(host.weight.data(), N, K), alpha);
  } else {
    QS_CHECK(options_.activation_samples != nullptr, ErrorCode::kInternal,
             "int8-smooth: the alpha search has no recorded activations");
    const auto sit = options_.activation_samples->find(name);
    QS_CHECK(sit != options_.activation_samples->end() && !sit->second.empty() && sit->second.size() % size_t(K) == 0,
             ErrorCode::kInternal, "int8-smooth: no recorded activations for ", name);
    AlphaSearchResult r = search_smoothing_alpha(sit->second.data(), int64_t(sit->second.size()) / K, x_max,
                                                 host.weight.data(), N, K, default_alpha_grid());
    alpha = r.alpha;
    s = std::move(r.factors);
  }
  smoothing_alphas_[name] = alpha;
  scale_columns(host.weight, N, K, s, [](int64_t k) { return k; });
  return s;
}

bool TransformerModel::smooth_through(const std::string& name, HostLinear& host, HostLinear& prev, int64_t first_row,
                                      int64_t group, int64_t head_dim) {
  if (options_.activation_absmax == nullptr) return false;
  const int64_t N = host.rows, K = host.cols, P = K / group;   // P: the rows of prev that feed host
  const std::vector<float>& x_max = calibrated_absmax(name);
  QS_CHECK(int64_t(x_max.size()) == K && K % (group * head_dim) == 0 && first_row + P <= prev.rows &&
               prev.blocks.empty(),
           ErrorCode::kInternal, name, ": cannot fold ", K, " input channels into ", P, " rows of ", prev.rows);
  const auto row_of = [&](int64_t k) { return (k / (group * head_dim)) * head_dim + k % head_dim; };
  // The channels sharing a row of prev must share its factor: their max absmax stands for all of them.
  const std::vector<float> w_col = weight_column_absmax(host.weight.data(), N, K);
  std::vector<float> x_row(size_t(P), 0.0f), w_row(size_t(P), 0.0f);
  for (int64_t k = 0; k < K; ++k) {
    const size_t r = size_t(row_of(k));
    x_row[r] = std::max(x_row[r], x_max[size_t(k)]);
    w_row[r] = std::max(w_row[r], w_col[size_t(k)]);
  }
  const std::vector<float> s = smoothing_factors(x_row, w_row, options_.fold_alpha);
  smoothing_alphas_[name] = options_.fold_alpha;
  scale_columns(host.weight, N, K, s, row_of);
  const int64_t PK = prev.cols;
  for (int64_t r = 0; r < P; ++r) {
    const float inv = 1.0f / s[size_t(r)];
    float* row = prev.weight.data() + (first_row + r) * PK;
    for (int64_t k = 0; k < PK; ++k) row[k] *= inv;
    if (!prev.bias.empty()) prev.bias[size_t(first_row + r)] *= inv;
  }
  return true;
}

void TransformerModel::smooth_o_proj(const std::string& name, HostLinear& o_proj, HostLinear& qkv,
                                     int64_t v_first_row) {
  // Attention output = softmax weights x V per query head: a factor on a V channel comes out on the same channel
  // of every query head that reads that KV head, and nothing else (RoPE and QK-norm touch q and k only).
  if (!options_.smooth_o_proj) return;
  smooth_through(name, o_proj, qkv, v_first_row, config_.num_heads / config_.num_kv_heads, config_.head_dim);
}

void TransformerModel::smooth_down_proj(const std::string& name, HostLinear& down, HostLinear& gate_up,
                                        int64_t up_first_row) {
  // act(gate) * (up / s) = (act(gate) * up) / s channel by channel: exact for any activation on the gate.
  if (!options_.smooth_down_proj) return;
  smooth_through(name, down, gate_up, up_first_row, 1, down.cols);
}

std::map<std::string, std::vector<float>> TransformerModel::calibrate(const std::vector<int32_t>& ids,
                                                                      std::map<std::string, std::vector<float>>* samples) {
  std::map<std::string, std::vector<float>> stats;
  struct Reset {
    std::map<std::string, std::vector<float>>*& p;
    std::map<std::string, std::vector<float>>*& q;
    ~Reset() { p = q = nullptr; }
  } reset{calibration_, calibration_samples_};
  calibration_ = &stats;
  calibration_samples_ = samples;
  const int64_t n = int64_t(ids.size()), window = std::min<int64_t>(config_.max_positions, n), bs = 16;
  calibration_stride_ = (n + kSmoothingSampleTokens - 1) / kSmoothingSampleTokens;
  KvCacheConfig kc{config_.num_layers, (window + bs - 1) / bs, bs, config_.num_kv_heads, config_.head_dim};
  auto cache = backend_->make_kv_cache(kc);
  std::vector<int32_t> table;
  for (int32_t b = 0; b < int32_t(kc.num_blocks); ++b) table.push_back(b);
  std::vector<float> logits;
  for (int64_t begin = 0; begin < n; begin += window) {
    const int64_t end = std::min(begin + window, n);
    calibration_first_ = begin;
    BatchLayout batch;
    for (int64_t p = begin; p < end; ++p) {
      batch.token_ids.push_back(ids[size_t(p)]);
      batch.positions.push_back(int32_t(p - begin));
      batch.seq_of_token.push_back(0);
    }
    batch.logit_rows.push_back(int32_t(end - begin - 1));
    batch.block_tables.push_back(table);
    batch.seq_lens.push_back(int32_t(end - begin));
    forward(batch, *cache, logits);
  }
  return stats;
}

void TransformerModel::observe_input(Tensor in, const LinearWeight& weight) {
  const int64_t T = in.rows, K = in.cols;
  observe_host_.resize(size_t(T * K));
  if (in.dtype == DType::F32) {
    backend_->copy_to_host(observe_host_.data(), in.data, observe_host_.size() * 4);
  } else {
    std::vector<uint16_t> half(size_t(T * K));
    backend_->copy_to_host(half.data(), in.data, half.size() * 2);
    convert_to_f32(observe_host_.data(), half.data(), in.dtype, T * K);
  }
  const std::string& name = linear_names_.at(&weight);
  std::vector<float>& m = (*calibration_)[name];
  if (m.empty()) m.assign(size_t(K), 0.0f);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t k = 0; k < K; ++k) m[size_t(k)] = std::max(m[size_t(k)], std::fabs(observe_host_[size_t(t * K + k)]));
  }
  if (calibration_samples_ == nullptr) return;
  // Evenly spaced tokens, off the window's first position (a BOS or attention-sink token is one of 512).
  std::vector<float>& rows = (*calibration_samples_)[name];
  for (int64_t t = 0; t < T; ++t) {
    if ((calibration_first_ + t) % calibration_stride_ != calibration_stride_ / 2) continue;
    if (int64_t(rows.size()) >= kSmoothingSampleTokens * K) break;
    rows.insert(rows.end(), observe_host_.begin() + t * K, observe_host_.begin() + (t + 1) * K);
  }
}

Precision TransformerModel::embedding_precision(const std::string& table) const {
  // Embeddings and the LM head stay in 16-bit floats in the quantized modes unless asked otherwise or the weights
  // are in groups (LoadOptions::quantize_embeddings): per row they are a large share of a small model's error
  // budget; in groups they cost nothing measurable and are a third of what a decode step reads.
  switch (options_.precision) {
    case Precision::kFp32: case Precision::kFp16: case Precision::kBf16:
      return options_.precision;
    case Precision::kInt4WeightOnly:
      // A table the file stores in GGUF blocks stays in them (no rounding: the LM head reads the file's values).
      if (const StoredTensor* t = file_.find(table); t && (t->dtype == DType::Q4_0 || t->dtype == DType::Q4_1 ||
                                                          t->dtype == DType::Q8_0)) {
        return options_.precision;
      }
      return options_.quantize_embeddings.value_or(false) ? options_.precision : Precision::kFp16;
    default:
      return options_.quantize_embeddings.value_or(options_.group_size == kInt8WeightGroup) ? options_.precision
                                                                                            : Precision::kFp16;
  }
}

void TransformerModel::load_embeddings(const std::string& table, const std::string& lm_head) {
  embed_ = make_linear(table, "embedding", read_linear(table, "", config_.vocab_size, config_.hidden_size),
                       embedding_precision(table));
  if (!config_.tie_word_embeddings) {
    lm_head_ = make_linear(lm_head, "lm_head", read_linear(lm_head, "", config_.vocab_size, config_.hidden_size),
                           embedding_precision(lm_head));
  }
}

void TransformerModel::require_ops(std::initializer_list<BackendOp> ops) const {
  for (BackendOp op : ops) {
    QS_CHECK(backend_->supports_op(op), ErrorCode::kUnsupported, "the ", backend_->name(), " backend cannot run ",
             architecture_name(config_.arch), " models: it has no kernel for ", backend_op_name(op));
  }
}

DenseWeight TransformerModel::make_dense_plus_one(const std::string& name, const std::string& tensor_class,
                                                  int64_t rows, const std::vector<float>& divide_by) {
  std::vector<float> host = file_.get_f32(name, {rows});
  for (float& w : host) w += 1.0f;
  if (!divide_by.empty()) {
    QS_CHECK(int64_t(divide_by.size()) == rows, ErrorCode::kInternal, name, ": smoothing factors for ",
             divide_by.size(), " channels, the tensor has ", rows);
    for (size_t i = 0; i < host.size(); ++i) host[i] /= divide_by[i];
  }
  return upload_dense(name, tensor_class, {rows}, host);
}

void TransformerModel::finish_load() {
  report_.quantize_seconds = quantize_seconds_;
  report_.smoothing_alpha = smoothing_alphas_;
  for (const auto& t : report_.tensors) {
    report_.weight_bytes += t.bytes;
    report_.original_bytes += t.original_bytes;
    report_.bytes_by_class[t.tensor_class] += t.bytes;
  }
  report_.peak_device_bytes = backend_->memory_info().peak_bytes;
}

void TransformerModel::ensure_activations(int64_t T) {
  const int64_t C = config_.hidden_size;
  const int64_t qkv_cols = (config_.num_heads + 2 * config_.num_kv_heads) * config_.head_dim;
  const int64_t att_cols = config_.num_heads * config_.head_dim;
  // GPT-2 and NeoX have one up-projection; the others a gate and an up projection side by side (2F).
  const bool gated = config_.arch != Architecture::kGpt2 && config_.arch != Architecture::kGptNeoX;
  const int64_t mlp_cols = gated ? 2 * config_.intermediate_size : config_.intermediate_size;
  Backend& b = *backend_;
  x_ = b.new_tensor(x_buf_, T, C);
  h_ = b.new_tensor(h_buf_, T, C);
  h2_ = b.new_tensor(h2_buf_, T, C);
  out_ = b.new_tensor(out_buf_, T, C);
  out2_ = b.new_tensor(out2_buf_, T, C);
  qkv_ = b.new_tensor(qkv_buf_, T, qkv_cols);
  att_ = b.new_tensor(att_buf_, T, att_cols);
  mlp_ = b.new_tensor(mlp_buf_, T, mlp_cols);
  if (gated) act_ = b.new_tensor(act_buf_, T, config_.intermediate_size);
  mlp_width_ = mlp_cols;
  capacity_tokens_ = std::max(capacity_tokens_, T);
}

void TransformerModel::self_attention(Tensor out, Tensor in, KvCache& cache, int64_t layer, const LinearWeight& qkv,
                                      const LinearWeight& proj, int64_t rotary_dim) {
  AttentionOptions a;
  a.rotary_dim = rotary_dim;
  a.rope_theta = config_.rope_theta;
  self_attention(out, in, cache, layer, qkv, proj, a);
}

void TransformerModel::self_attention(Tensor out, Tensor in, KvCache& cache, int64_t layer, const LinearWeight& qkv,
                                      const LinearWeight& proj, const AttentionOptions& a) {
  Backend& b = *backend_;
  const int64_t NH = config_.num_heads, NKV = config_.num_kv_heads, HD = config_.head_dim;
  if (calibration_) observe_input(in, qkv);
  b.linear(qkv_, in, qkv, Activation::kNone);
  if (a.q_norm != nullptr) b.head_rmsnorm(qkv_, *a.q_norm, *a.k_norm, NH, NKV, HD, config_.norm_eps);
  if (a.rotary_dim > 0) b.rope(qkv_, NH, NKV, HD, a.rotary_dim, a.rope_theta);
  if (a.window > 0) {
    b.attention_window(att_, qkv_, cache, layer, NH, NKV, HD, a.window);
  } else {
    b.attention(att_, qkv_, cache, layer, NH, NKV, HD);
  }
  if (calibration_) observe_input(att_, proj);
  b.linear(out, att_, proj, Activation::kNone);
}

void TransformerModel::gelu_mlp(Tensor out, Tensor in, const LinearWeight& fc, const LinearWeight& proj,
                                Activation act) {
  if (calibration_) observe_input(in, fc);
  backend_->linear(mlp_, in, fc, act);
  backend_->linear(out, mlp_, proj, Activation::kNone);
}

void TransformerModel::swiglu_mlp(Tensor out, Tensor in, const LinearWeight& gate_up, const LinearWeight& down) {
  Backend& b = *backend_;
  if (calibration_) observe_input(in, gate_up);
  b.linear(mlp_, in, gate_up, Activation::kNone);
  b.silu_mul(act_, mlp_);
  if (calibration_) observe_input(act_, down);
  b.linear(out, act_, down, Activation::kNone);
}

void TransformerModel::gated_mlp(Tensor out, Tensor in, const LinearWeight& gate_up, const LinearWeight& down,
                                 Activation act) {
  if (act == Activation::kSilu) return swiglu_mlp(out, in, gate_up, down);
  Backend& b = *backend_;
  if (calibration_) observe_input(in, gate_up);
  b.linear(mlp_, in, gate_up, Activation::kNone);
  b.gated_activation(act_, mlp_, act);
  if (calibration_) observe_input(act_, down);
  b.linear(out, act_, down, Activation::kNone);
}

void TransformerModel::forward(const BatchLayout& batch, KvCache& cache, std::vector<float>& logits) {
  const int64_t T = batch.num_tokens();
  const int64_t L = int64_t(batch.logit_rows.size());
  const int64_t V = config_.vocab_size, C = config_.hidden_size;
  QS_CHECK(T > 0, ErrorCode::kInternal, "forward called with an empty batch");
  Backend& b = *backend_;

  // Graphs for decode steps (the protocol is in kernels/backend.h; the CUDA backend implements it, the CPU's
  // graph_bucket is 0). A pure-decode pass — every sequence contributes exactly one token and wants its
  // logits — is padded to the backend's bucket of T with dummy sequences (token 0 at position 0, KV written
  // into the cache's scratch block, logits computed and dropped) and its block tables padded with -1 to a
  // power-of-two width, so the device layout depends on (bucket, width) alone: that pair is the graph's key.
  const BatchLayout* run = &batch;
  int64_t rows = T, logit_rows = L;
  uint64_t graph_key = 0;
  const int64_t bucket = calibration_ ? 0 : b.graph_bucket(T);
  const int32_t scratch_block = bucket > 0 ? b.graph_scratch_block(cache) : -1;
  bool pure_decode = scratch_block >= 0 && L == T && int64_t(batch.seq_lens.size()) == T &&
                     int64_t(batch.block_tables.size()) == T;
  size_t width = 8;
  for (int64_t t = 0; pure_decode && t < T; ++t) {
    pure_decode = batch.seq_of_token[size_t(t)] == t && batch.logit_rows[size_t(t)] == t &&
                  batch.seq_lens[size_t(t)] == batch.positions[size_t(t)] + 1;
    while (width < batch.block_tables[size_t(t)].size()) width *= 2;
  }
  if (pure_decode && bucket >= T) {
    graph_batch_ = batch;   // reuses the vectors' capacity from the last step
    for (auto& table : graph_batch_.block_tables) table.resize(width, -1);
    for (int64_t t = T; t < bucket; ++t) {
      graph_batch_.token_ids.push_back(0);
      graph_batch_.positions.push_back(0);
      graph_batch_.seq_of_token.push_back(int32_t(t));
      graph_batch_.logit_rows.push_back(int32_t(t));
      graph_batch_.block_tables.emplace_back(width, -1);
      graph_batch_.block_tables.back()[0] = scratch_block;
      graph_batch_.seq_lens.push_back(1);
    }
    run = &graph_batch_;
    rows = logit_rows = bucket;
    graph_key = uint64_t(bucket) | (uint64_t(width) << 32);
  }

  ensure_activations(rows);
  Tensor last = b.new_tensor(last_buf_, logit_rows, C);
  Tensor out = b.new_tensor(logits_buf_, logit_rows, V);
  // The pass's device work, from the uploaded batch to the logits on the device.
  auto device_pass = [&] {
    b.embedding(x_, *embed_, position_table());
    if (embedding_multiplier_ != 1.0f) b.scale(x_, embedding_multiplier_);
    forward_layers(*run, cache);
    b.gather_logit_rows(last, x_);
    final_norm_(last, last);
    b.linear(out, last, lm_head_ ? *lm_head_ : *embed_, Activation::kNone);
  };
  b.begin_batch(*run);
  if (graph_key == 0) {
    device_pass();
  } else {
    // A recorded graph holds the activations' addresses: when one has moved (a larger pass grew it), all go.
    const std::vector<const void*> buffers = {x_.data, h_.data, h2_.data, qkv_.data, att_.data, mlp_.data,
                                              act_.data, out_.data, out2_.data, last.data, out.data};
    if (buffers != graph_buffers_) {
      b.reset_graphs();
      graph_buffers_ = buffers;
    }
    if (!b.replay(graph_key, cache)) {
      device_pass();   // this step's result; it also sizes the backend's scratch and picks GEMM plans
      if (b.begin_capture(graph_key, cache)) {
        try {
          device_pass();   // recorded, not executed
        } catch (const std::exception&) {
          // The eager pass above succeeded, so this is the recording's own failure: end_capture() discards the
          // graph (and the backend stops trying this key); the step's logits are already right.
        }
        b.end_capture();
      }
    }
  }
  logits.resize(size_t(L * V));   // the first L rows; padding rows (if any) follow them and are dropped
  // A pass of mid-prompt chunks only wants no logits: nothing to copy (and memcpy to an empty vector's null
  // data is undefined even for 0 bytes; UBSan stops on it).
  if (L == 0) return;
  if (out.dtype == DType::F32) {
    b.copy_to_host(logits.data(), out.data, logits.size() * 4);
  } else {
    logits_half_.resize(size_t(L * V));
    b.copy_to_host(logits_half_.data(), out.data, logits_half_.size() * 2);
    convert_to_f32(logits.data(), logits_half_.data(), out.dtype, L * V);
  }
}

}  // namespace qs
