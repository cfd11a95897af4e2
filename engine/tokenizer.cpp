// Byte-level BPE: special-token splitting, NFC (utf8proc), the pre-tokenizer regexes (PCRE2), BPE merges, and
// UTF-8-safe decoding. Behaviour follows Hugging Face `tokenizers` (BPE model + ByteLevel pre-tokenizer/decoder) exactly.
// SentencePiece-style BPE ("spm", Gemma) follows llama.cpp's llm_tokenizer_spm and HF's GemmaTokenizer.
#include "engine/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <queue>
#include <unordered_map>

#include "kernels/error.h"

namespace qs {

// ---------------------------------------------------------------------------------------------------------
// GPT-2 byte <-> printable-character table (bytes_to_unicode in GPT-2's encoder.py).
// ---------------------------------------------------------------------------------------------------------
namespace {

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

struct ByteTable {
  std::array<uint32_t, 256> byte_to_cp{};
  std::array<int16_t, 324> cp_to_byte{};  // every mapped code point is < 324; -1 = not a byte character
  std::array<std::string, 256> byte_to_utf8;
  ByteTable() {
    cp_to_byte.fill(-1);
    uint32_t extra = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      byte_to_cp[b] = printable ? b : extra++;
      cp_to_byte[byte_to_cp[b]] = static_cast<int16_t>(b);
      append_utf8(byte_to_utf8[b], byte_to_cp[b]);
    }
  }
};

const ByteTable& byte_table() {
  static const ByteTable table;
  return table;
}

// Next code point of valid UTF-8 `s` at `i` (advances i); returns UINT32_MAX on a malformed sequence.
uint32_t next_code_point(std::string_view s, size_t& i) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (len == 0 || i + len > s.size()) {
    ++i;
    return UINT32_MAX;
  }
  uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
  for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += len;
  return cp;
}

std::string byte_level_encode(std::string_view bytes) {
  const ByteTable& table = byte_table();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) out += table.byte_to_utf8[b];
  return out;
}

std::string byte_level_decode(std::string_view token) {
  // As the HF ByteLevel decoder: a token made only of byte characters maps back to its bytes; any other
  // token (an added token such as "<|im_start|>" written with other characters) is taken verbatim.
  const ByteTable& table = byte_table();
  std::string out;
  for (size_t i = 0; i < token.size();) {
    uint32_t cp = next_code_point(token, i);
    if (cp >= table.cp_to_byte.size() || table.cp_to_byte[cp] < 0) return std::string(token);
    out += static_cast<char>(table.cp_to_byte[cp]);
  }
  return out;
}

size_t utf8_lossy_append(std::string_view in, std::string& out, bool final) {
  // Replaces each maximal invalid subpart by U+FFFD, as Rust's String::from_utf8_lossy (so HF's decode).
  static const char kReplacement[] = "\xEF\xBF\xBD";
  size_t i = 0;
  while (i < in.size()) {
    unsigned char c = static_cast<unsigned char>(in[i]);
    if (c < 0x80) {
      out += static_cast<char>(c);
      ++i;
      continue;
    }
    int len = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    }
    if (len == 0) {
      out += kReplacement;
      ++i;
      continue;
    }
    int have = 1;
    bool bad = false;
    while (have < len) {
      if (i + have >= in.size()) break;
      unsigned char cc = static_cast<unsigned char>(in[i + have]);
      unsigned char l = have == 1 ? lo : 0x80, h = have == 1 ? hi : 0xBF;
      if (cc < l || cc > h) {
        bad = true;
        break;
      }
      ++have;
    }
    if (have == len) {
      out.append(in.substr(i, len));
      i += len;
    } else if (!bad && !final) {
      return i;  // a character still being completed: hold it back
    } else {
      out += kReplacement;
      i += have;
    }
  }
  return i;
}

// ---------------------------------------------------------------------------------------------------------
// Pre-tokenizer regexes.
// ---------------------------------------------------------------------------------------------------------

