// libFuzzer target: a .gguf file opened as a model (header, metadata, tensor infos, config and tokenizer from
// metadata, tensor renames and un-permutes); anything but a model or a qs::Error is a bug.
#include <cstddef>
#include <cstdint>

#include "engine/model_file.h"
#include "kernels/error.h"
#include "tests/fuzz/fuzz_input_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = qs::fuzz::write_input_file("model.gguf", data, size);
  try {
    auto model = qs::ModelFile::open(path);
    for (const qs::StoredTensor& t : model->tensors()) (void)t.numel();
  } catch (const qs::Error&) {
  }
  return 0;
}
