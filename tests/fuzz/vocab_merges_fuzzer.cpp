// libFuzzer target: GPT-2 style vocab.json + merges.txt; the input is vocab.json, a NUL byte, then merges.txt.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "engine/tokenizer.h"
#include "kernels/error.h"
#include "tests/fuzz/fuzz_input_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto* nul = static_cast<const uint8_t*>(std::memchr(data, 0, size));
  const size_t vocab_size = nul != nullptr ? size_t(nul - data) : size;
  const size_t merges_start = nul != nullptr ? vocab_size + 1 : size;
  const std::string vocab = qs::fuzz::write_input_file("vocab.json", data, vocab_size);
  const std::string merges = qs::fuzz::write_input_file("merges.txt", data + merges_start, size - merges_start);
  try {
    qs::Tokenizer tokenizer(qs::read_vocab_merges(vocab, merges));
    (void)tokenizer.decode(tokenizer.encode("Hello world! 123\n"));
  } catch (const qs::Error&) {
  }
  return 0;
}
