// A model on disk, opened: its config, its tensors as views into mapped memory, and its tokenizer's data.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/model_config.h"
#include "engine/tokenizer.h"
#include "kernels/dtype.h"

namespace qs {

// One stored tensor. Shape is in PyTorch order (outermost first): a Linear weight is [out, in].
// `data` points into the memory-mapped file (or into an owned buffer the ModelFile keeps alive).
// Names and layouts are those of the Hugging Face checkpoint whatever the format, so architecture code has one
// naming: GPT-2 "transformer.h.N.attn.c_attn.weight" (Conv1D layout [in, out], "transformer." added when the
// file lacks it), GPT-NeoX "gpt_neox.layers.N...." (fused QKV interleaved per head), Llama "model.layers.N....".
// GGUF tensors are renamed to these; where llama.cpp's converter reordered data (Llama Q/K rows for its
// interleaved RoPE, NeoX fused QKV, GPT-2 transposed Conv1D weights) the loader undoes it, and those tensors
// come out as F32 in a buffer the ModelFile owns.
struct StoredTensor {
  std::string name;                 // canonical Hugging Face name, e.g. "model.layers.0.self_attn.q_proj.weight"
  DType dtype = DType::F32;         // as stored: F32, F16, BF16 or a GGUF block format
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
  std::string file;                 // the file it came from, for error messages
  int64_t numel() const;
};

class ModelFile {
 public:
  // Opens a Hugging Face model directory (config.json + model.safetensors or model.safetensors.index.json
  // + tokenizer.json or vocab.json/merges.txt), or a .gguf file. Throws qs::Error naming the file, the tensor
  // and what is wrong (kNotFound, kInvalidModel, kUnsupported); never returns a half-valid model.
  static std::unique_ptr<ModelFile> open(const std::string& path);

  virtual ~ModelFile() = default;
  const std::string& path() const { return path_; }
  const std::string& format() const { return format_; }   // "safetensors" or "gguf"
  const ModelConfig& config() const { return config_; }
  const TokenizerSpec& tokenizer_spec() const { return tokenizer_spec_; }

  const std::vector<StoredTensor>& tensors() const { return tensors_; }
  const StoredTensor* find(const std::string& name) const;
  // The named tensor, checked to have exactly `shape`; throws kInvalidModel naming file, tensor and shapes.
  const StoredTensor& get(const std::string& name, const std::vector<int64_t>& shape) const;
  // The named tensor converted to float (dequantizing GGUF blocks); shape checked as in get().
  std::vector<float> get_f32(const std::string& name, const std::vector<int64_t>& shape) const;

 protected:
  std::string path_;
  std::string format_;
  ModelConfig config_;
  TokenizerSpec tokenizer_spec_;
  std::vector<StoredTensor> tensors_;
  std::map<std::string, size_t> index_;   // name -> position in tensors_
  // Tensors the file holds but this loader does not (e.g. an I64 buffer): name -> why. get() reports the reason
  // (kUnsupported) instead of calling them missing; find() returns nullptr for them.
  std::map<std::string, std::string> unsupported_;
  // Whatever `tensors_[i].data` points into: file mappings and buffers the loader materialised (e.g. GGUF Q/K
  // weights un-permuted to F32). Released with the ModelFile.
  std::vector<std::shared_ptr<const void>> storage_;
};

}  // namespace qs
