// Reader for the safetensors format: an 8-byte header length, a JSON header, then raw little-endian tensor data.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/mapped_file.h"
#include "engine/model_file.h"

namespace qs {

// One safetensors file, mapped, with every tensor checked against the file (bounds, size = shape x dtype,
// no overlaps). Tensors keep the names the file gives them.
struct SafetensorsFile {
  std::shared_ptr<MappedFile> mapping;
  std::vector<StoredTensor> tensors;                 // F32, F16, BF16, I8, U8, I32: views into `mapping`
  std::map<std::string, std::string> unsupported;    // tensors of valid but unsupported dtypes (I64, F64, ...) -> why
};

constexpr size_t kSafetensorsMaxHeaderBytes = 100u * 1000u * 1000u;

// Throws qs::Error (kNotFound, kInvalidModel, kUnsupported) naming the file, the tensor and what is wrong.
SafetensorsFile read_safetensors(const std::string& path);

}  // namespace qs
