// Byte-level BPE tokenizer (GPT-2, GPT-NeoX, SmolLM2 style), SentencePiece-style BPE (Gemma: scores, the ▁ space
// marker, byte fallback) and a UTF-8-safe streaming decoder.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qs {

// What a tokenizer is made of, independent of the file it came from (tokenizer.json, vocab.json +
// merges.txt, or GGUF metadata). Token strings are in byte-level form ("Ġthe") for "bpe", in SentencePiece form
// ("▁the", "<0x0A>") for "spm".
struct TokenizerSpec {
  // "bpe": byte-level BPE over merges after a regex pre-tokenizer. "spm": SentencePiece BPE as llama.cpp and
  // sentencepiece run it: spaces become ▁ (U+2581), no pre-tokenizer, the adjacent pair whose joined piece has
  // the highest score is merged first (leftmost on ties), and a character left without a token is spelled in
  // its bytes' <0xXX> tokens.
  std::string model = "bpe";
  std::vector<std::string> tokens;                              // id -> token string
  std::vector<float> scores;                                    // "spm": id -> merge priority (higher first)
  bool add_space_prefix = false;                                // "spm": prepend ▁ to the text
  std::vector<std::pair<std::string, std::string>> merges;     // in rank order
  std::vector<int32_t> special_ids;   // added/control tokens matched verbatim in text (e.g. <|im_start|>)
  std::vector<int32_t> added_ids;     // non-special added tokens: matched verbatim even when parse_special is
                                      // false, and kept by decode(skip_special) (HF "special": false)
  // Pre-tokenizer: "gpt2" (the GPT-2 regex), "gpt2-digits" (GPT-2 regex after splitting every digit on its
  // own, as SmolLM2 does), "llama3" (the Llama-3 regex), "qwen2" (Qwen2/2.5/3: Llama 3's regex but digits one at
  // a time). The loader picks it from tokenizer.json or GGUF.
  std::string pretokenizer = "gpt2";
  // Normalizer applied to the text between added tokens before pre-tokenizing: "" (none) or "nfc" (Unicode NFC,
  // as Qwen's tokenizer.json has it).
  std::string normalizer;
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  bool add_bos = false;                // prepend BOS when encoding a prompt
  bool ignore_merges = false;          // a pre-token that is itself in the vocab is taken whole (Llama 3)
  bool empty() const { return tokens.empty(); }
};

// Reads a Hugging Face tokenizer.json (BPE model with a ByteLevel pre-tokenizer). Throws qs::Error naming
// the file and what is wrong.
TokenizerSpec read_tokenizer_json(const std::string& path);
// Reads GPT-2-style vocab.json + merges.txt.
TokenizerSpec read_vocab_merges(const std::string& vocab_path, const std::string& merges_path);
// Checks that a spec is usable (ids in range, merges name known tokens whose concatenation is a token, known
// pre-tokenizer); throws qs::Error(kInvalidModel) starting with `source` (a file name) otherwise.
void validate_tokenizer_spec(const TokenizerSpec& spec, const std::string& source);
// Sets spec.pretokenizer, normalizer and ignore_merges for a GGUF's tokenizer.ggml.pre (llama.cpp's names:
// "smollm" -> "gpt2-digits", "gpt-2" -> "gpt2", "llama-bpe" -> "llama3" with ignore_merges, "qwen2" -> "qwen2" with
// NFC, ...). Returns false, leaving spec as it was, for a name this tokenizer does not implement.
bool set_gguf_pretokenizer(std::string_view ggml_pre, TokenizerSpec& spec);
// The tokenizer.ggml.pre names set_gguf_pretokenizer knows, comma-separated (for error messages).
std::string gguf_pretokenizer_names();

class Tokenizer {
 public:
  explicit Tokenizer(TokenizerSpec spec);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Token ids exactly as Hugging Face `tokenizers` gives them (add_special_tokens=False); special tokens
  // written in the text become their ids when parse_special is true.
  std::vector<int32_t> encode(std::string_view text, bool parse_special = true) const;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;
  // Raw bytes of one token (byte-level decoded); may be part of a UTF-8 character.
  const std::string& token_bytes(int32_t id) const;
  std::optional<int32_t> token_id(std::string_view token) const;   // by token string
  bool is_special(int32_t id) const;
  // "spm" only: a <0xXX> byte-fallback token. Decoding treats a run of them as HF's ByteFallback decoder does:
  // the run's bytes when they are valid UTF-8 as a whole, else one U+FFFD per token.
  bool is_byte_fallback(int32_t id) const;
  int64_t vocab_size() const;
  int32_t bos_id() const;
  int32_t eos_id() const;
  bool add_bos() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Turns a stream of ids into text pieces that are always whole UTF-8 characters: bytes of a character
// split across tokens are held back until the character is complete.
class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer& tokenizer, bool skip_special = true);
  std::string push(int32_t id);     // the newly completed text (possibly empty)
  std::string flush();              // whatever is held back (invalid bytes become U+FFFD)

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::string pending_;
  std::string byte_run_;        // bytes of consecutive byte-fallback tokens, held until the run ends
  size_t byte_run_tokens_ = 0;
};

}  // namespace qs
