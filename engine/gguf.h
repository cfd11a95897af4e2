// Reader for GGUF v2/v3 (llama.cpp's format): header, typed metadata, tensor infos and aligned tensor data.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/mapped_file.h"
#include "engine/model_file.h"

namespace qs {

enum class GgufValueType : uint32_t {
  kUint8 = 0, kInt8 = 1, kUint16 = 2, kInt16 = 3, kUint32 = 4, kInt32 = 5, kFloat32 = 6, kBool = 7,
  kString = 8, kArray = 9, kUint64 = 10, kInt64 = 11, kFloat64 = 12,
};
const char* gguf_value_type_name(GgufValueType t);

// One metadata value. Scalars: integers in `i` (and `u` for the unsigned ones), floats in `f`, bools in `b`,
// strings in `s`. Arrays keep their element type and hold their elements compactly by kind: integers and bools in
// `ints`, floats in `floats`, strings in `strings`, nested arrays in `arrays`.
struct GgufValue {
  GgufValueType type = GgufValueType::kUint8;
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0.0;
  bool b = false;
  std::string s;
  GgufValueType array_type = GgufValueType::kUint8;
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<std::string> strings;
  std::vector<GgufValue> arrays;

  bool is_integer() const;
  bool is_float() const { return type == GgufValueType::kFloat32 || type == GgufValueType::kFloat64; }
  bool is_string() const { return type == GgufValueType::kString; }
  bool is_array() const { return type == GgufValueType::kArray; }
  size_t array_size() const { return ints.size() + floats.size() + strings.size() + arrays.size(); }
};

// No metadata array in a real model comes near this (vocabularies are < 1M); larger counts are corruption.
constexpr uint64_t kGgufMaxArrayElements = uint64_t(1) << 24;

struct GgufTensorInfo {
  std::string name;
  uint32_t ggml_type = 0;
  std::vector<int64_t> dims;   // as stored: innermost (fastest-varying) first
  uint64_t offset = 0;         // from the start of the data section
};

// ggml tensor type codes quantserve reads.
constexpr uint32_t kGgmlF32 = 0, kGgmlF16 = 1, kGgmlQ4_0 = 2, kGgmlQ4_1 = 3, kGgmlQ5_0 = 6, kGgmlQ5_1 = 7,
                   kGgmlQ8_0 = 8, kGgmlQ2_K = 10, kGgmlQ3_K = 11, kGgmlQ4_K = 12, kGgmlQ5_K = 13, kGgmlQ6_K = 14,
                   kGgmlQ8_K = 15, kGgmlBF16 = 30;
const char* ggml_type_name(uint32_t type);  // "Q6_K" etc.; "type N" when unknown

struct GgufFile {
  std::shared_ptr<MappedFile> mapping;
  uint32_t version = 0;
  std::map<std::string, GgufValue> metadata;
  std::vector<GgufTensorInfo> infos;
  std::vector<StoredTensor> tensors;   // GGUF names, PyTorch-order shapes, views into `mapping`
  uint64_t alignment = 32;
  uint64_t data_offset = 0;            // where the data section starts in the file

  const GgufValue* find(const std::string& key) const;
  // Typed getters: the value when present with a compatible type; kInvalidModel when present with another type.
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_float(const std::string& key, double fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;
  std::string get_string(const std::string& key, const std::string& fallback) const;
};

// Parses and validates the whole file. Throws qs::Error: kNotFound, kInvalidModel (bad magic, truncated,
// offsets out of bounds, a block with a NaN or infinite scale), kUnsupported (version, tensor types other than
// F32/F16/BF16, Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 and the K-quants Q2_K..Q6_K/Q8_K).
GgufFile read_gguf(const std::string& path);

}  // namespace qs
