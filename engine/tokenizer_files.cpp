// Reading a TokenizerSpec from Hugging Face tokenizer.json or GPT-2's vocab.json + merges.txt; GGUF pre-tokenizer names.
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/tokenizer.h"
#include "kernels/error.h"

namespace qs {
namespace {

using nlohmann::json;

std::string read_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  QS_CHECK(in.good(), ErrorCode::kNotFound, path, ": cannot open ", what, " (missing or unreadable)");
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

json parse_json(const std::string& path, const char* what) {
  std::string text = read_file(path, what);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    QS_FAIL(ErrorCode::kInvalidModel, path, ": ", what, " is not valid JSON (", e.what(), ")");
  }
}

// Splits a merge written "left right"; byte-level tokens never hold a plain space.
std::pair<std::string, std::string> split_merge(const std::string& line, const std::string& path, size_t index) {
  size_t space = line.find(' ');
  QS_CHECK(space != std::string::npos && space > 0 && space + 1 < line.size() &&
               line.find(' ', space + 1) == std::string::npos,
           ErrorCode::kInvalidModel, path, ": merge ", index, " '", line, "' is not two tokens separated by a space");
  return {line.substr(0, space), line.substr(space + 1)};
}

// The largest token id a vocabulary file may give: 8x the largest real vocabulary (Gemma 3's 262,144). Ids index
// a vector, so a bigger one is corruption that would cost gigabytes for a file of a few bytes (found by fuzzing).
constexpr int64_t kMaxTokenId = (int64_t{1} << 21) - 1;

// vocab: {"token": id, ...} -> tokens[id] (ids may leave holes, later filled by added tokens or left empty).
void read_vocab(const json& vocab, const std::string& path, const char* where, TokenizerSpec& spec) {
  QS_CHECK(vocab.is_object(), ErrorCode::kInvalidModel, path, ": ", where, " is not an object of token -> id");
  QS_CHECK(!vocab.empty(), ErrorCode::kInvalidModel, path, ": ", where, " is empty");
  for (const auto& [token, id] : vocab.items()) {
    QS_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() <= kMaxTokenId,
             ErrorCode::kInvalidModel, path, ": ", where, " gives token '", token, "' the id ", id.dump(),
             ", not an integer from 0 to ", kMaxTokenId);
    size_t i = id.get<size_t>();
    if (i >= spec.tokens.size()) spec.tokens.resize(i + 1);
    QS_CHECK(spec.tokens[i].empty(), ErrorCode::kInvalidModel, path, ": ", where, " gives id ", i,
             " to both '", spec.tokens[i], "' and '", token, "'");
    spec.tokens[i] = token;
  }
}

std::optional<int32_t> find_token(const TokenizerSpec& spec, const std::string& token) {
  for (size_t i = 0; i < spec.tokens.size(); ++i)
    if (spec.tokens[i] == token) return static_cast<int32_t>(i);
  return std::nullopt;
}

// The Llama 3 split regex as tokenizer.json spells it.
constexpr const char* kLlama3Split =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";
constexpr const char* kGpt2Split = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
// Qwen2's (Qwen2.5's, Qwen3's): Llama 3's but \p{N} one digit at a time.
constexpr const char* kQwen2Split =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";

std::string pretokenizer_kind(const json& pre, const std::string& path) {
  auto unsupported = [&]() -> std::string {
    QS_FAIL(ErrorCode::kUnsupported, path, ": pre_tokenizer ", pre.dump(),
            " is not supported (expected ByteLevel, Sequence[Digits(individual_digits), ByteLevel] or "
            "Sequence[Split(the Llama-3 or Qwen2 regex), ByteLevel])");
  };
  auto type = [](const json& j) { return j.is_object() ? j.value("type", std::string()) : std::string(); };
  auto byte_level = [&](const json& j, bool with_regex) {
    return type(j) == "ByteLevel" && !j.value("add_prefix_space", false) && j.value("use_regex", true) == with_regex;
  };
  if (byte_level(pre, true)) return "gpt2";
  if (type(pre) != "Sequence" || !pre.contains("pretokenizers") || !pre["pretokenizers"].is_array()) return unsupported();
  const json& seq = pre["pretokenizers"];
  if (seq.size() == 2 && type(seq[0]) == "Digits" && seq[0].value("individual_digits", false) && byte_level(seq[1], true))
    return "gpt2-digits";
  if (seq.size() == 2 && type(seq[0]) == "Split" && byte_level(seq[1], false) &&
      seq[0].value("behavior", std::string()) == "Isolated" && !seq[0].value("invert", false) &&
      seq[0].contains("pattern") && seq[0]["pattern"].is_object() && seq[0]["pattern"].contains("Regex")) {
    std::string regex = seq[0]["pattern"]["Regex"].get<std::string>();
    if (regex == kLlama3Split) return "llama3";
    if (regex == kQwen2Split) return "qwen2";
    if (regex == kGpt2Split) return "gpt2";
  }
  if (seq.size() == 1 && byte_level(seq[0], true)) return "gpt2";
  return unsupported();
}

