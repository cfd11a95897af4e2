// libFuzzer target: a tokenizer.json read, validated, built into a Tokenizer, and used once both ways.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "engine/tokenizer.h"
#include "kernels/error.h"
#include "tests/fuzz/fuzz_input_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = qs::fuzz::write_input_file("tokenizer.json", data, size);
  try {
    qs::Tokenizer tokenizer(qs::read_tokenizer_json(path));
    // A spec that passed validation must work: every token decodes, and encoding plain text uses known ids.
    const std::vector<int32_t> ids = tokenizer.encode("Hello world! 123 <|im_start|>\n\xe2\x82\xac");
    for (int32_t id : ids)
      if (id < 0 || id >= tokenizer.vocab_size()) std::abort();  // an id outside the vocabulary
    (void)tokenizer.decode(ids);
  } catch (const qs::Error&) {
  }
  return 0;
}