// Onig (which HF uses) takes \s as Unicode White_Space; PCRE2's \s with UCP also takes U+180E, so spell the
// class out.
#define QS_WS "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
constexpr const char* kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" QS_WS "\\p{L}\\p{N}]+|[" QS_WS "]+(?![^" QS_WS
    "])|[" QS_WS "]+";
constexpr const char* kLlama3Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^" QS_WS
    "\\p{L}\\p{N}]+[\\r\\n]*|[" QS_WS "]*[\\r\\n]+|[" QS_WS "]+(?![^" QS_WS "])|[" QS_WS "]+";
// Qwen2's: Llama 3's with digits one at a time.
constexpr const char* kQwen2Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^" QS_WS
    "\\p{L}\\p{N}]+[\\r\\n]*|[" QS_WS "]*[\\r\\n]+|[" QS_WS "]+(?![^" QS_WS "])|[" QS_WS "]+";
constexpr const char* kDigitPattern = "\\p{N}";
#undef QS_WS

class Regex {
 public:
  explicit Regex(const char* pattern) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &offset, nullptr);
    if (!code_) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      QS_FAIL(ErrorCode::kInternal, "tokenizer regex does not compile at ", offset, ": ",
              reinterpret_cast<const char*>(message));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // optional: falls back to the interpreter
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Splits `text` like HF's Split(behavior=Isolated): every match is a piece, and so is every gap between.
  template <typename Fn>
  void split(std::string_view text, Fn&& emit) const {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0, last = 0;
    while (pos < text.size()) {
      int rc = pcre2_match(code_, subject, text.size(), pos, 0, md, nullptr);
      if (rc < 0) break;  // PCRE2_ERROR_NOMATCH
      PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      size_t start = ov[0], end = ov[1];
      if (end == start) {  // the patterns never match empty; guard against looping anyway
        pos = end + 1;
        continue;
      }
      if (start > last) emit(text.substr(last, start - last));
      emit(text.substr(start, end - start));
      pos = last = end;
    }
    if (last < text.size()) emit(text.substr(last));
    pcre2_match_data_free(md);
  }

 private:
  pcre2_code* code_ = nullptr;
};

// Unicode NFC, as HF's NFC normalizer, over each run of valid UTF-8; a byte that is not UTF-8 (HF is never given
// one: Python strings are text) passes through untouched, so no byte of the caller's text is lost.
std::string nfc(std::string_view text) {
  const auto* data = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
  const auto size = static_cast<utf8proc_ssize_t>(text.size());
  if (std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
    return std::string(text);   // ASCII is its own NFC
  std::string out;
  out.reserve(text.size());
  utf8proc_ssize_t i = 0;
  while (i < size) {
    const utf8proc_ssize_t start = i;
    utf8proc_int32_t cp = 0;
    for (utf8proc_ssize_t n; i < size && (n = utf8proc_iterate(data + i, size - i, &cp)) > 0;) i += n;
    if (i > start) {
      utf8proc_uint8_t* composed = nullptr;
      const utf8proc_ssize_t len =
          utf8proc_map(data + start, i - start, &composed, utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
      if (len >= 0) {
        out.append(reinterpret_cast<const char*>(composed), size_t(len));
      } else {   // only out of memory: the run was checked valid
        out.append(text.substr(size_t(start), size_t(i - start)));
      }
      std::free(composed);
    }
    if (i < size) out += text[size_t(i++)];   // the byte utf8proc_iterate refused
  }
  return out;
}

// A run of byte-fallback tokens as HF's ByteFallback decoder gives it: its bytes if they are valid UTF-8 as a
// whole, else U+FFFD for each token.
std::string resolve_byte_run(const std::string& bytes, size_t tokens) {
  std::string checked;
  utf8_lossy_append(bytes, checked, /*final=*/true);
  if (checked == bytes) return bytes;
  std::string out;
  for (size_t i = 0; i < tokens; ++i) out += "\xEF\xBF\xBD";
  return out;
}

uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

struct Merge {
  int32_t rank;
  int32_t new_id;
};

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Spec validation.
// ---------------------------------------------------------------------------------------------------------
void validate_tokenizer_spec(const TokenizerSpec& spec, const std::string& source) {
  QS_CHECK(!spec.tokens.empty(), ErrorCode::kInvalidModel, source, ": the tokenizer has no tokens");
  QS_CHECK(spec.model == "bpe" || spec.model == "spm", ErrorCode::kInvalidModel, source, ": unknown tokenizer model '",
           spec.model, "' (expected bpe or spm)");
  QS_CHECK(spec.model != "spm" || (spec.scores.size() == spec.tokens.size() && spec.merges.empty()),
           ErrorCode::kInvalidModel, source, ": a SentencePiece tokenizer needs one score per token (", spec.scores.size(),
           " scores for ", spec.tokens.size(), " tokens) and no merges");
  QS_CHECK(spec.model == "spm" || spec.pretokenizer == "gpt2" || spec.pretokenizer == "gpt2-digits" ||
               spec.pretokenizer == "llama3" || spec.pretokenizer == "qwen2",
           ErrorCode::kInvalidModel, source, ": unknown pre-tokenizer '", spec.pretokenizer,
           "' (expected gpt2, gpt2-digits, llama3 or qwen2)");
  QS_CHECK(spec.normalizer.empty() || spec.normalizer == "nfc", ErrorCode::kInvalidModel, source,
           ": unknown normalizer '", spec.normalizer, "' (expected none or nfc)");
  const int64_t n = static_cast<int64_t>(spec.tokens.size());
  for (const auto* ids : {&spec.special_ids, &spec.added_ids}) {
    for (int32_t id : *ids) {
      QS_CHECK(id >= 0 && id < n, ErrorCode::kInvalidModel, source, ": added token id ", id,
               " is outside the vocabulary of ", n, " tokens");
      QS_CHECK(!spec.tokens[id].empty(), ErrorCode::kInvalidModel, source, ": added token id ", id, " is empty");
    }
  }
  for (int32_t id : {spec.bos_id, spec.eos_id}) {
    QS_CHECK(id >= -1 && id < n, ErrorCode::kInvalidModel, source, ": BOS/EOS id ", id,
             " is outside the vocabulary of ", n, " tokens");
  }
  std::unordered_map<std::string_view, int32_t> ids;
  ids.reserve(spec.tokens.size());
  for (int32_t i = 0; i < n; ++i)
    if (!spec.tokens[i].empty()) ids.emplace(spec.tokens[i], i);
  std::string joined;
  for (size_t r = 0; r < spec.merges.size(); ++r) {
    const auto& [a, b] = spec.merges[r];
    for (const std::string* part : {&a, &b}) {
      QS_CHECK(ids.count(*part), ErrorCode::kInvalidModel, source, ": merge ", r, " ('", a, "' '", b,
               "') references unknown token '", *part, "'");
    }
    joined = a + b;
    QS_CHECK(ids.count(joined), ErrorCode::kInvalidModel, source, ": merge ", r, " ('", a, "' '", b,
             "') produces '", joined, "', which is not in the vocabulary");
  }
}

// ---------------------------------------------------------------------------------------------------------
// Tokenizer.
// ---------------------------------------------------------------------------------------------------------
// SentencePiece's space marker, U+2581.
constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";

std::string replace_spaces(std::string_view text, std::string_view with) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (c == ' ') {
      out += with;
    } else {
      out += c;
    }
  }
  return out;
}

// "▁the" -> " the", "<0x0A>" -> "\n" (the raw bytes an SPM token stands for).
std::string spm_token_bytes(const std::string& token) {
  if (token.size() == 6 && token.compare(0, 3, "<0x") == 0 && token[5] == '>') {
    const std::string hex = token.substr(3, 2);
    if (std::isxdigit(static_cast<unsigned char>(hex[0])) && std::isxdigit(static_cast<unsigned char>(hex[1]))) {
      return std::string(1, static_cast<char>(std::stoi(hex, nullptr, 16)));
    }
  }
  std::string out;
  for (size_t i = 0; i < token.size();) {
    if (token.compare(i, kSpaceMarker.size(), kSpaceMarker) == 0) {
      out += ' ';
      i += kSpaceMarker.size();
    } else {
      out += token[i++];
    }
  }
  return out;
}

struct Tokenizer::Impl {
  TokenizerSpec spec;
  bool spm = false;
  std::vector<uint8_t> byte_fallback;                   // "spm": id -> 1 for the <0xXX> tokens
  std::vector<std::string> bytes;                       // id -> raw bytes
  std::unordered_map<std::string, int32_t> ids;         // token string -> id
  std::unordered_map<uint64_t, Merge> merges;           // (left id, right id) -> rank, merged id
  std::array<int32_t, 256> byte_ids{};                  // byte -> id of its single-character token, -1 if none
  std::vector<uint8_t> special;                         // id -> 1 when special (skipped by skip_special)
  // Added tokens matched verbatim, by first byte, longest first (leftmost-longest, as HF's Aho-Corasick).
  struct Added {
    std::string text;
    int32_t id;
    bool special;
  };
  std::array<std::vector<Added>, 256> added_by_first_byte;
  bool has_added = false;
  std::vector<std::unique_ptr<Regex>> pretokenizer;     // applied in sequence, each splitting the pieces

  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;   // pre-token bytes -> ids
  mutable size_t cache_bytes = 0;                                        // keys and ids held by `cache`

  void bpe(std::string_view word, std::vector<int32_t>& out) const;
  void spm_encode(std::string_view text, std::vector<int32_t>& out) const;
  void encode_words(std::string_view text, std::vector<int32_t>& out) const;
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
};

Tokenizer::Tokenizer(TokenizerSpec spec) : impl_(std::make_unique<Impl>()) {
  validate_tokenizer_spec(spec, "tokenizer");
  Impl& m = *impl_;
  m.spec = std::move(spec);
  m.spm = m.spec.model == "spm";
  const auto& tokens = m.spec.tokens;
  m.bytes.reserve(tokens.size());
  m.ids.reserve(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    m.bytes.push_back(m.spm ? spm_token_bytes(tokens[i]) : byte_level_decode(tokens[i]));
    if (tokens[i].empty()) continue;
    // Gemma's GGUF spells its all-space tokens with real spaces; the text they match is ▁s (as HF respells them).
    const bool all_spaces = m.spm && tokens[i].find_first_not_of(' ') == std::string::npos;
    m.ids.emplace(all_spaces ? replace_spaces(tokens[i], kSpaceMarker) : tokens[i], static_cast<int32_t>(i));
  }
  // The later of two identical merges wins, as in HF (its map is collected in order).
  m.merges.reserve(m.spec.merges.size());
  for (size_t r = 0; r < m.spec.merges.size(); ++r) {
    const auto& [a, b] = m.spec.merges[r];
    m.merges[pair_key(m.ids.at(a), m.ids.at(b))] = Merge{static_cast<int32_t>(r), m.ids.at(a + b)};
  }
  const ByteTable& table = byte_table();
  for (int b = 0; b < 256; ++b) {
    char hex[8];
    std::snprintf(hex, sizeof hex, "<0x%02X>", b);
    auto it = m.ids.find(m.spm ? std::string(hex) : table.byte_to_utf8[b]);
    m.byte_ids[b] = it == m.ids.end() ? -1 : it->second;
  }
  if (m.spm) {
    m.byte_fallback.assign(tokens.size(), 0);
    for (int32_t id : m.byte_ids)
      if (id >= 0) m.byte_fallback[size_t(id)] = 1;
  }
  m.special.assign(tokens.size(), 0);
  for (int32_t id : m.spec.special_ids) m.special[id] = 1;
  auto add = [&](int32_t id, bool is_special) {
    const std::string& text = tokens[id];
    auto& bucket = m.added_by_first_byte[static_cast<unsigned char>(text[0])];
    for (const auto& a : bucket)
      if (a.text == text) return;
    bucket.push_back({text, id, is_special});
    m.has_added = true;
  };
  for (int32_t id : m.spec.special_ids) add(id, true);
  for (int32_t id : m.spec.added_ids) add(id, false);
  for (auto& bucket : m.added_by_first_byte)
    std::stable_sort(bucket.begin(), bucket.end(),
                     [](const Impl::Added& x, const Impl::Added& y) { return x.text.size() > y.text.size(); });
  if (m.spm) return;
  if (m.spec.pretokenizer == "gpt2-digits") m.pretokenizer.push_back(std::make_unique<Regex>(kDigitPattern));
  const std::string& kind = m.spec.pretokenizer;
  m.pretokenizer.push_back(std::make_unique<Regex>(kind == "llama3" ? kLlama3Pattern
                                                   : kind == "qwen2"  ? kQwen2Pattern
                                                                      : kGpt2Pattern));
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

// BPE over one pre-token, the way HF's Word::merge_all does it: a heap of candidate merges ordered by rank,
// then position; stale entries (a side already merged away) are skipped when popped.
void Tokenizer::Impl::bpe(std::string_view word, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  for (unsigned char b : word) {
    int32_t id = byte_ids[b];
    if (id < 0) continue;  // a byte without a token is dropped, as HF's BPE does without an unk token
    int32_t n = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, n - 1, n + 1, true});
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  struct Candidate {
    int32_t rank, pos, new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto find = [&](int32_t a, int32_t b) -> const Merge* {
    auto it = merges.find(pair_key(a, b));
    return it == merges.end() ? nullptr : &it->second;
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const Merge* mg = find(symbols[i].id, symbols[i + 1].id))
      queue.push({mg->rank, static_cast<int32_t>(i), mg->new_id});
  }
  while (!queue.empty()) {
    Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    const Merge* now = find(left.id, right.id);
    if (!now || now->new_id != top.new_id) continue;  // stale
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    if (left.prev >= 0) {
      if (const Merge* mg = find(symbols[left.prev].id, left.id)) queue.push({mg->rank, left.prev, mg->new_id});
    }
    if (left.next >= 0) {
      if (const Merge* mg = find(left.id, symbols[left.next].id)) queue.push({mg->rank, top.pos, mg->new_id});
    }
  }
  for (const Symbol& s : symbols)
    if (s.alive) out.push_back(s.id);
}

void Tokenizer::Impl::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = cache.find(std::string(word));
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> word_ids;
  if (spec.ignore_merges) {
    auto it = ids.find(byte_level_encode(word));
    if (it != ids.end()) word_ids.push_back(it->second);
  }
  if (word_ids.empty()) bpe(word, word_ids);
  out.insert(out.end(), word_ids.begin(), word_ids.end());
  // Bounded in bytes, and only words of the size real text repeats: a prompt of one 255 KB "word" (refused later
  // for its length, perhaps) would otherwise stay in memory.
  constexpr size_t kMaxCachedWord = 64, kMaxCacheBytes = size_t(16) << 20;
  if (word.size() > kMaxCachedWord) return;
  std::lock_guard<std::mutex> lock(cache_mutex);
  const size_t bytes = word.size() + word_ids.size() * sizeof(int32_t) + 64;   // + the node's own overhead
  if (cache_bytes + bytes > kMaxCacheBytes) {
    cache.clear();
    cache_bytes = 0;
  }
  if (cache.emplace(std::string(word), std::move(word_ids)).second) cache_bytes += bytes;
}

