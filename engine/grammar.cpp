// The JSON grammar matcher and the vocabulary index (see grammar.h). A state is a set of stacks of frames; each
// frame is one open value (object, array, string, number, literal) with its phase. A byte either moves the top
// frame on, opens a child value, or closes the top value; numbers and literals that may be complete also try
// closing first and handing the byte to their parent, which is why a state can hold several stacks.
#include "engine/grammar.h"

#include <algorithm>
#include <cstring>

#include "kernels/error.h"

namespace qs {

namespace {
constexpr int kMaxStackDepth = 64;           // frames, including the document frame
constexpr size_t kMaxAlternatives = 32;      // stacks kept in one state (more only come from deeply nested anyOf)
constexpr int kMaxAnyOfExpansion = 16;       // anyOf of anyOf ... opened by one byte
constexpr size_t kMaxCachedStates = 2048;    // per matcher; the cache starts over when full
constexpr uint16_t kKeyStringNode = 0xFFFF;  // the key string of an any-keys object: a string with no node
constexpr uint16_t kDocumentNode = 0xFFFE;   // the bottom frame: before and after the root value
constexpr int kMaxIntegerDigits = 16;        // digits before the point, after it, and in an exponent:
constexpr int kMaxFractionDigits = 16;       // a model that repeats a digit ends the number instead of looping
constexpr int kMaxExponentDigits = 3;

// Phases. Objects and arrays sit in a *_CHILD phase while their key, value or item is the frame above them.
enum : uint8_t {
  kDocStart = 0, kDocChild, kDocDone,
  kObjOpen = 0, kObjFirst, kObjNext, kObjKey, kObjKeyChild, kObjColon, kObjValue, kObjValueChild, kObjAfter,
  kArrOpen = 0, kArrFirst, kArrNext, kArrItemChild, kArrAfter,
  kStrOpen = 0, kStrBody, kStrEscape, kStrHex,
  kNumStart = 0, kNumSign, kNumZero, kNumInt, kNumDot, kNumFrac, kNumE, kNumExpSign, kNumExp,
};

// Inside a string body, `sub` is where the UTF-8 decoder stands (RFC 3629's well-formed sequences, so no
// overlong forms or surrogates): 0 between characters; otherwise the range the next byte must be in and
// what follows it.
struct Utf8Step {
  uint8_t lo, hi, next;
};
constexpr Utf8Step kUtf8Continuation[8] = {
    {0, 0, 0},          // 0: unused (between characters)
    {0x80, 0xBF, 0},    // 1: last continuation byte
    {0xA0, 0xBF, 1},    // 2: after E0
    {0x80, 0xBF, 1},    // 3: after E1..EC, EE, EF
    {0x80, 0x9F, 1},    // 4: after ED
    {0x90, 0xBF, 3},    // 5: after F0
    {0x80, 0xBF, 3},    // 6: after F1..F3
    {0x80, 0x8F, 3},    // 7: after F4
};
// The state after a lead byte (>= 0x80); 0xFF = not a lead byte.
uint8_t utf8_after_lead(uint8_t c) {
  if (c >= 0xC2 && c <= 0xDF) return 1;
  if (c == 0xE0) return 2;
  if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) return 3;
  if (c == 0xED) return 4;
  if (c == 0xF0) return 5;
  if (c >= 0xF1 && c <= 0xF3) return 6;
  if (c == 0xF4) return 7;
  return 0xFF;
}
bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
bool is_hex(uint8_t c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

struct Frame {
  uint16_t node;    // index into JsonGrammar::nodes, or kKeyStringNode / kDocumentNode
  uint8_t phase;
  uint8_t sub;      // strings: UTF-8 state or hex digits left; separators: the optional space was written
  uint16_t a;       // objects: property index; arrays: items so far (when counted); literals: candidate index
  uint16_t b;       // objects: key bytes matched; literals: bytes matched; numbers: digits in this part
};
static_assert(sizeof(Frame) == 8);

struct Stack {
  uint8_t size = 0;
  Frame frames[kMaxStackDepth];
  void copy_from(const Stack& o) {
    size = o.size;
    std::memcpy(frames, o.frames, sizeof(Frame) * o.size);
  }
  Frame& top() { return frames[size - 1]; }
  const Frame& top() const { return frames[size - 1]; }
  bool operator==(const Stack& o) const {
    return size == o.size && std::memcmp(frames, o.frames, sizeof(Frame) * size) == 0;
  }
  bool operator<(const Stack& o) const {
    if (size != o.size) return size < o.size;
    return std::memcmp(frames, o.frames, sizeof(Frame) * size) < 0;
  }
};

struct State {
  std::vector<Stack> stacks;
  void push(const Stack& s) {
    stacks.emplace_back();
    stacks.back().copy_from(s);
  }
  // Sorted and without repeats, so that equal states have equal keys.
  void normalize() {
    if (stacks.size() < 2) return;
    std::sort(stacks.begin(), stacks.end());
    stacks.erase(std::unique(stacks.begin(), stacks.end()), stacks.end());
    if (stacks.size() > kMaxAlternatives) stacks.resize(kMaxAlternatives);   // fewer paths: still only valid output
  }
};

// The grammar's byte-level transitions. Stateless apart from the grammar; every function appends the stacks a
// byte leads to onto `out`.
class Transitions {
 public:
  explicit Transitions(const JsonGrammar& g) : g_(g) {}

  void start(State& out) const {
    Stack s;
    s.size = 1;
    s.frames[0] = Frame{kDocumentNode, kDocStart, 0, 0, 0};
    out.stacks.clear();
    out.push(s);
  }

  // out = every stack `in` can reach by byte c; false when none (c is rejected).
  bool advance(const State& in, uint8_t c, State& out) const {
    out.stacks.clear();
    Stack work;
    for (const Stack& s : in.stacks) {
      work.copy_from(s);
      feed(work, c, out);
    }
    out.normalize();
    return !out.stacks.empty();
  }

  // The state as a cache key. Without counts, arrays' item counts are left out: a walk that never read one
  // (count_read stays false) gives the same tokens for every count, so the items of a bounded array share masks.
  std::string key(const State& state, bool with_counts) const {
    std::string k;
    for (const Stack& s : state.stacks) {
      k.push_back(char(s.size));
      for (uint8_t i = 0; i < s.size; ++i) {
        Frame f = s.frames[i];
        if (!with_counts && f.node < g_.nodes.size() && g_.nodes[f.node].kind == GrammarNodeKind::kArray) f.a = 0;
        k.append(reinterpret_cast<const char*>(&f), sizeof(Frame));
      }
    }
    return k;
  }
  mutable bool count_read = false;   // set when a transition depended on an array's item count

  bool is_complete(const State& state) const {
    for (const Stack& s : state.stacks) {
      if (s.size == 1 && s.frames[0].phase == kDocDone) return true;
      if (s.size == 2 && may_end(s.frames[1])) return true;
    }
    return false;
  }

 private:
  GrammarNodeKind kind_of(const Frame& f) const {
    return f.node == kKeyStringNode ? GrammarNodeKind::kString : g_.nodes[f.node].kind;
  }

  // Numbers and literals have no closing byte of their own: they may end wherever what was read is complete.
  bool may_end(const Frame& f) const {
    if (f.node == kDocumentNode || f.node == kKeyStringNode) return false;
    const GrammarNode& n = g_.nodes[f.node];
    switch (n.kind) {
      case GrammarNodeKind::kInteger:
      case GrammarNodeKind::kNumber:
        return f.phase == kNumZero || f.phase == kNumInt || f.phase == kNumFrac || f.phase == kNumExp;
      case GrammarNodeKind::kLiterals: {
        const std::string& current = n.literals[f.a];
        for (size_t j = f.a; j < n.literals.size(); ++j) {
          const std::string& l = n.literals[j];
          if (l.size() == f.b && l.compare(0, f.b, current, 0, f.b) == 0) return true;
        }
        return false;
      }
      default:
        return false;
    }
  }

  // The value on top of s is complete: pop it and move its parent past it.
  void close_value(Stack& s) const {
    --s.size;
    Frame& p = s.top();
    if (p.node == kDocumentNode) {
      p.phase = kDocDone;
      return;
    }
    const GrammarNode& n = g_.nodes[p.node];
    if (n.kind == GrammarNodeKind::kObject) {
      p.phase = p.phase == kObjKeyChild ? kObjColon : kObjAfter;
      p.sub = 0;
    } else {   // an array
      p.phase = kArrAfter;
      p.sub = 0;
      if (n.min_items > 0 || n.max_items >= 0) p.a = uint16_t(std::min<int>(p.a + 1, 0xFFFF));
    }
  }

  uint16_t read_count(uint16_t count) const {
    count_read = true;
    return count;
  }

  // Values open at once (scalars included) are bounded: a path that would open one more ends.
  bool too_deep(const Stack& s) const { return s.size >= std::min(kMaxStackDepth, g_.max_depth + 1); }

  // Opens a value of `node` on top of `base` (anyOf: each alternative) and feeds it c.
  void open_and_feed(const Stack& base, int32_t node, uint8_t c, State& out, int expansion = 0) const {
    const GrammarNode& n = g_.nodes[size_t(node)];
    if (n.kind == GrammarNodeKind::kAnyOf) {
      if (expansion >= kMaxAnyOfExpansion) return;
      for (int32_t alt : n.alternatives) open_and_feed(base, alt, c, out, expansion + 1);
      return;
    }
    if (too_deep(base)) return;
    Stack s;
    s.copy_from(base);
    s.frames[s.size++] = Frame{uint16_t(node), 0, 0, 0, 0};
    feed(s, c, out);
  }

  void feed(Stack& s, uint8_t c, State& out) const {
    Frame& f = s.top();
    if (may_end(f)) {
      Stack closed;
      closed.copy_from(s);
      close_value(closed);
      feed(closed, c, out);
    }
    if (f.node == kDocumentNode) {
      if (f.phase == kDocStart) {
        f.phase = kDocChild;
        open_and_feed(s, g_.root, c, out);
      }
      return;   // after the root value nothing may follow
    }
    switch (kind_of(f)) {
      case GrammarNodeKind::kObject: feed_object(s, c, out); return;
      case GrammarNodeKind::kArray: feed_array(s, c, out); return;
      case GrammarNodeKind::kString: feed_string(s, c, out); return;
      case GrammarNodeKind::kInteger:
      case GrammarNodeKind::kNumber: feed_number(s, c, out); return;
      case GrammarNodeKind::kLiterals: feed_literals(s, c, out); return;
      case GrammarNodeKind::kAnyOf: return;   // never a frame: expanded when opened
    }
  }

  static size_t first_required_from(const GrammarNode& n, size_t i) {
    while (i < n.properties.size() && !n.properties[i].required) ++i;
    return i;
  }

  // The one space allowed after ':' and ',' (with space_after_separators); true when c was it.
  bool optional_space(Stack& s, uint8_t c, State& out) const {
    Frame& f = s.top();
    if (c != ' ' || !g_.space_after_separators || f.sub != 0) return false;
    f.sub = 1;
    out.push(s);
    return true;
  }

  void feed_object(Stack& s, uint8_t c, State& out) const {
    Frame& f = s.top();
    const GrammarNode& n = g_.nodes[f.node];
    switch (f.phase) {
      case kObjOpen:
        if (c == '{') {
          f.phase = kObjFirst;
          out.push(s);
        }
        return;
      case kObjFirst:
      case kObjNext:
        if (f.phase == kObjNext && optional_space(s, c, out)) {
          return;
        } else if (c == '"') {
          if (n.any_keys) {
            if (too_deep(s)) return;
            f.phase = kObjKeyChild;
            s.frames[s.size++] = Frame{kKeyStringNode, kStrBody, 0, 0, 0};
            out.push(s);
          } else if (f.a < n.properties.size()) {
            f.phase = kObjKey;   // a = the first property that may come next, b = 0 key bytes
            f.b = 0;
            out.push(s);
          }
        } else if (c == '}' && f.phase == kObjFirst &&
                   (n.any_keys || first_required_from(n, 0) == n.properties.size())) {
          close_value(s);
          out.push(s);
        }
        return;
      case kObjKey: {
        // a = the lowest property consistent with the b key bytes so far. Properties may be skipped up to
        // the first required one.
        const std::string& current = n.properties[f.a].key;
        const size_t last = std::min(first_required_from(n, f.a), n.properties.size() - 1);
        for (size_t j = f.a; j <= last; ++j) {
          const std::string& key = n.properties[j].key;
          if (key.size() < f.b || key.compare(0, f.b, current, 0, f.b) != 0) continue;
          if (c == '"' ? key.size() == f.b : (key.size() > f.b && uint8_t(key[f.b]) == c)) {
            f.a = uint16_t(j);
            if (c == '"') {
              f.phase = kObjColon;
            } else {
              ++f.b;
            }
            out.push(s);
            return;
          }
        }
        return;
      }
      case kObjColon:
        if (c == ':') {
          f.phase = kObjValue;
          f.sub = 0;
          out.push(s);
        }
        return;
      case kObjValue:
        if (!optional_space(s, c, out)) {
          f.phase = kObjValueChild;
          open_and_feed(s, n.any_keys ? n.value : n.properties[f.a].value, c, out);
        }
        return;
      case kObjAfter:
        if (c == ',' && (n.any_keys || size_t(f.a) + 1 < n.properties.size())) {
          f.phase = kObjNext;
          f.sub = 0;
          if (!n.any_keys) ++f.a;
          out.push(s);
        } else if (c == '}' && (n.any_keys || first_required_from(n, size_t(f.a) + 1) == n.properties.size())) {
          close_value(s);
          out.push(s);
        }
        return;
      default:
        return;
    }
  }

  void feed_array(Stack& s, uint8_t c, State& out) const {
    Frame& f = s.top();
    const GrammarNode& n = g_.nodes[f.node];
    switch (f.phase) {
      case kArrOpen:
        if (c == '[') {
          f.phase = kArrFirst;
          out.push(s);
        }
        return;
      case kArrFirst:
        if (c == ']') {
          if (n.min_items == 0) {
            close_value(s);
            out.push(s);
          }
        } else if (n.max_items != 0) {
          f.phase = kArrItemChild;
          open_and_feed(s, n.value, c, out);
        }
        return;
      case kArrNext:
        if (!optional_space(s, c, out)) {
          f.phase = kArrItemChild;
          open_and_feed(s, n.value, c, out);
        }
        return;
      case kArrAfter:
        if (c == ',' && (n.max_items < 0 || read_count(f.a) < n.max_items)) {
          f.phase = kArrNext;
          f.sub = 0;
          out.push(s);
        } else if (c == ']' && (n.min_items == 0 || read_count(f.a) >= n.min_items)) {
          close_value(s);
          out.push(s);
        }
        return;
      default:
        return;
    }
  }

  void feed_string(Stack& s, uint8_t c, State& out) const {
    Frame& f = s.top();
    switch (f.phase) {
      case kStrOpen:
        if (c == '"') {
          f.phase = kStrBody;
          f.sub = 0;
          out.push(s);
        }
        return;
      case kStrBody:
        if (f.sub != 0) {   // inside a multi-byte character
          const Utf8Step& step = kUtf8Continuation[f.sub];
          if (c < step.lo || c > step.hi) return;
          f.sub = step.next;
        } else if (c == '"') {
          close_value(s);
        } else if (c == '\\') {
          f.phase = kStrEscape;
        } else if (c < 0x20) {
          return;   // control characters must be escaped
        } else if (c >= 0x80) {
          const uint8_t next = utf8_after_lead(c);
          if (next == 0xFF) return;
          f.sub = next;
        }
        out.push(s);
        return;
      case kStrEscape:
        if (c == 'u') {
          f.phase = kStrHex;
          f.sub = 4;
        } else if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't') {
          f.phase = kStrBody;
          f.sub = 0;
        } else {
          return;
        }
        out.push(s);
        return;
      case kStrHex:
        if (!is_hex(c)) return;
        if (--f.sub == 0) f.phase = kStrBody;
        out.push(s);
        return;
      default:
        return;
    }
  }

  void feed_number(Stack& s, uint8_t c, State& out) const {
    Frame& f = s.top();
    const bool real = g_.nodes[f.node].kind == GrammarNodeKind::kNumber;
    const auto go = [&](uint8_t phase, uint16_t digits) {
      f.phase = phase;
      f.b = digits;
      out.push(s);
    };
    switch (f.phase) {
      case kNumStart:
        if (c == '-') return go(kNumSign, 0);
        [[fallthrough]];
      case kNumSign:
        if (c == '0') return go(kNumZero, 1);
        if (c >= '1' && c <= '9') return go(kNumInt, 1);
        return;
      case kNumInt:
        if (is_digit(c)) {
          if (f.b < kMaxIntegerDigits) go(kNumInt, uint16_t(f.b + 1));
          return;
        }
        [[fallthrough]];
      case kNumZero:
        if (!real) return;
        if (c == '.') return go(kNumDot, 0);
        if (c == 'e' || c == 'E') return go(kNumE, 0);
        return;
      case kNumDot:
        if (is_digit(c)) go(kNumFrac, 1);
        return;
      case kNumFrac:
        if (is_digit(c)) {
          if (f.b < kMaxFractionDigits) go(kNumFrac, uint16_t(f.b + 1));
        } else if (c == 'e' || c == 'E') {
          go(kNumE, 0);
        }
        return;
      case kNumE:
        if (c == '+' || c == '-') return go(kNumExpSign, 0);
        [[fallthrough]];
      case kNumExpSign:
        if (is_digit(c)) go(kNumExp, 1);
        return;
      case kNumExp:
        if (is_digit(c) && f.b < kMaxExponentDigits) go(kNumExp, uint16_t(f.b + 1));
        return;
      default:
        return;
    }
  }

  void feed_literals(Stack& s, uint8_t c, State& out) const {
    Frame& f = s.top();
    const GrammarNode& n = g_.nodes[f.node];
    // a = the lowest literal consistent with the b bytes read; every consistent one has a higher index.
    const std::string& current = n.literals[f.a];
    for (size_t j = f.a; j < n.literals.size(); ++j) {
      const std::string& l = n.literals[j];
      if (l.size() > f.b && uint8_t(l[f.b]) == c && l.compare(0, f.b, current, 0, f.b) == 0) {
        f.a = uint16_t(j);
        ++f.b;
        out.push(s);
        return;
      }
    }
  }

  const JsonGrammar& g_;
};
}  // namespace