// bos/eos from tokenizer_config.json beside the tokenizer, when there is one ("bos_token": "<s>" or {content}).
void read_tokenizer_config(const std::string& tokenizer_path, TokenizerSpec& spec) {
  std::filesystem::path config = std::filesystem::path(tokenizer_path).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (!std::filesystem::exists(config, ec)) return;
  json j = parse_json(config.string(), "tokenizer config");
  if (!j.is_object()) return;
  auto token_of = [&](const char* key) -> std::optional<int32_t> {
    if (!j.contains(key)) return std::nullopt;
    const json& v = j[key];
    std::string text;
    if (v.is_string()) text = v.get<std::string>();
    else if (v.is_object() && v.contains("content") && v["content"].is_string()) text = v["content"].get<std::string>();
    else return std::nullopt;
    return find_token(spec, text);
  };
  if (auto id = token_of("bos_token")) spec.bos_id = *id;
  if (auto id = token_of("eos_token")) spec.eos_id = *id;
  if (j.contains("add_bos_token") && j["add_bos_token"].is_boolean()) spec.add_bos = j["add_bos_token"].get<bool>();
}

}  // namespace

namespace {

// tokenizer.ggml.pre names, grouped as llama.cpp's llama_vocab groups them by the regexes they split with. llama.cpp
// applies no normalizer; for "qwen2" we apply NFC as transformers' GGUF converter and Qwen's own tokenizer.json do.
// Every other name (deepseek-llm, deepseek-coder, deepseek-v3, tekken, chatglm-bpe, stablelm2, gpt-4o, ...) has a
// regex of its own that is not implemented: such a file is refused by name rather than split the wrong way.
struct GgufPretokenizer {
  const char* name;
  const char* pretokenizer;
  const char* normalizer;
  bool ignore_merges;
};
constexpr GgufPretokenizer kGgufPretokenizers[] = {
    {"gpt-2", "gpt2", "", false}, {"gpt2", "gpt2", "", false}, {"mpt", "gpt2", "", false},
    {"olmo", "gpt2", "", false}, {"jais", "gpt2", "", false}, {"trillion", "gpt2", "", false},
    // "\p{N}" first, then the GPT-2 regex
    {"smollm", "gpt2-digits", "", false}, {"starcoder", "gpt2-digits", "", false}, {"refact", "gpt2-digits", "", false},
    {"command-r", "gpt2-digits", "", false}, {"codeshell", "gpt2-digits", "", false},
    {"exaone", "gpt2-digits", "", false}, {"minerva-7b", "gpt2-digits", "", false},
    // llama.cpp's LLAMA3 type takes a pre-token that is itself a token whole (ignore_merges); SMAUG and DBRX,
    // with the same regex, do not.
    {"llama3", "llama3", "", true}, {"llama-v3", "llama3", "", true}, {"llama-bpe", "llama3", "", true},
    {"falcon3", "llama3", "", true}, {"falcon-h1", "llama3", "", true}, {"pixtral", "llama3", "", true},
    {"smaug-bpe", "llama3", "", false}, {"dbrx", "llama3", "", false},
    {"qwen2", "qwen2", "nfc", false},
};

}  // namespace

bool set_gguf_pretokenizer(std::string_view pre, TokenizerSpec& spec) {
  for (const GgufPretokenizer& p : kGgufPretokenizers) {
    if (pre != p.name) continue;
    spec.pretokenizer = p.pretokenizer;
    spec.normalizer = p.normalizer;
    spec.ignore_merges = p.ignore_merges;
    return true;
  }
  return false;
}

std::string gguf_pretokenizer_names() {
  std::string names;
  for (const GgufPretokenizer& p : kGgufPretokenizers) names += std::string(names.empty() ? "" : ", ") + p.name;
  return names;
}

