// GGUF parsing with every length, count and offset checked against the file before it is used.
#include "engine/gguf.h"

#include <algorithm>
#include <cstring>

#include "kernels/error.h"
#include "kernels/gguf_blocks.h"

namespace qs {

namespace {

constexpr const char* kCorrupt = "; the model is corrupted or incomplete";
constexpr int kMaxArrayDepth = 8;
constexpr int kMaxDims = 4;   // GGML_MAX_DIMS

size_t scalar_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8: case GgufValueType::kInt8: case GgufValueType::kBool: return 1;
    case GgufValueType::kUint16: case GgufValueType::kInt16: return 2;
    case GgufValueType::kUint32: case GgufValueType::kInt32: case GgufValueType::kFloat32: return 4;
    case GgufValueType::kUint64: case GgufValueType::kInt64: case GgufValueType::kFloat64: return 8;
    case GgufValueType::kString: return 8;   // at least its length
    case GgufValueType::kArray: return 12;   // at least its type and count
  }
  return 1;
}

// Bounds-checked little-endian reader over the mapped file; every failure names the file and what was read.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size, const std::string& path) : data_(data), size_(size), path_(path) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  void need(size_t n, const std::string& what) const {
    QS_CHECK(n <= remaining(), ErrorCode::kInvalidModel, path_, ": the file ends at byte ", size_, " while reading ",
             what, " (", n, " bytes needed at offset ", pos_, ")", kCorrupt);
  }
  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(const std::string& what) {
    const uint64_t len = read<uint64_t>(what);
    QS_CHECK(len <= remaining(), ErrorCode::kInvalidModel, path_, ": ", what, " has length ", len,
             ", which is beyond the end of the file (", remaining(), " bytes left at offset ", pos_, ")", kCorrupt);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), size_t(len));
    pos_ += size_t(len);
    return s;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& path_;
};

GgufValueType read_value_type(Reader& r, const std::string& path, const std::string& what) {
  const uint32_t t = r.read<uint32_t>(what);
  QS_CHECK(t <= uint32_t(GgufValueType::kFloat64), ErrorCode::kInvalidModel, path, ": ", what, " has value type ",
           t, ", which GGUF does not define", kCorrupt);
  return GgufValueType(t);
}

GgufValue read_value(Reader& r, GgufValueType type, const std::string& path, const std::string& what, int depth) {
  GgufValue v;
  v.type = type;
  switch (type) {
    case GgufValueType::kUint8: v.u = r.read<uint8_t>(what); v.i = int64_t(v.u); break;
    case GgufValueType::kInt8: v.i = r.read<int8_t>(what); break;
    case GgufValueType::kUint16: v.u = r.read<uint16_t>(what); v.i = int64_t(v.u); break;
    case GgufValueType::kInt16: v.i = r.read<int16_t>(what); break;
    case GgufValueType::kUint32: v.u = r.read<uint32_t>(what); v.i = int64_t(v.u); break;
    case GgufValueType::kInt32: v.i = r.read<int32_t>(what); break;
    case GgufValueType::kUint64: v.u = r.read<uint64_t>(what); v.i = int64_t(v.u); break;
    case GgufValueType::kInt64: v.i = r.read<int64_t>(what); break;
    case GgufValueType::kFloat32: v.f = r.read<float>(what); break;
    case GgufValueType::kFloat64: v.f = r.read<double>(what); break;
    case GgufValueType::kBool: {
      const uint8_t b = r.read<uint8_t>(what);
      QS_CHECK(b <= 1, ErrorCode::kInvalidModel, path, ": ", what, " is a bool with value ", int(b), kCorrupt);
      v.b = b != 0;
      break;
    }
    case GgufValueType::kString: v.s = r.read_string(what); break;
    case GgufValueType::kArray: {
      QS_CHECK(depth < kMaxArrayDepth, ErrorCode::kInvalidModel, path, ": ", what, " nests arrays more than ",
               kMaxArrayDepth, " deep", kCorrupt);
      v.array_type = read_value_type(r, path, what);
      const uint64_t count = r.read<uint64_t>(what);
      // Each element takes at least scalar_size bytes, so a count beyond what is left is a lie.
      QS_CHECK(count <= r.remaining() / scalar_size(v.array_type), ErrorCode::kInvalidModel, path, ": ", what,
               " claims ", count, " elements of type ", gguf_value_type_name(v.array_type),
               ", more than the rest of the file can hold", kCorrupt);
      QS_CHECK(count <= kGgufMaxArrayElements, ErrorCode::kInvalidModel, path, ": ", what, " claims ", count,
               " elements, more than any model's metadata holds", kCorrupt);
      for (uint64_t k = 0; k < count; ++k) {
        GgufValue e = read_value(r, v.array_type, path, what, depth + 1);
        if (e.is_integer()) {
          v.ints.push_back(e.i);
        } else if (e.type == GgufValueType::kBool) {
          v.ints.push_back(e.b ? 1 : 0);
        } else if (e.is_float()) {
          v.floats.push_back(e.f);
        } else if (e.is_string()) {
          v.strings.push_back(std::move(e.s));
        } else {
          v.arrays.push_back(std::move(e));
        }
      }
      break;
    }
  }
  return v;
}

