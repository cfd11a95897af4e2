// The grammar matcher at token level: the trie walk's masks against a token-by-token reference on the SmolLM2
// (49k) and tiny fixture tokenizers, EOS only where the document is complete, and constrained generation in the
// engine on the tiny Llama fixture.
#include <gtest/gtest.h>
#include <omp.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/grammar.h"
#include "engine/json_schema.h"
#include "engine/load_engine.h"
#include "engine/sampler.h"
#include "kernels/error.h"

namespace qs {
namespace {

const std::string kRoot = QS_SOURCE_DIR;

const Tokenizer& smol() {
  static const Tokenizer t(read_tokenizer_json(kRoot + "/tests/fixtures/tokenizer/smollm2/tokenizer.json"));
  return t;
}
const Tokenizer& tiny() {
  static const Tokenizer t(read_tokenizer_json(kRoot + "/tests/fixtures/models/tokenizer.json"));
  return t;
}

bool allowed(const std::vector<uint64_t>& mask, int32_t t) { return (mask[size_t(t) / 64] >> (t % 64)) & 1; }

const char* kPerson = R"({"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},
    "score":{"type":"number"},"ok":{"type":"boolean"},"kind":{"enum":["cat","dog",3]},
    "tags":{"type":"array","items":{"type":"string"}},"extra":{"anyOf":[{"type":"null"},{"type":"object"}]}},
    "required":["name","age"]})";

// For each prefix: the trie walk's mask equals, token by token, what accept_token says from a fresh matcher
// fed the same prefix (the reference: no trie, no cache).
void expect_masks_match_reference(const Tokenizer& tokenizer, const std::string& schema,
                                  const std::vector<std::string>& prefixes) {
  const int32_t eos = tokenizer.eos_id() >= 0 ? tokenizer.eos_id() : 0;
  const VocabularyIndex vocab(tokenizer, {eos});
  const auto grammar = compile_json_schema(schema);
  for (const std::string& prefix : prefixes) {
    GrammarMatcher m(grammar, vocab);
    ASSERT_TRUE(m.accept_bytes(prefix)) << prefix;
    const std::vector<uint64_t> mask = m.allowed_tokens();
    int64_t count = 0;
    for (int32_t t = 0; t < int32_t(vocab.vocab_size()); ++t) {
      GrammarMatcher ref(grammar, vocab);
      ASSERT_TRUE(ref.accept_bytes(prefix));
      const bool expect = !(tokenizer.is_special(t) && t != eos) && ref.accept_token(t);
      ASSERT_EQ(allowed(mask, t), expect) << "prefix '" << prefix << "' token " << t << " '" << tokenizer.token_bytes(t) << "'";
      count += expect;
    }
    EXPECT_GT(count, 0) << prefix;
    EXPECT_EQ(allowed(mask, eos), m.is_complete()) << prefix;
  }
}

const std::vector<std::string> kPersonPrefixes = {
    "", "{", "{\"", "{\"na", "{\"name\"", "{\"name\":", "{\"name\": \"", "{\"name\":\"Jo", "{\"name\":\"Jo\\",
    "{\"name\":\"Jo\\u00", "{\"name\":\"caf\xC3", "{\"name\":\"\",\"age\":", "{\"name\":\"\",\"age\":1",
    "{\"name\":\"\",\"age\":-", "{\"name\":\"\",\"age\":0,\"score\":1.5", "{\"name\":\"\",\"age\":0,\"kind\":\"c",
    "{\"name\":\"\",\"age\":0,\"kind\":3", "{\"name\":\"\",\"age\":0,\"tags\":[", "{\"name\":\"\",\"age\":0,\"tags\":[\"a\"",
    "{\"name\":\"\",\"age\":0,\"extra\":{\"k\":[1,{}", "{\"name\":\"\",\"age\":0}"};

TEST(Grammar, MasksMatchTheTokenByTokenReferenceSmolLM2) {
  expect_masks_match_reference(smol(), kPerson, kPersonPrefixes);
}