VocabularyIndex::VocabularyIndex(const Tokenizer& tokenizer, std::vector<int32_t> eos_ids)
    : eos_ids_(std::move(eos_ids)), vocab_size_(tokenizer.vocab_size()) {
  token_bytes_.resize(size_t(vocab_size_));
  std::vector<int32_t> order;
  for (int32_t id = 0; id < int32_t(vocab_size_); ++id) {
    if (tokenizer.is_special(id)) continue;
    token_bytes_[size_t(id)] = tokenizer.token_bytes(id);
    if (token_bytes_[size_t(id)].empty() || token_bytes_[size_t(id)].size() > 0xFFFF) {
      token_bytes_[size_t(id)].clear();
      continue;
    }
    order.push_back(id);
    max_token_bytes_ = std::max(max_token_bytes_, token_bytes_[size_t(id)].size());
  }
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return token_bytes_[size_t(a)] < token_bytes_[size_t(b)] || (token_bytes_[size_t(a)] == token_bytes_[size_t(b)] && a < b);
  });
  // Sorted bytes share their prefixes with the previous token: keep the path to it, pop back to the common
  // prefix (closing those subtrees), then add the rest.
  std::vector<uint32_t> path;   // trie node of each byte of the previous token
  const std::string* previous = nullptr;
  for (int32_t id : order) {
    const std::string& bytes = token_bytes_[size_t(id)];
    size_t common = 0;
    if (previous) {
      while (common < bytes.size() && common < previous->size() && bytes[common] == (*previous)[common]) ++common;
    }
    while (path.size() > common) {
      trie_[path.back()].subtree_end = uint32_t(trie_.size());
      path.pop_back();
    }
    for (size_t i = common; i < bytes.size(); ++i) {
      TrieNode node;
      node.byte = uint8_t(bytes[i]);
      node.depth = uint16_t(i + 1);
      path.push_back(uint32_t(trie_.size()));
      trie_.push_back(node);
    }
    if (trie_[path.back()].token < 0) trie_[path.back()].token = id;   // same bytes twice: the lower id serves
    previous = &bytes;
  }
  for (uint32_t n : path) trie_[n].subtree_end = uint32_t(trie_.size());
}

