// libFuzzer target: a request's JSON schema text compiled to a grammar; it compiles or throws qs::Error.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/json_schema.h"
#include "kernels/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    qs::compile_json_schema(std::string_view(reinterpret_cast<const char*>(data), size));
  } catch (const qs::Error&) {
  }
  return 0;
}