TEST(Grammar, MasksMatchTheTokenByTokenReferenceTiny) {
  expect_masks_match_reference(tiny(), kPerson, kPersonPrefixes);
  expect_masks_match_reference(tiny(), R"({"type":"number"})", {"", "1", "-0.", "2e"});
}

// Masks cached while items of a bounded array went by are reused only where the item count cannot matter: at
// every byte of a document, one long-lived matcher gives the same mask as a fresh one with an empty cache.
TEST(Grammar, ArrayItemsShareMasksOnlyWhereTheCountDoesNotMatter) {
  const VocabularyIndex vocab(tiny(), {0});
  const auto grammar = compile_json_schema(
      R"({"type":"array","minItems":3,"maxItems":4,"items":{"type":"object","properties":{"a":{"type":"integer"}}}})");
  const std::string doc = R"([{"a":1},{"a":22},{},{"a":3},{"a":4}])";
  GrammarMatcher live(grammar, vocab);
  for (size_t i = 0; i <= doc.size(); ++i) {
    GrammarMatcher fresh(grammar, vocab);
    ASSERT_TRUE(fresh.accept_bytes(doc.substr(0, i)));
    ASSERT_EQ(live.allowed_tokens(), fresh.allowed_tokens()) << "after '" << doc.substr(0, i) << "'";
    if (i == doc.size()) break;
    if (!live.accept_bytes(doc.substr(i, 1))) {   // the fifth item is over maxItems
      EXPECT_EQ(doc.substr(0, i), R"([{"a":1},{"a":22},{},{"a":3})");
      break;
    }
  }
  // Inside items, the states of item 3 are those of items 1 and 2: only the count-dependent ones are new.
  GrammarMatcher m(grammar, vocab);
  const auto feed_item = [&](bool comma) {
    for (const char* piece : {"{", "\"a\"", ":", "1", "}", comma ? "," : ""}) {
      ASSERT_TRUE(m.accept_bytes(piece)) << piece;
      (void)m.allowed_tokens();
    }
  };
  ASSERT_TRUE(m.accept_bytes("["));
  feed_item(true);
  feed_item(true);
  const size_t after_two = m.cached_states();
  feed_item(true);
  EXPECT_LE(m.cached_states(), after_two + 2);
}

TEST(Grammar, OnlyEosOnceTheDocumentIsCompleteAndNoEosBefore) {
  const VocabularyIndex vocab(smol(), {smol().eos_id()});
  GrammarMatcher m(compile_json_schema(R"({"type":"object","properties":{"a":{"type":"boolean"}},"required":["a"]})"),
                   vocab);
  EXPECT_FALSE(allowed(m.allowed_tokens(), smol().eos_id()));
  EXPECT_FALSE(m.accept_token(smol().eos_id()));
  ASSERT_TRUE(m.accept_bytes("{\"a\":true"));
  EXPECT_FALSE(allowed(m.allowed_tokens(), smol().eos_id()));
  ASSERT_TRUE(m.accept_bytes("}"));
  const auto& mask = m.allowed_tokens();
  int64_t count = 0;
  for (int32_t t = 0; t < int32_t(vocab.vocab_size()); ++t) count += allowed(mask, t);
  EXPECT_EQ(count, 1);
  EXPECT_TRUE(allowed(mask, smol().eos_id()));
  EXPECT_TRUE(m.accept_token(smol().eos_id()));
  EXPECT_TRUE(m.is_finished());
}

TEST(Grammar, TokensSpanningSeveralStructuralCharacters) {
  const VocabularyIndex vocab(smol(), {smol().eos_id()});
  GrammarMatcher m(compile_json_schema(R"({"type":"array","items":{"type":"object","properties":{"a":{}}}})"), vocab);
  // Whatever the tokenizer makes of this document, feeding its tokens one by one is accepted, and rejected
  // tokens leave the state as it was.
  const std::string doc = R"([{"a":{"b":[1,2.5,"x\"y"]}},{}])";
  for (int32_t t : smol().encode(doc, false)) {
    ASSERT_TRUE(allowed(m.allowed_tokens(), t)) << smol().token_bytes(t);
    EXPECT_FALSE(m.accept_token(smol().encode("\n", false)[0]));   // never valid: raw newline
    ASSERT_TRUE(m.accept_token(t)) << smol().token_bytes(t);
  }
  EXPECT_TRUE(m.is_complete());
  EXPECT_GT(m.cached_states(), 0u);
}

