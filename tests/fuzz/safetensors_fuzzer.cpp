// libFuzzer target: the safetensors reader (8-byte length, JSON header, tensor bounds, sizes and overlaps).
#include <cstddef>
#include <cstdint>

#include "engine/safetensors.h"
#include "kernels/error.h"
#include "tests/fuzz/fuzz_input_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = qs::fuzz::write_input_file("model.safetensors", data, size);
  try {
    qs::SafetensorsFile file = qs::read_safetensors(path);
    for (const qs::StoredTensor& t : file.tensors) (void)t.numel();
  } catch (const qs::Error&) {
  }
  return 0;
}