bool supported_tensor_type(uint32_t t, DType* out) {
  switch (t) {
    case kGgmlF32: *out = DType::F32; return true;
    case kGgmlF16: *out = DType::F16; return true;
    case kGgmlBF16: *out = DType::BF16; return true;
    case kGgmlQ8_0: *out = DType::Q8_0; return true;
    case kGgmlQ4_0: *out = DType::Q4_0; return true;
    case kGgmlQ4_1: *out = DType::Q4_1; return true;
    case kGgmlQ5_0: *out = DType::Q5_0; return true;
    case kGgmlQ5_1: *out = DType::Q5_1; return true;
    case kGgmlQ2_K: *out = DType::Q2_K; return true;
    case kGgmlQ3_K: *out = DType::Q3_K; return true;
    case kGgmlQ4_K: *out = DType::Q4_K; return true;
    case kGgmlQ5_K: *out = DType::Q5_K; return true;
    case kGgmlQ6_K: *out = DType::Q6_K; return true;
    case kGgmlQ8_K: *out = DType::Q8_K; return true;
    default: return false;
  }
}

std::string dims_string(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

}  // namespace

const char* gguf_value_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8: return "uint8";
    case GgufValueType::kInt8: return "int8";
    case GgufValueType::kUint16: return "uint16";
    case GgufValueType::kInt16: return "int16";
    case GgufValueType::kUint32: return "uint32";
    case GgufValueType::kInt32: return "int32";
    case GgufValueType::kFloat32: return "float32";
    case GgufValueType::kBool: return "bool";
    case GgufValueType::kString: return "string";
    case GgufValueType::kArray: return "array";
    case GgufValueType::kUint64: return "uint64";
    case GgufValueType::kInt64: return "int64";
    case GgufValueType::kFloat64: return "float64";
  }
  return "?";
}

const char* ggml_type_name(uint32_t type) {
  static const char* const kNames[] = {
      "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K",
      "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
      "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0",
      "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4"};
  if (type < sizeof(kNames) / sizeof(kNames[0])) return kNames[type];
  return "unknown";
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufValueType::kUint8: case GgufValueType::kInt8: case GgufValueType::kUint16: case GgufValueType::kInt16:
    case GgufValueType::kUint32: case GgufValueType::kInt32: case GgufValueType::kUint64: case GgufValueType::kInt64:
      return true;
    default:
      return false;
  }
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = metadata.find(key);
  return it == metadata.end() ? nullptr : &it->second;
}

int64_t GgufFile::get_int(const std::string& key, int64_t fallback) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return fallback;
  QS_CHECK(v->is_integer(), ErrorCode::kInvalidModel, mapping->path(), ": metadata '", key, "' is a ",
           gguf_value_type_name(v->type), ", expected an integer", kCorrupt);
  QS_CHECK(v->type != GgufValueType::kUint64 || v->u <= uint64_t(INT64_MAX), ErrorCode::kInvalidModel,
           mapping->path(), ": metadata '", key, "' is ", v->u, ", out of range", kCorrupt);
  return v->i;
}

