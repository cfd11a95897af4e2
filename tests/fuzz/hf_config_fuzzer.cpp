// libFuzzer target: a Hugging Face config.json's text parsed into a ModelConfig.
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/hf_config.h"
#include "kernels/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    qs::parse_hf_config(std::string(reinterpret_cast<const char*>(data), size), "config.json");
  } catch (const qs::Error&) {
  }
  return 0;
}
