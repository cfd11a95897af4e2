// safetensors parsing and validation: every offset and size in the header is checked before a view is made.
#include "engine/safetensors.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "kernels/error.h"

namespace qs {

namespace {

using json = nlohmann::json;

struct DtypeInfo {
  const char* name;
  size_t element_bytes;
  bool supported;
  DType dtype;
};

// The dtypes the safetensors format defines; the first six become views, the rest are recorded as unsupported.
constexpr DtypeInfo kDtypes[] = {
    {"F32", 4, true, DType::F32},     {"F16", 2, true, DType::F16},     {"BF16", 2, true, DType::BF16},
    {"I8", 1, true, DType::I8},       {"U8", 1, true, DType::U8},       {"I32", 4, true, DType::I32},
    {"F64", 8, false, DType::F32},    {"I64", 8, false, DType::F32},    {"U64", 8, false, DType::F32},
    {"I16", 2, false, DType::F32},    {"U16", 2, false, DType::F32},    {"U32", 4, false, DType::F32},
    {"BOOL", 1, false, DType::F32},   {"F8_E4M3", 1, false, DType::F32}, {"F8_E5M2", 1, false, DType::F32},
    {"F8_E8M0", 1, false, DType::F32},
};

const DtypeInfo* find_dtype(const std::string& name) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

constexpr const char* kCorrupt = "; the model is corrupted or incomplete";

}  // namespace

SafetensorsFile read_safetensors(const std::string& path) {
  SafetensorsFile out;
  out.mapping = MappedFile::open(path);
  const uint8_t* base = out.mapping->data();
  const size_t file_size = out.mapping->size();

  QS_CHECK(file_size >= 8, ErrorCode::kInvalidModel, path, ": file is ", file_size,
           " bytes, too short to be a safetensors file (it needs at least an 8-byte header length)", kCorrupt);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];  // little-endian
  QS_CHECK(header_len <= kSafetensorsMaxHeaderBytes, ErrorCode::kInvalidModel, path, ": JSON header length ",
           header_len, " is larger than the ", kSafetensorsMaxHeaderBytes / 1000000,
           " MB limit; this is not a safetensors file or it is corrupted");
  QS_CHECK(header_len <= file_size - 8, ErrorCode::kInvalidModel, path, ": JSON header of ", header_len,
           " bytes runs past the end of the file (size ", file_size, ")", kCorrupt);
  const size_t data_start = 8 + size_t(header_len);
  const size_t data_size = file_size - data_start;

  json header;
  try {
    header = json::parse(reinterpret_cast<const char*>(base + 8), reinterpret_cast<const char*>(base + data_start));
  } catch (const json::exception& e) {
    QS_FAIL(ErrorCode::kInvalidModel, path, ": the header is not valid JSON (", e.what(), ")", kCorrupt);
  }
  QS_CHECK(header.is_object(), ErrorCode::kInvalidModel, path, ": the JSON header is not an object", kCorrupt);

  struct Span { size_t begin, end; size_t index; };
  std::vector<Span> spans;
  std::vector<std::string> span_names;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    const std::string where = str(path, ": tensor '", name, "'");
    QS_CHECK(entry.is_object(), ErrorCode::kInvalidModel, where, " has a header entry that is not an object", kCorrupt);
    const auto dtype_it = entry.find("dtype");
    const auto shape_it = entry.find("shape");
    const auto offsets_it = entry.find("data_offsets");
    QS_CHECK(dtype_it != entry.end() && dtype_it->is_string(), ErrorCode::kInvalidModel, where,
             " has no dtype string", kCorrupt);
    QS_CHECK(shape_it != entry.end() && shape_it->is_array(), ErrorCode::kInvalidModel, where,
             " has no shape array", kCorrupt);
    QS_CHECK(offsets_it != entry.end() && offsets_it->is_array() && offsets_it->size() == 2 &&
                 (*offsets_it)[0].is_number_unsigned() && (*offsets_it)[1].is_number_unsigned(),
             ErrorCode::kInvalidModel, where, " has no data_offsets [begin, end] of two non-negative integers",
             kCorrupt);
    const std::string dtype_name_str = dtype_it->get<std::string>();
    const DtypeInfo* info = find_dtype(dtype_name_str);
    QS_CHECK(info != nullptr, ErrorCode::kUnsupported, where, " has dtype '", dtype_name_str,
             "', which this loader does not know");

    std::vector<int64_t> shape;
    uint64_t numel = 1;
    constexpr uint64_t kMaxElements = uint64_t(1) << 48;
    for (const auto& d : *shape_it) {
      QS_CHECK(d.is_number_unsigned(), ErrorCode::kInvalidModel, where, " has a shape entry ", d.dump(),
               " that is not a non-negative integer", kCorrupt);
      const uint64_t v = d.get<uint64_t>();
      QS_CHECK(v <= kMaxElements && (v == 0 || numel <= kMaxElements / v), ErrorCode::kInvalidModel, where,
               " has an absurd shape ", shape_it->dump(), kCorrupt);
      numel *= v;
      shape.push_back(int64_t(v));
    }
    const uint64_t begin = (*offsets_it)[0].get<uint64_t>();
    const uint64_t end = (*offsets_it)[1].get<uint64_t>();
    QS_CHECK(begin <= end, ErrorCode::kInvalidModel, where, " has data_offsets [", begin, ", ", end,
             ") that end before they begin", kCorrupt);
    QS_CHECK(end <= data_size, ErrorCode::kInvalidModel, where, " data [", begin, ", ", end,
             ") is not within the file (file bytes [", data_start + begin, ", ", data_start + end,
             ") but the file has ", file_size, " bytes)", kCorrupt);
    const uint64_t expect = numel * info->element_bytes;
    QS_CHECK(end - begin == expect, ErrorCode::kInvalidModel, where, " has shape ", shape_string(shape),
             " and dtype ", info->name, ", which is ", expect, " bytes, but its data_offsets [", begin, ", ", end,
             ") hold ", end - begin, " bytes", kCorrupt);

    if (end > begin) {
      spans.push_back({size_t(begin), size_t(end), span_names.size()});
      span_names.push_back(name);
    }
    if (!info->supported) {
      out.unsupported[name] = str("tensor '", name, "' in ", path, " has dtype ", info->name,
                                  ", which quantserve does not load (supported: F32, F16, BF16, I8, U8, I32)");
      continue;
    }
    StoredTensor t;
    t.name = name;
    t.dtype = info->dtype;
    t.shape = std::move(shape);
    t.data = base + data_start + begin;
    t.nbytes = size_t(end - begin);
    t.file = path;
    out.tensors.push_back(std::move(t));
  }

  // Two tensors sharing bytes means the header lies about at least one of them.
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < spans.size(); ++i) {
    QS_CHECK(spans[i].begin >= spans[i - 1].end, ErrorCode::kInvalidModel, path, ": tensor '",
             span_names[spans[i].index], "' data [", spans[i].begin, ", ", spans[i].end, ") overlaps tensor '",
             span_names[spans[i - 1].index], "' data [", spans[i - 1].begin, ", ", spans[i - 1].end, ")", kCorrupt);
  }
  return out;
}

}  // namespace qs
