// GGUF block formats: the dequantization of every type against gguf.quants' reference bit for bit
// (tests/fixtures/loader/quant_vectors.gguf, made by tools/make_quant_vectors.py), and damaged blocks refused.
#include <gtest/gtest.h>

#include <cstring>

#include "engine/gguf.h"
#include "kernels/gguf_blocks.h"
#include "loader_test_util.h"

namespace qs::loader_test {
namespace {

const char* const kTypes[] = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"};

const StoredTensor& tensor(const GgufFile& g, const std::string& name) {
  for (const StoredTensor& t : g.tensors) {
    if (t.name == name) return t;
  }
  throw std::runtime_error("no tensor " + name);
}

TEST(GgufQuants, EveryBlockTypeMatchesTheGgufPackageBitForBit) {
  const GgufFile g = read_gguf(fixture("quant_vectors.gguf"));
  for (const char* type : kTypes) {
    SCOPED_TRACE(type);
    const StoredTensor& q = tensor(g, type);
    const StoredTensor& ref = tensor(g, std::string(type) + ".expected");
    EXPECT_STREQ(dtype_name(q.dtype), type);
    ASSERT_EQ(q.numel(), ref.numel());
    ASSERT_EQ(ref.dtype, DType::F32);
    EXPECT_EQ(q.nbytes, size_t(q.numel() / gguf_block_elements(q.dtype)) * gguf_block_bytes(q.dtype));
    std::vector<float> got(size_t(q.numel()));
    convert_to_f32(got.data(), q.data, q.dtype, q.numel());
    std::vector<float> want(size_t(ref.numel()));
    std::memcpy(want.data(), ref.data, want.size() * 4);
    size_t mismatches = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      uint32_t a, b;
      std::memcpy(&a, &got[i], 4);
      std::memcpy(&b, &want[i], 4);
      if (a != b && mismatches++ < 5) ADD_FAILURE() << type << " element " << i << ": " << got[i] << " vs " << want[i];
    }
    EXPECT_EQ(mismatches, 0u);
  }
}

struct QuantCopy {
  TempDir tmp;
  std::string path;
  std::string bytes;
  QuantCopy() : path(tmp.copy_fixture("quant_vectors.gguf")), bytes(read_bytes(path)) {}
  void save() const { write_bytes(path, bytes); }
  // Where tensor `name`'s data starts in the file.
  size_t data_at(const std::string& name) const {
    const GgufFile g = read_gguf(path);
    return size_t(static_cast<const uint8_t*>(tensor(g, name).data) - g.mapping->data());
  }
};

TEST(GgufQuants, NonFiniteScaleRefusedNamingFileTensorAndBlock) {
  struct Case {
    const char* type;
    size_t block_bytes, scale_offset;
  };
  // The second block's d (Q6_K: at the block's end; Q2_K: dmin), set to +inf (fp16 0x7c00).
  for (const Case c : {Case{"Q4_K", 144, 0}, Case{"Q6_K", 210, 208}, Case{"Q5_0", 22, 0}, Case{"Q2_K", 84, 82}}) {
    SCOPED_TRACE(c.type);
    QuantCopy f;
    poke<uint16_t>(f.bytes, f.data_at(c.type) + c.block_bytes + c.scale_offset, 0x7c00);
    f.save();
    expect_error([&] { read_gguf(f.path); }, ErrorCode::kInvalidModel,
                 {"quant_vectors.gguf", str("tensor '", c.type, "'"), "block 1 of", "not a finite number"});
  }
  QuantCopy f;   // Q8_K's d is a float32
  const float nan = __builtin_nanf("");
  poke<float>(f.bytes, f.data_at("Q8_K") + 2 * 292, nan);
  f.save();
  expect_error([&] { read_gguf(f.path); }, ErrorCode::kInvalidModel, {"'Q8_K'", "block 2 of 3", "not a finite"});
}

TEST(GgufQuants, LyingSizesRefused) {
  QuantCopy f;
  const size_t at = tensor_info_at(f.bytes, "Q6_K");
  poke<int64_t>(f.bytes, at + 4, 768 * 64);   // ne0: 64 times the blocks the data holds
  f.save();
  expect_error([&] { read_gguf(f.path); }, ErrorCode::kInvalidModel,
               {"quant_vectors.gguf", "'Q6_K'", "not within the file"});
  poke<int64_t>(f.bytes, at + 4, 128);        // half a 256-element block
  poke<int64_t>(f.bytes, at + 4 + 8, 6);
  f.save();
  expect_error([&] { read_gguf(f.path); }, ErrorCode::kInvalidModel, {"'Q6_K'", "Q6_K", "block size 256"});
}

}  // namespace
}  // namespace qs::loader_test