// SentencePiece BPE over a whole text (its spaces already ▁): symbols start as UTF-8 characters; the adjacent
// pair whose joined piece is a token with the highest score is merged first, the leftmost of equals; stale heap
// entries (a side merged away since) are skipped. A symbol that is no token is spelled in byte tokens.
void Tokenizer::Impl::spm_encode(std::string_view text, std::vector<int32_t>& out) const {
  struct Symbol {
    size_t begin, len;
    int32_t prev, next;
  };
  std::vector<Symbol> symbols;
  for (size_t i = 0; i < text.size();) {
    const size_t start = i;
    next_code_point(text, i);
    const int32_t n = static_cast<int32_t>(symbols.size());
    symbols.push_back({start, i - start, n - 1, n + 1});
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;
  struct Candidate {
    float score;
    int32_t left;
    size_t len;   // of the joined piece, to tell a stale entry
    bool operator<(const Candidate& o) const { return score != o.score ? score < o.score : left > o.left; }
  };
  std::priority_queue<Candidate> queue;
  auto try_pair = [&](int32_t left) {
    if (left < 0 || symbols[size_t(left)].next < 0) return;
    const Symbol& a = symbols[size_t(left)];
    const Symbol& b = symbols[size_t(a.next)];
    auto it = ids.find(std::string(text.substr(a.begin, a.len + b.len)));
    if (it != ids.end()) queue.push({spec.scores[size_t(it->second)], left, a.len + b.len});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) try_pair(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& a = symbols[size_t(top.left)];
    if (a.len == 0 || a.next < 0 || a.len + symbols[size_t(a.next)].len != top.len) continue;   // stale
    Symbol& b = symbols[size_t(a.next)];
    a.len += b.len;
    b.len = 0;
    a.next = b.next;
    if (a.next >= 0) symbols[size_t(a.next)].prev = top.left;
    try_pair(a.prev);
    try_pair(top.left);
  }
  for (int32_t i = 0; i >= 0; i = symbols[size_t(i)].next) {
    const Symbol& sym = symbols[size_t(i)];
    auto it = ids.find(std::string(text.substr(sym.begin, sym.len)));
    if (it != ids.end()) {
      out.push_back(it->second);
      continue;
    }
    for (size_t k = 0; k < sym.len; ++k) {   // byte fallback (HF drops a byte without a token, as we do)
      const int32_t id = byte_ids[static_cast<unsigned char>(text[sym.begin + k])];
      if (id >= 0) out.push_back(id);
    }
  }
}

void Tokenizer::Impl::encode_words(std::string_view raw, std::vector<int32_t>& out) const {
  const std::string normalized = spec.normalizer == "nfc" ? nfc(raw) : std::string();
  const std::string_view text = spec.normalizer == "nfc" ? std::string_view(normalized) : raw;
  if (spm) {
    spm_encode(replace_spaces(text, kSpaceMarker), out);
    return;
  }
  // Each regex of the pre-tokenizer splits every piece the previous one produced.
  auto apply = [&](auto& self, size_t level, std::string_view piece) -> void {
    if (level == pretokenizer.size()) {
      encode_word(piece, out);
      return;
    }
    pretokenizer[level]->split(piece, [&](std::string_view sub) { self(self, level + 1, sub); });
  };
  apply(apply, 0, text);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text_in, bool parse_special) const {
  const Impl& m = *impl_;
  std::vector<int32_t> out;
  out.reserve(text_in.size() / 3 + 4);
  std::string prefixed;   // appended, not " " + text: GCC 12 warns (-Wrestrict, falsely) on the operator+ form
  if (m.spm && m.spec.add_space_prefix) prefixed.append(1, ' ').append(text_in);
  const std::string_view text = prefixed.empty() ? text_in : std::string_view(prefixed);
  if (!m.has_added) {
    m.encode_words(text, out);
    return out;
  }
  size_t start = 0;  // beginning of the text not yet encoded
  for (size_t i = 0; i < text.size();) {
    const Impl::Added* found = nullptr;
    for (const auto& a : m.added_by_first_byte[static_cast<unsigned char>(text[i])]) {
      if ((parse_special || !a.special) && text.compare(i, a.text.size(), a.text) == 0) {
        found = &a;
        break;
      }
    }
    if (!found) {
      ++i;
      continue;
    }
    if (i > start) m.encode_words(text.substr(start, i - start), out);
    out.push_back(found->id);
    i += found->text.size();
    start = i;
  }
  if (start < text.size()) m.encode_words(text.substr(start), out);
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  const Impl& m = *impl_;
  std::string raw, run;
  size_t run_tokens = 0;
  for (int32_t id : ids) {
    if (id < 0 || id >= static_cast<int32_t>(m.bytes.size())) continue;  // HF skips unknown ids too
    if (skip_special && m.special[id]) continue;
    if (is_byte_fallback(id)) {
      run += m.bytes[id];
      ++run_tokens;
      continue;
    }
    if (run_tokens > 0) {
      raw += resolve_byte_run(run, run_tokens);
      run.clear();
      run_tokens = 0;
    }
    raw += m.bytes[id];
  }
  if (run_tokens > 0) raw += resolve_byte_run(run, run_tokens);
  std::string text;
  text.reserve(raw.size());
  utf8_lossy_append(raw, text, /*final=*/true);
  return text;
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  QS_CHECK(id >= 0 && id < static_cast<int32_t>(impl_->bytes.size()), ErrorCode::kInvalidArgument, "token id ", id,
           " is outside the vocabulary of ", impl_->bytes.size(), " tokens");
  return impl_->bytes[id];
}

std::optional<int32_t> Tokenizer::token_id(std::string_view token) const {
  auto it = impl_->ids.find(std::string(token));
  if (it == impl_->ids.end()) return std::nullopt;
  return it->second;
}

bool Tokenizer::is_byte_fallback(int32_t id) const {
  return id >= 0 && id < static_cast<int32_t>(impl_->byte_fallback.size()) && impl_->byte_fallback[size_t(id)];
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < static_cast<int32_t>(impl_->special.size()) && impl_->special[id];
}

int64_t Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->spec.tokens.size()); }
int32_t Tokenizer::bos_id() const { return impl_->spec.bos_id; }
int32_t Tokenizer::eos_id() const { return impl_->spec.eos_id; }
bool Tokenizer::add_bos() const { return impl_->spec.add_bos; }