double GgufFile::get_float(const std::string& key, double fallback) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return fallback;
  if (v->is_integer()) return double(v->i);
  QS_CHECK(v->is_float(), ErrorCode::kInvalidModel, mapping->path(), ": metadata '", key, "' is a ",
           gguf_value_type_name(v->type), ", expected a number", kCorrupt);
  return v->f;
}

bool GgufFile::get_bool(const std::string& key, bool fallback) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return fallback;
  QS_CHECK(v->type == GgufValueType::kBool, ErrorCode::kInvalidModel, mapping->path(), ": metadata '", key,
           "' is a ", gguf_value_type_name(v->type), ", expected a bool", kCorrupt);
  return v->b;
}

std::string GgufFile::get_string(const std::string& key, const std::string& fallback) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return fallback;
  QS_CHECK(v->is_string(), ErrorCode::kInvalidModel, mapping->path(), ": metadata '", key, "' is a ",
           gguf_value_type_name(v->type), ", expected a string", kCorrupt);
  return v->s;
}

GgufFile read_gguf(const std::string& path) {
  GgufFile g;
  g.mapping = MappedFile::open(path);
  const uint8_t* base = g.mapping->data();
  const size_t file_size = g.mapping->size();
  Reader r(base, file_size, path);

  QS_CHECK(file_size >= 4 && std::memcmp(base, "GGUF", 4) == 0, ErrorCode::kInvalidModel, path,
           ": not a GGUF file (the first 4 bytes are not the magic 'GGUF')");
  r.read<uint32_t>("the magic");
  g.version = r.read<uint32_t>("the version");
  QS_CHECK(g.version == 2 || g.version == 3, ErrorCode::kUnsupported, path, ": GGUF version ", g.version,
           " is not supported (supported: 2 and 3", (g.version > 0xffff ? "; a big-endian file?" : ""), ")");
  const uint64_t tensor_count = r.read<uint64_t>("the tensor count");
  const uint64_t kv_count = r.read<uint64_t>("the metadata count");
  // A metadata pair is at least 8 (key length) + 4 (type) + 1 bytes, a tensor info at least 8 + 4 + 4 + 8.
  QS_CHECK(kv_count <= r.remaining() / 13, ErrorCode::kInvalidModel, path, ": the header claims ", kv_count,
           " metadata entries, more than the file can hold", kCorrupt);
  QS_CHECK(tensor_count <= r.remaining() / 24, ErrorCode::kInvalidModel, path, ": the header claims ", tensor_count,
           " tensors, more than the file can hold", kCorrupt);

  for (uint64_t k = 0; k < kv_count; ++k) {
    const std::string key = r.read_string(str("the key of metadata entry ", k));
    const std::string what = str("metadata '", key, "'");
    const GgufValueType type = read_value_type(r, path, what);
    GgufValue value = read_value(r, type, path, what, 0);
    QS_CHECK(g.metadata.emplace(key, std::move(value)).second, ErrorCode::kInvalidModel, path, ": metadata key '",
             key, "' appears twice", kCorrupt);
  }

  if (const GgufValue* a = g.find("general.alignment")) {
    QS_CHECK(a->is_integer() && a->i > 0 && (a->i & (a->i - 1)) == 0 && a->i <= (1 << 20), ErrorCode::kInvalidModel,
             path, ": general.alignment is not a power of two", kCorrupt);
    g.alignment = uint64_t(a->i);
  }

  g.infos.reserve(size_t(tensor_count));
  for (uint64_t k = 0; k < tensor_count; ++k) {
    GgufTensorInfo info;
    info.name = r.read_string(str("the name of tensor ", k));
    const std::string what = str("tensor '", info.name, "'");
    const uint32_t n_dims = r.read<uint32_t>(what);
    QS_CHECK(n_dims >= 1 && n_dims <= uint32_t(kMaxDims), ErrorCode::kInvalidModel, path, ": ", what, " has ",
             n_dims, " dimensions (GGUF allows 1 to ", kMaxDims, ")", kCorrupt);
    for (uint32_t d = 0; d < n_dims; ++d) {
      const int64_t dim = r.read<int64_t>(what);
      QS_CHECK(dim >= 0 && dim < (int64_t(1) << 40), ErrorCode::kInvalidModel, path, ": ", what, " has dimension ",
               dim, ", which is impossible", kCorrupt);
      info.dims.push_back(dim);
    }
    info.ggml_type = r.read<uint32_t>(what);
    info.offset = r.read<uint64_t>(what);
    g.infos.push_back(std::move(info));
  }
  const uint64_t header_end = r.pos();
  g.data_offset = (header_end + g.alignment - 1) / g.alignment * g.alignment;
  QS_CHECK(tensor_count == 0 || g.data_offset <= file_size, ErrorCode::kInvalidModel, path,
           ": the data section would start at byte ", g.data_offset, ", past the end of the file (size ", file_size,
           ")", kCorrupt);
  const uint64_t data_size = g.data_offset <= file_size ? file_size - g.data_offset : 0;

  std::map<std::string, size_t> seen;
  for (const GgufTensorInfo& info : g.infos) {
    const std::string where = str(path, ": tensor '", info.name, "'");
    QS_CHECK(seen.emplace(info.name, 0).second, ErrorCode::kInvalidModel, where, " appears twice", kCorrupt);
    StoredTensor t;
    QS_CHECK(supported_tensor_type(info.ggml_type, &t.dtype), ErrorCode::kUnsupported, where, " has type ",
             ggml_type_name(info.ggml_type), " (", info.ggml_type,
             "), which quantserve does not load (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, "
             "Q3_K, Q4_K, Q5_K, Q6_K, Q8_K)");
    int64_t numel = 1;
    for (int64_t d : info.dims) {
      QS_CHECK(d == 0 || numel <= (int64_t(1) << 48) / d, ErrorCode::kInvalidModel, where, " has an absurd shape ",
               dims_string(info.dims), kCorrupt);
      numel *= d;
    }
    const int64_t block = dtype_block_size(t.dtype);
    QS_CHECK(info.dims[0] % block == 0, ErrorCode::kInvalidModel, where, " has type ", dtype_name(t.dtype),
             " but its row length ", info.dims[0], " is not a multiple of the block size ", block, kCorrupt);
    const uint64_t nbytes = dtype_bytes(t.dtype, numel);
    QS_CHECK(info.offset % g.alignment == 0, ErrorCode::kInvalidModel, where, " data offset ", info.offset,
             " is not a multiple of the alignment ", g.alignment, kCorrupt);
    QS_CHECK(info.offset <= data_size && nbytes <= data_size - info.offset, ErrorCode::kInvalidModel, where,
             " data [", g.data_offset + info.offset, ", ", g.data_offset + info.offset + nbytes,
             ") is not within the file (size ", file_size, ")", kCorrupt);
    if (is_gguf_block_type(t.dtype)) {
      const int64_t bad = first_block_with_nonfinite_scale(base + g.data_offset + info.offset, t.dtype,
                                                           numel / block);
      QS_CHECK(bad < 0, ErrorCode::kInvalidModel, where, " (", dtype_name(t.dtype), ") block ", bad, " of ",
               numel / block, " has a scale that is not a finite number (NaN or infinite)", kCorrupt);
    }
    t.name = info.name;
    t.shape.assign(info.dims.rbegin(), info.dims.rend());   // GGUF is innermost-first; PyTorch outermost-first
    t.data = base + g.data_offset + info.offset;
    t.nbytes = size_t(nbytes);
    t.file = path;
    g.tensors.push_back(std::move(t));
  }

  // Overlapping tensors mean the offsets lie.
  std::vector<size_t> order(g.tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return g.infos[a].offset < g.infos[b].offset; });
  for (size_t k = 1; k < order.size(); ++k) {
    const size_t prev = order[k - 1], cur = order[k];
    QS_CHECK(g.tensors[prev].nbytes == 0 || g.infos[cur].offset >= g.infos[prev].offset + g.tensors[prev].nbytes,
             ErrorCode::kInvalidModel, path, ": tensor '", g.infos[cur].name, "' data at offset ", g.infos[cur].offset,
             " overlaps tensor '", g.infos[prev].name, "' (offset ", g.infos[prev].offset, ", ",
             g.tensors[prev].nbytes, " bytes)", kCorrupt);
  }
  return g;
}

}  // namespace qs
