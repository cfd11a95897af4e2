// A loaded model: its weights on a backend and its forward pass. One implementation per architecture file.
#pragma once
#include <map>
#include <memory>
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
  std::string device;
  size_t weight_bytes = 0;           // everything resident for the weights
  size_t original_bytes = 0;         // the same tensors in fp32
  double load_seconds = 0;           // open + read + upload + quantize
  double quantize_seconds = 0;       // the part spent in make_linear / make_dense
  size_t peak_device_bytes = 0;      // peak during load
  std::vector<TensorReport> tensors;
  std::map<std::string, size_t> bytes_by_class;
};

// What the quantization plan decides for the tensors that are not ordinary linears.
struct LoadOptions {
  Precision precision = Precision::kFp32;
  bool quantize_embeddings = false;   // int8 modes: also quantize embeddings and the LM head
  bool compute_error = true;
  const std::vector<float>* smoothing_calibration = nullptr;  // reserved for int8-smooth
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