bool VocabularyIndex::is_eos(int32_t id) const {
  return std::find(eos_ids_.begin(), eos_ids_.end(), id) != eos_ids_.end();
}

struct GrammarMatcher::Impl {
  std::shared_ptr<const JsonGrammar> grammar;
  const VocabularyIndex& vocab;
  Transitions transitions;
  State state, scratch_a, scratch_b;
  std::vector<State> walk;   // walk[d] = the state after the first d bytes of the trie path being visited
  bool finished = false;
  // Masks by state: those that hold for any array item counts, and those for exact counts.
  std::unordered_map<std::string, std::vector<uint64_t>> count_free, exact;
  std::vector<uint64_t> none;

  Impl(std::shared_ptr<const JsonGrammar> g, const VocabularyIndex& v)
      : grammar(std::move(g)), vocab(v), transitions(*grammar) {
    transitions.start(state);
    walk.resize(vocab.max_token_bytes_ + 1);
    none.assign(size_t((vocab.vocab_size() + 63) / 64), 0);
  }

  // The state only changes when every byte is accepted.
  bool advance_bytes(std::string_view bytes) {
    if (bytes.empty()) return true;
    State* from = &state;
    State* to = &scratch_a;
    for (char ch : bytes) {
      if (!transitions.advance(*from, uint8_t(ch), *to)) return false;
      from = to;
      to = to == &scratch_a ? &scratch_b : &scratch_a;
    }
    std::swap(state, *from);
    return true;
  }
};

