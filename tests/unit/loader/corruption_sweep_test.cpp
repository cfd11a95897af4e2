// Deterministic corruption sweep: random byte flips and truncations of each fixture must open or throw qs::Error.
#include <gtest/gtest.h>

#include <random>

#include "kernels/gguf_blocks.h"
#include "loader_test_util.h"

namespace qs::loader_test {
namespace {

// Opens `path`; a qs::Error is a pass, any other exception a failure (a crash fails the whole binary).
void open_or_qs_error(const std::string& path, const std::string& what) {
  try {
    auto m = ModelFile::open(path);
    for (const StoredTensor& t : m->tensors()) {
      if (t.dtype == DType::F32 || t.dtype == DType::F16 || t.dtype == DType::BF16 || is_gguf_block_type(t.dtype)) {
        m->get_f32(t.name, t.shape);   // every view must be readable in full
      }
    }
  } catch (const Error&) {
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": threw a non-qs exception: " << e.what();
  }
}

void sweep(const std::string& file, size_t header_bytes, int rounds, uint32_t seed) {
  const std::string original = read_bytes(file);
  std::mt19937 rng(seed);
  for (int round = 0; round < rounds; ++round) {
    std::string bytes = original;
    const int flips = 1 + int(rng() % 4);
    std::string what = "round " + std::to_string(round) + ":";
    for (int f = 0; f < flips; ++f) {
      // Mostly the header, where lies do damage; sometimes anywhere.
      const size_t span = (rng() % 4 == 0) ? bytes.size() : std::min(header_bytes, bytes.size());
      const size_t at = rng() % span;
      const uint8_t value = uint8_t(rng() % 4 == 0 ? 0xff : rng());
      bytes[at] = char(value);
      what += " [" + std::to_string(at) + "]=" + std::to_string(value);
    }
    if (rng() % 5 == 0) {
      bytes.resize(rng() % bytes.size());
      what += " truncated to " + std::to_string(bytes.size());
    }
    write_bytes(file, bytes);
    open_or_qs_error(file, what);
  }
  write_bytes(file, original);
}

TEST(CorruptionSweep, Gguf) {
  TempDir tmp;
  const std::string file = tmp.copy_fixture("tiny_llama.gguf");
  sweep(file, 5400, 400, 1234);
}

TEST(CorruptionSweep, Safetensors) {
  TempDir tmp;
  const std::string dir = tmp.copy_fixture("tiny_st");
  sweep(dir + "/model.safetensors", 600, 300, 99);
}

}  // namespace
}  // namespace qs::loader_test
