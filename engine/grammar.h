// Constrained decoding: a JSON grammar (compiled from a schema by engine/json_schema.h), a character-level
// pushdown matcher over it, and a vocabulary index that turns the matcher's state into the tokens allowed next.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/tokenizer.h"

namespace qs {

// What value may appear at one place of the document. Nodes refer to each other by index into
// JsonGrammar::nodes, so recursive schemas ($ref) are a cycle of indices.
enum class GrammarNodeKind : uint8_t { kObject, kArray, kString, kInteger, kNumber, kLiterals, kAnyOf };

struct GrammarProperty {
  std::string key;          // as written between the quotes, already JSON-escaped
  int32_t value = 0;        // node of the property's value
  bool required = false;
};

struct GrammarNode {
  GrammarNodeKind kind = GrammarNodeKind::kAnyOf;
  std::vector<GrammarProperty> properties;  // kObject: the keys that may appear, in this order (optional ones may be left out)
  bool any_keys = false;                    // kObject: any string keys instead, each with a value of node `value`
  int32_t value = -1;                       // kObject with any_keys: the values' node; kArray: the items' node
  int32_t min_items = 0;                    // kArray
  int32_t max_items = -1;                   // kArray; -1 = unbounded
  std::vector<std::string> literals;        // kLiterals: compact JSON texts ("true", "\"red\"", "1.5", "{\"a\":1}")
  std::vector<int32_t> alternatives;        // kAnyOf: any one of these nodes
};

struct JsonGrammar {
  std::vector<GrammarNode> nodes;
  int32_t root = 0;
  bool space_after_separators = false;      // allow one ' ' after each ':' and ',' (otherwise no whitespace at all)
  int32_t max_depth = 32;                   // values open at once in the output (an object, its key, ...)
};

// The tokenizer's vocabulary as a byte trie, built once per tokenizer and shared by every request's matcher.
// Nodes are stored in depth-first preorder, so a walk is a forward scan that jumps over rejected subtrees.
class VocabularyIndex {
 public:
  // Special tokens are left out (they never appear inside JSON); `eos_ids` are allowed where the document may end.
  VocabularyIndex(const Tokenizer& tokenizer, std::vector<int32_t> eos_ids);
  int64_t vocab_size() const { return vocab_size_; }
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  const std::string& token_bytes(int32_t id) const { return token_bytes_[size_t(id)]; }
  bool is_eos(int32_t id) const;
  size_t trie_nodes() const { return trie_.size(); }

 private:
  friend class GrammarMatcher;
  struct TrieNode {
    uint8_t byte = 0;
    uint16_t depth = 0;       // 1 = a token's first byte
    int32_t token = -1;       // the token whose bytes end here, or -1
    uint32_t subtree_end = 0; // index of the first node after this one's subtree
  };
  std::vector<TrieNode> trie_;
  std::vector<std::string> token_bytes_;   // id -> bytes; empty for special tokens
  std::vector<int32_t> eos_ids_;
  int64_t vocab_size_ = 0;
  size_t max_token_bytes_ = 0;
};

// One request's position in its grammar. The state is a set of stacks (several while anyOf alternatives or an
// unfinished number are ambiguous); allowed_tokens() walks the vocabulary trie from it and caches the result
// per state, so the steps inside a string or a repeated array item cost one lookup.
class GrammarMatcher {
 public:
  GrammarMatcher(std::shared_ptr<const JsonGrammar> grammar, const VocabularyIndex& vocab);
  ~GrammarMatcher();

  // Bit t (word t / 64, bit t % 64) is set when token t keeps the output a valid prefix of a document; EOS only
  // where the document is complete, and only EOS once nothing else may follow. Size: ceil(vocab_size / 64).
  const std::vector<uint64_t>& allowed_tokens();
  // Advances by one token; false (state unchanged) when the token is not allowed.
  bool accept_token(int32_t token);
  // Advances by raw bytes (tests, and the character-level view); false (state unchanged) when they are rejected.
  bool accept_bytes(std::string_view bytes);
  bool is_complete() const;     // the document may end here (EOS is allowed)
  bool is_finished() const;     // EOS was accepted
  size_t cached_states() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qs
