// libFuzzer target: encode then decode arbitrary bytes with the fixture tokenizers (GPT-2, SmolLM2, Llama 3 styles).
// The first input byte picks the tokenizer, the rest is the text. Checked, for every input:
//   the tokens' raw bytes concatenate back to the text, less the bytes the vocabulary has no token for (SmolLM2
//   has none for 0xF1, 0xF2, 0xF5-0xFF, never seen in its training text; they are dropped, as HF's BPE does);
//   decode() of valid UTF-8 text made only of such bytes gives the text back; decode() returns valid UTF-8;
//   the streaming decoder's pieces are whole UTF-8 characters and add up to decode().
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "engine/tokenizer.h"
#include "kernels/error.h"

namespace {

struct FixtureTokenizer {
  std::unique_ptr<qs::Tokenizer> tokenizer;
  std::array<bool, 256> byte_has_token{};   // a lone byte encodes to a token
};

const std::vector<FixtureTokenizer>& fixture_tokenizers() {
  static const auto tokenizers = [] {
    std::vector<FixtureTokenizer> out;
    for (const char* file : {"/tests/fixtures/models/tokenizer.json", "/tests/fixtures/tokenizer/smollm2/tokenizer.json",
                             "/tests/fixtures/tokenizer/llama3/tokenizer.json"}) {
      FixtureTokenizer f;
      f.tokenizer = std::make_unique<qs::Tokenizer>(qs::read_tokenizer_json(std::string(QS_SOURCE_DIR) + file));
      for (int b = 0; b < 256; ++b) f.byte_has_token[b] = !f.tokenizer->encode(std::string(1, char(b)), false).empty();
      out.push_back(std::move(f));
    }
    return out;
  }();
  return tokenizers;
}

bool is_valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    const uint32_t min_for_len[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_for_len[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

// A broken property is a crash for libFuzzer; the message says which one.
void check(bool ok, const char* property) {
  if (ok) return;
  std::fprintf(stderr, "tokenizer_roundtrip: %s\n", property);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto& tokenizers = fixture_tokenizers();
  const FixtureTokenizer& fixture = tokenizers[data[0] % tokenizers.size()];
  const qs::Tokenizer& tokenizer = *fixture.tokenizer;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::string encodable;
  for (unsigned char b : text)
    if (fixture.byte_has_token[b]) encodable += char(b);

  const std::vector<int32_t> ids = tokenizer.encode(text, /*parse_special=*/false);
  std::string raw;
  for (int32_t id : ids) raw += tokenizer.token_bytes(id);
  check(raw == encodable, "the tokens' bytes are not the text's bytes that have tokens");

  const std::string decoded = tokenizer.decode(ids);
  check(!is_valid_utf8(text) || encodable != text || decoded == text, "decode() changed valid UTF-8 text");
  check(is_valid_utf8(decoded), "decode() returned invalid UTF-8");

  qs::StreamingDecoder stream(tokenizer, /*skip_special=*/false);
  std::string streamed;
  for (int32_t id : ids) {
    const std::string piece = stream.push(id);
    check(is_valid_utf8(piece), "a streamed piece is not whole UTF-8");
    streamed += piece;
  }
  streamed += stream.flush();
  check(streamed == decoded, "the streamed pieces do not add up to decode()");

  (void)tokenizer.encode(text, /*parse_special=*/true);  // special tokens split out of arbitrary text
  return 0;
}