TEST(Grammar, MaskLogitsSetsDisallowedToMinusInfinity) {
  std::vector<float> logits(130, 1.0f);
  std::vector<uint64_t> mask(2, 0);   // covers 128 tokens; 128 and 129 are past its end
  mask[0] = uint64_t(1) << 5;
  mask[1] = uint64_t(1) << 3;
  mask_logits(logits.data(), 130, mask);
  for (int t = 0; t < 130; ++t) EXPECT_EQ(std::isfinite(logits[size_t(t)]), t == 5 || t == 67) << t;
}

LoadedEngine load_tiny_llama() {
  omp_set_num_threads(1);   // a tiny model runs faster on one thread than on two busy ones
  LoadEngineOptions o;
  o.model_path = kRoot + "/tests/fixtures/models/llama";
  o.device = "cpu";
  return load_engine(o);
}

// The tiny random Llama fixture writes noise, but constrained it writes noise that parses.
TEST(Grammar, EngineGeneratesOnlyValidPrefixesAndEndsWithEosWhenComplete) {
  LoadedEngine loaded = load_tiny_llama();
  Engine& engine = *loaded.engine;
  const auto grammar = compile_json_schema(
      R"({"type":"object","properties":{"v":{"enum":["a","b"]},"n":{"type":"integer"},"f":{"type":"boolean"}},
          "required":["v","n","f"]})");
  const VocabularyIndex vocab(engine.tokenizer(), {engine.tokenizer().eos_id()});
  int complete = 0;
  for (uint64_t seed = 1; seed <= 8; ++seed) {
    SamplingParams p;
    p.seed = seed;
    p.max_new_tokens = 40;
    p.grammar = grammar;
    const GenerateResult r = generate_once(engine, engine.tokenizer().encode("a b c", false), p);
    GrammarMatcher check(grammar, vocab);
    EXPECT_TRUE(check.accept_bytes(r.text)) << r.text;
    if (r.finish == FinishReason::kEos) {
      ++complete;
      const auto doc = nlohmann::json::parse(r.text);
      EXPECT_TRUE(doc.at("v") == "a" || doc.at("v") == "b") << r.text;
      EXPECT_TRUE(doc.at("n").is_number_integer()) << r.text;
      EXPECT_TRUE(doc.at("f").is_boolean()) << r.text;
    } else {
      EXPECT_EQ(r.finish, FinishReason::kLength) << r.text;
      EXPECT_FALSE(check.is_complete() && r.token_ids.size() < 40u) << r.text;
    }
  }
  EXPECT_GT(complete, 0);
  // Stop conditions that could cut the document short are refused.
  SamplingParams bad;
  bad.grammar = grammar;
  bad.ignore_eos = true;
  EXPECT_THROW(engine.submit({1, 2}, bad, nullptr), Error);
  bad.ignore_eos = false;
  bad.stop = {"}"};
  EXPECT_THROW(engine.submit({1, 2}, bad, nullptr), Error);
}

// A schema that needs more tokens than max_new_tokens allows ends with length and text that is a prefix only.
TEST(Grammar, UnsatisfiableWithinMaxTokensFinishesWithLength) {
  LoadedEngine loaded = load_tiny_llama();
  SamplingParams p;
  p.seed = 3;
  p.max_new_tokens = 8;
  p.grammar = compile_json_schema(R"({"type":"array","items":{"type":"boolean"},"minItems":50})");
  const GenerateResult r = generate_once(*loaded.engine, {1, 2, 3}, p);
  EXPECT_EQ(r.finish, FinishReason::kLength);
  EXPECT_EQ(r.token_ids.size(), 8u);
  EXPECT_FALSE(nlohmann::json::accept(r.text)) << r.text;
}

}  // namespace
}  // namespace qs