GrammarMatcher::GrammarMatcher(std::shared_ptr<const JsonGrammar> grammar, const VocabularyIndex& vocab)
    : impl_(std::make_unique<Impl>(std::move(grammar), vocab)) {
  QS_CHECK(impl_->grammar && !impl_->grammar->nodes.empty(), ErrorCode::kInternal, "grammar matcher without a grammar");
}
GrammarMatcher::~GrammarMatcher() = default;

const std::vector<uint64_t>& GrammarMatcher::allowed_tokens() {
  Impl& m = *impl_;
  if (m.finished) return m.none;
  std::string free_key = m.transitions.key(m.state, false);
  if (auto it = m.count_free.find(free_key); it != m.count_free.end()) return it->second;
  std::string exact_key = m.transitions.key(m.state, true);
  if (auto it = m.exact.find(exact_key); it != m.exact.end()) return it->second;
  if (m.count_free.size() + m.exact.size() >= kMaxCachedStates) {
    m.count_free.clear();
    m.exact.clear();
  }
  std::vector<uint64_t> mask(m.none.size(), 0);
  // Walk the trie in preorder: a node's state is its parent's advanced by its byte; a rejected byte skips the
  // node's whole subtree (every token that starts with those bytes).
  const auto& trie = m.vocab.trie_;
  m.walk[0].stacks = m.state.stacks;
  m.transitions.count_read = false;
  for (size_t i = 0; i < trie.size();) {
    const auto& node = trie[i];
    if (!m.transitions.advance(m.walk[node.depth - 1], node.byte, m.walk[node.depth])) {
      i = node.subtree_end;
      continue;
    }
    if (node.token >= 0) mask[size_t(node.token) / 64] |= uint64_t(1) << (node.token % 64);
    ++i;
  }
  if (m.transitions.is_complete(m.state)) {
    for (int32_t id : m.vocab.eos_ids()) {
      if (id >= 0 && id < m.vocab.vocab_size()) mask[size_t(id) / 64] |= uint64_t(1) << (id % 64);
    }
  }
  if (!m.transitions.count_read) return m.count_free.emplace(std::move(free_key), std::move(mask)).first->second;
  return m.exact.emplace(std::move(exact_key), std::move(mask)).first->second;
}

bool GrammarMatcher::accept_token(int32_t token) {
  Impl& m = *impl_;
  if (m.finished || token < 0 || token >= m.vocab.vocab_size()) return false;
  if (m.vocab.is_eos(token)) {
    if (!m.transitions.is_complete(m.state)) return false;
    m.finished = true;
    return true;
  }
  const std::string& bytes = m.vocab.token_bytes(token);
  return !bytes.empty() && m.advance_bytes(bytes);
}

bool GrammarMatcher::accept_bytes(std::string_view bytes) { return !impl_->finished && impl_->advance_bytes(bytes); }
bool GrammarMatcher::is_complete() const { return impl_->transitions.is_complete(impl_->state); }
bool GrammarMatcher::is_finished() const { return impl_->finished; }
size_t GrammarMatcher::cached_states() const { return impl_->count_free.size() + impl_->exact.size(); }

}  // namespace qs