TokenizerSpec read_tokenizer_json(const std::string& path) {
  json root = parse_json(path, "tokenizer.json");
  QS_CHECK(root.is_object(), ErrorCode::kInvalidModel, path, ": tokenizer.json is not a JSON object");
  QS_CHECK(root.contains("model") && root["model"].is_object(), ErrorCode::kInvalidModel, path,
           ": tokenizer.json has no \"model\" object");
  const json& model = root["model"];
  std::string type = model.value("type", std::string("BPE"));
  QS_CHECK(type == "BPE", ErrorCode::kUnsupported, path, ": tokenizer model type '", type,
           "' is not supported (only byte-level BPE)");
  QS_CHECK(model.contains("vocab"), ErrorCode::kInvalidModel, path, ": tokenizer.json has no model.vocab");
  QS_CHECK(!model.contains("byte_fallback") || !model["byte_fallback"].is_boolean() || !model["byte_fallback"].get<bool>(),
           ErrorCode::kUnsupported, path, ": BPE with byte_fallback (sentencepiece style) is not supported");
  const json normalizer = root.value("normalizer", json());
  const bool nfc = normalizer.is_object() && normalizer.size() == 1 && normalizer.value("type", std::string()) == "NFC";
  QS_CHECK(normalizer.is_null() || nfc, ErrorCode::kUnsupported, path, ": tokenizer normalizer ", normalizer.dump(),
           " is not supported (only none or NFC)");

  TokenizerSpec spec;
  read_vocab(model["vocab"], path, "model.vocab", spec);

  QS_CHECK(model.contains("merges") && model["merges"].is_array(), ErrorCode::kInvalidModel, path,
           ": tokenizer.json has no model.merges array");
  const json& merges = model["merges"];
  spec.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const json& m = merges[i];
    if (m.is_string()) {  // older files: "left right"
      spec.merges.push_back(split_merge(m.get<std::string>(), path, i));
    } else {              // tokenizers >= 0.20: ["left", "right"]
      QS_CHECK(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(), ErrorCode::kInvalidModel, path,
               ": model.merges[", i, "] is ", m.dump(), ", not \"a b\" or [\"a\", \"b\"]");
      spec.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    }
  }
  if (model.contains("ignore_merges") && model["ignore_merges"].is_boolean())
    spec.ignore_merges = model["ignore_merges"].get<bool>();

  if (root.contains("added_tokens") && !root["added_tokens"].is_null()) {
    const json& added = root["added_tokens"];
    QS_CHECK(added.is_array(), ErrorCode::kInvalidModel, path, ": added_tokens is not an array");
    for (size_t i = 0; i < added.size(); ++i) {
      const json& a = added[i];
      QS_CHECK(a.is_object() && a.contains("id") && a["id"].is_number_integer() && a["id"].get<int64_t>() >= 0 &&
                   a["id"].get<int64_t>() <= kMaxTokenId && a.contains("content") && a["content"].is_string() &&
                   !a["content"].get<std::string>().empty(),
               ErrorCode::kInvalidModel, path, ": added_tokens[", i, "] needs an \"id\" from 0 to ", kMaxTokenId,
               " and a \"content\"");
      QS_CHECK(!a.value("lstrip", false) && !a.value("rstrip", false) && !a.value("single_word", false),
               ErrorCode::kUnsupported, path, ": added token '", a["content"].get<std::string>(),
               "' uses lstrip/rstrip/single_word, which is not supported");
      size_t id = a["id"].get<size_t>();
      std::string content = a["content"].get<std::string>();
      if (id >= spec.tokens.size()) spec.tokens.resize(id + 1);
      QS_CHECK(spec.tokens[id].empty() || spec.tokens[id] == content, ErrorCode::kInvalidModel, path,
               ": added token '", content, "' has id ", id, ", which model.vocab gives to '", spec.tokens[id], "'");
      spec.tokens[id] = content;
      (a.value("special", false) ? spec.special_ids : spec.added_ids).push_back(static_cast<int32_t>(id));
    }
  }

  QS_CHECK(root.contains("pre_tokenizer") && !root["pre_tokenizer"].is_null(), ErrorCode::kUnsupported, path,
           ": tokenizer.json has no pre_tokenizer; only byte-level BPE is supported");
  spec.pretokenizer = pretokenizer_kind(root["pre_tokenizer"], path);
  if (nfc) spec.normalizer = "nfc";

  if (auto eos = find_token(spec, "<|endoftext|>")) spec.eos_id = *eos;  // GPT-2 style default
  read_tokenizer_config(path, spec);
  validate_tokenizer_spec(spec, path);
  return spec;
}

TokenizerSpec read_vocab_merges(const std::string& vocab_path, const std::string& merges_path) {
  json vocab = parse_json(vocab_path, "vocab.json");
  TokenizerSpec spec;
  read_vocab(vocab, vocab_path, "vocab.json", spec);

  std::istringstream lines(read_file(merges_path, "merges.txt"));
  std::string line;
  size_t index = 0;
  while (std::getline(lines, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (index == 0 && spec.merges.empty() && line.rfind("#version", 0) == 0)) continue;
    spec.merges.push_back(split_merge(line, merges_path, index++));
  }
  // GPT-2's <|endoftext|> lives in vocab.json; transformers' GPT2Tokenizer treats it as a special token.
  if (auto eos = find_token(spec, "<|endoftext|>")) {
    spec.special_ids.push_back(*eos);
    spec.bos_id = spec.eos_id = *eos;
  }
  validate_tokenizer_spec(spec, vocab_path + " + " + merges_path);
  return spec;
}

}  // namespace qs