// ---------------------------------------------------------------------------------------------------------
// StreamingDecoder.
// ---------------------------------------------------------------------------------------------------------
StreamingDecoder::StreamingDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(tokenizer), skip_special_(skip_special) {}

std::string StreamingDecoder::push(int32_t id) {
  if (id < 0 || id >= tokenizer_.vocab_size()) return {};
  if (skip_special_ && tokenizer_.is_special(id)) return {};
  if (tokenizer_.is_byte_fallback(id)) {   // held until the run ends: its validity decides how it decodes
    byte_run_ += tokenizer_.token_bytes(id);
    ++byte_run_tokens_;
    return {};
  }
  if (byte_run_tokens_ > 0) {
    pending_ += resolve_byte_run(byte_run_, byte_run_tokens_);
    byte_run_.clear();
    byte_run_tokens_ = 0;
  }
  pending_ += tokenizer_.token_bytes(id);
  std::string text;
  size_t used = utf8_lossy_append(pending_, text, /*final=*/false);
  pending_.erase(0, used);
  return text;
}

std::string StreamingDecoder::flush() {
  if (byte_run_tokens_ > 0) pending_ += resolve_byte_run(byte_run_, byte_run_tokens_);
  byte_run_.clear();
  byte_run_tokens_ = 0;
  std::string text;
  utf8_lossy_append(pending_, text, /*final=*/true);
  pending_.clear();
  return text;
}

}  // namespace qs
