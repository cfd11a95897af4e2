// JSON Schema compiler (see json_schema.h): walks the schema once, node by node, refusing what it cannot honour.
#include "engine/json_schema.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "kernels/error.h"

namespace qs {

namespace {
using Json = nlohmann::ordered_json;   // ordered: properties are generated in the order the schema lists them

constexpr size_t kMaxEchoedBytes = 120;   // of a caller's key, keyword or path quoted back in an error
constexpr int kMaxJsonNesting = 128;      // of the schema text itself, before it is read as a schema
constexpr int kMaxItemsBound = 4096;      // minItems / maxItems
constexpr int kMaxChoicesAtOnePlace = 256;

const std::set<std::string, std::less<>> kAnnotations = {
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly",
    "writeOnly"};
const std::set<std::string, std::less<>> kSupported = {
    "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "enum", "const",
    "anyOf", "$ref", "$defs", "definitions"};

std::string echo(const std::string& s) {
  return s.size() <= kMaxEchoedBytes ? s : s.substr(0, kMaxEchoedBytes) + "...";
}
std::string at(const std::string& where) { return where == "#" ? "" : " (at " + echo(where) + ")"; }

// A key as it is written between its quotes.
std::string escaped_key(const std::string& key) {
  const std::string quoted = Json(key).dump();
  return quoted.substr(1, quoted.size() - 2);
}

bool has_type(const Json& v, const std::string& type) {
  if (type == "object") return v.is_object();
  if (type == "array") return v.is_array();
  if (type == "string") return v.is_string();
  if (type == "boolean") return v.is_boolean();
  if (type == "null") return v.is_null();
  if (type == "number") return v.is_number();
  if (type == "integer") {
    return v.is_number_integer() || (v.is_number_float() && std::isfinite(v.get<double>()) &&
                                     std::floor(v.get<double>()) == v.get<double>());
  }
  return false;
}

class Compiler {
 public:
  Compiler(const Json& doc, const JsonSchemaOptions& options)
      : doc_(doc), options_(options), grammar_(std::make_shared<JsonGrammar>()) {
    grammar_->space_after_separators = options.space_after_separators;
    grammar_->max_depth = options.max_output_depth;
  }

  std::shared_ptr<const JsonGrammar> run() {
    grammar_->root = compile(doc_, 0, "#");
    std::vector<int> choices(grammar_->nodes.size(), -1);   // -1 = not counted, -2 = being counted
    for (size_t i = 0; i < grammar_->nodes.size(); ++i) count_choices(int32_t(i), choices);
    return grammar_;
  }

 private:
  [[noreturn]] static void fail(const std::string& message) {
    QS_FAIL(ErrorCode::kInvalidArgument, "json_schema: ", message);
  }

  int32_t add(GrammarNode node) {
    if (int(grammar_->nodes.size()) >= options_.max_nodes) {
      fail("the schema compiles to more than " + std::to_string(options_.max_nodes) +
           " grammar nodes; simplify it");
    }
    grammar_->nodes.push_back(std::move(node));
    return int32_t(grammar_->nodes.size() - 1);
  }

  // An anyOf opens all its alternatives on the first byte; refuse cycles of anyOf/$ref that never produce a
  // character and nestings that open too many at once.
  int count_choices(int32_t node, std::vector<int>& memo) {
    if (memo[size_t(node)] >= 0) return memo[size_t(node)];
    if (memo[size_t(node)] == -2) fail("a $ref or anyOf refers back to itself before producing any value");
    const GrammarNode& n = grammar_->nodes[size_t(node)];
    if (n.kind != GrammarNodeKind::kAnyOf) return memo[size_t(node)] = 1;
    memo[size_t(node)] = -2;
    int total = 0;
    for (int32_t alt : n.alternatives) {
      total = std::min(total + count_choices(alt, memo), kMaxChoicesAtOnePlace + 1);
    }
    if (total > kMaxChoicesAtOnePlace) {
      fail("anyOf alternatives nest into more than " + std::to_string(kMaxChoicesAtOnePlace) + " choices at one place");
    }
    return memo[size_t(node)] = total;
  }

  int32_t compile(const Json& s, int depth, const std::string& where) {
    if (depth > options_.max_schema_depth) {
      fail("schemas are nested deeper than " + std::to_string(options_.max_schema_depth) + " levels" + at(where));
    }
    if (s.is_boolean()) {
      if (s.get<bool>()) return any_value();
      fail("the schema false accepts nothing" + at(where));
    }
    if (!s.is_object()) fail("a schema must be an object or a boolean" + at(where));
    for (const auto& [keyword, value] : s.items()) {
      if (!kSupported.count(keyword) && !kAnnotations.count(keyword)) {
        fail("keyword '" + echo(keyword) + "' is not supported" + at(where));
      }
    }
    const auto has = [&](const char* k) { return s.contains(k); };
    const auto others_than = [&](std::initializer_list<const char*> allowed) {
      for (const auto& item : s.items()) {
        const std::string& keyword = item.key();  // a named reference: clang 14 cannot capture a structured binding
        if (kAnnotations.count(keyword) || keyword == "$defs" || keyword == "definitions") continue;
        if (std::find_if(allowed.begin(), allowed.end(), [&](const char* a) { return keyword == a; }) == allowed.end()) {
          return keyword;
        }
      }
      return std::string();
    };
    if (has("$ref")) {
      const std::string other = others_than({"$ref"});
      if (!other.empty()) fail("$ref next to other keywords ('" + echo(other) + "') is not supported" + at(where));
      return reference(s["$ref"], depth, where);
    }
    if (has("anyOf")) {
      const std::string other = others_than({"anyOf"});
      if (!other.empty()) {
        fail("anyOf next to other keywords ('" + echo(other) + "') is not supported; put them in each alternative" +
             at(where));
      }
      const Json& alts = s["anyOf"];
      if (!alts.is_array() || alts.empty()) fail("anyOf must be a non-empty list of schemas" + at(where));
      GrammarNode n;
      n.kind = GrammarNodeKind::kAnyOf;
      for (size_t i = 0; i < alts.size(); ++i) {
        n.alternatives.push_back(compile(alts[i], depth + 1, where + "/anyOf/" + std::to_string(i)));
      }
      return add(std::move(n));
    }
    std::vector<std::string> types;
    if (has("type")) {
      const Json& t = s["type"];
      if (t.is_string()) {
        types.push_back(t.get<std::string>());
      } else if (t.is_array() && !t.empty() && std::all_of(t.begin(), t.end(), [](const Json& x) { return x.is_string(); })) {
        for (const Json& x : t) types.push_back(x.get<std::string>());
      } else {
        fail("type must be a type name or a non-empty list of them" + at(where));
      }
      for (const std::string& type : types) {
        static const std::set<std::string> names = {"object", "array", "string", "integer", "number", "boolean", "null"};
        if (!names.count(type)) fail("unknown type '" + echo(type) + "'" + at(where));
      }
    }
    if (has("enum") || has("const")) return literals(s, types, where);
    if (types.empty()) {
      if (has("properties") || has("required") || has("additionalProperties")) {
        types.push_back("object");
      } else if (has("items") || has("minItems") || has("maxItems")) {
        types.push_back("array");
      } else {
        return any_value();
      }
    }
    std::vector<int32_t> nodes;
    for (const std::string& type : types) nodes.push_back(typed(s, type, depth, where));
    if (nodes.size() == 1) return nodes[0];
    GrammarNode n;
    n.kind = GrammarNodeKind::kAnyOf;
    n.alternatives = std::move(nodes);
    return add(std::move(n));
  }

  int32_t typed(const Json& s, const std::string& type, int depth, const std::string& where) {
    GrammarNode n;
    if (type == "object") return object(s, depth, where);
    if (type == "array") return array(s, depth, where);
    if (type == "string") {
      n.kind = GrammarNodeKind::kString;
    } else if (type == "integer") {
      n.kind = GrammarNodeKind::kInteger;
    } else if (type == "number") {
      n.kind = GrammarNodeKind::kNumber;
    } else if (type == "boolean") {
      n.kind = GrammarNodeKind::kLiterals;
      n.literals = {"true", "false"};
    } else {
      n.kind = GrammarNodeKind::kLiterals;
      n.literals = {"null"};
    }
    return add(std::move(n));
  }

  int32_t literals(const Json& s, const std::vector<std::string>& types, const std::string& where) {
    if (s.contains("enum") && s.contains("const")) fail("enum and const together are not supported" + at(where));
    Json values;
    if (s.contains("enum")) {
      values = s["enum"];
      if (!values.is_array() || values.empty()) fail("enum must be a non-empty list" + at(where));
    } else {
      values = Json::array({s["const"]});
    }
    GrammarNode n;
    n.kind = GrammarNodeKind::kLiterals;
    for (const Json& v : values) {
      if (!types.empty() && std::none_of(types.begin(), types.end(), [&](const std::string& t) { return has_type(v, t); })) {
        continue;   // a value of another type cannot validate
      }
      std::string text = v.dump();
      if (std::find(n.literals.begin(), n.literals.end(), text) == n.literals.end()) n.literals.push_back(std::move(text));
    }
    if (n.literals.empty()) fail("no enum or const value has the type the schema asks for" + at(where));
    return add(std::move(n));
  }

  int32_t object(const Json& s, int depth, const std::string& where) {
    GrammarNode n;
    n.kind = GrammarNodeKind::kObject;
    const Json empty = Json::object();
    const Json& properties = s.contains("properties") ? s["properties"] : empty;
    if (!properties.is_object()) fail("properties must be an object of schemas" + at(where));
    std::set<std::string> required;
    if (s.contains("required")) {
      const Json& r = s["required"];
      if (!r.is_array()) fail("required must be a list of property names" + at(where));
      for (const Json& name : r) {
        if (!name.is_string()) fail("required must be a list of property names" + at(where));
        if (!properties.contains(name.get<std::string>())) {
          fail("required property '" + echo(name.get<std::string>()) +
               "' is not in properties (only declared properties are generated)" + at(where));
        }
        required.insert(name.get<std::string>());
      }
    }
    const Json* additional = s.contains("additionalProperties") ? &s["additionalProperties"] : nullptr;
    if (additional && !additional->is_boolean() && !additional->is_object()) {
      fail("additionalProperties must be a boolean or a schema" + at(where));
    }
    if (properties.empty()) {
      if (!additional || additional->is_object() || additional->get<bool>()) {
        // No declared keys: any keys, with values of the additionalProperties schema (any value by default).
        n.any_keys = true;
        n.value = additional && additional->is_object() ? compile(*additional, depth + 1, where + "/additionalProperties")
                                                        : any_value();
      }
      return add(std::move(n));
    }
    for (const auto& [name, sub] : properties.items()) {
      GrammarProperty p;
      p.key = escaped_key(name);
      p.value = compile(sub, depth + 1, where + "/properties/" + name);
      p.required = required.count(name) > 0;
      n.properties.push_back(std::move(p));
    }
    if (n.properties.size() > 0xFFFF) fail("more than 65535 properties in one object" + at(where));
    return add(std::move(n));
  }

  int32_t array(const Json& s, int depth, const std::string& where) {
    GrammarNode n;
    n.kind = GrammarNodeKind::kArray;
    const auto bound = [&](const char* k, int32_t fallback) {
      if (!s.contains(k)) return fallback;
      const Json& v = s[k];
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > kMaxItemsBound) {
        fail(std::string(k) + " must be an integer in [0, " + std::to_string(kMaxItemsBound) + "]" + at(where));
      }
      return int32_t(v.get<int64_t>());
    };
    n.min_items = bound("minItems", 0);
    n.max_items = bound("maxItems", -1);
    if (n.max_items >= 0 && n.min_items > n.max_items) {
      fail("minItems " + std::to_string(n.min_items) + " is over maxItems " + std::to_string(n.max_items) + at(where));
    }
    if (!s.contains("items")) {
      n.value = any_value();
    } else if (s["items"].is_array()) {
      fail("items as a list (tuple validation) is not supported; give one schema for every item" + at(where));
    } else {
      n.value = compile(s["items"], depth + 1, where + "/items");
    }
    return add(std::move(n));
  }

  int32_t reference(const Json& ref, int depth, const std::string& where) {
    if (!ref.is_string()) fail("$ref must be a string" + at(where));
    const std::string r = ref.get<std::string>();
    if (r != "#" && r.rfind("#/$defs/", 0) != 0 && r.rfind("#/definitions/", 0) != 0) {
      fail("$ref '" + echo(r) + "' is not supported: only \"#\", \"#/$defs/...\" and \"#/definitions/...\"" + at(where));
    }
    if (auto it = references_.find(r); it != references_.end()) return it->second;
    const Json* target = nullptr;
    try {
      target = &doc_.at(Json::json_pointer(r.substr(1)));
    } catch (const Json::exception&) {
      fail("$ref '" + echo(r) + "' does not resolve" + at(where));
    }
    // Reserved first, so a schema that refers to itself finds its own node.
    GrammarNode placeholder;
    placeholder.kind = GrammarNodeKind::kAnyOf;
    const int32_t node = add(std::move(placeholder));
    references_[r] = node;
    const int32_t body = compile(*target, depth + 1, r);
    grammar_->nodes[size_t(node)].alternatives = {body};
    return node;
  }

  // Any JSON value (an empty schema, true, an object without properties): built once per schema.
  int32_t any_value() {
    if (any_value_ >= 0) return any_value_;
    GrammarNode any;
    any.kind = GrammarNodeKind::kAnyOf;
    any_value_ = add(std::move(any));
    GrammarNode object, array, string, number, literals;
    object.kind = GrammarNodeKind::kObject;
    object.any_keys = true;
    object.value = any_value_;
    array.kind = GrammarNodeKind::kArray;
    array.value = any_value_;
    string.kind = GrammarNodeKind::kString;
    number.kind = GrammarNodeKind::kNumber;
    literals.kind = GrammarNodeKind::kLiterals;
    literals.literals = {"true", "false", "null"};
    std::vector<int32_t> alternatives = {add(std::move(object)), add(std::move(array)), add(std::move(string)),
                                         add(std::move(number)), add(std::move(literals))};
    grammar_->nodes[size_t(any_value_)].alternatives = std::move(alternatives);
    return any_value_;
  }

  const Json& doc_;
  const JsonSchemaOptions& options_;
  std::shared_ptr<JsonGrammar> grammar_;
  std::map<std::string, int32_t> references_;
  int32_t any_value_ = -1;
};
}  // namespace

std::shared_ptr<const JsonGrammar> compile_json_schema(std::string_view schema_text, const JsonSchemaOptions& options) {
  if (schema_text.size() > options.max_schema_bytes) {
    QS_FAIL(ErrorCode::kInvalidArgument, "json_schema: the schema is ", schema_text.size(), " bytes, over the limit of ",
            options.max_schema_bytes);
  }
  Json doc;
  try {
    // The text's own nesting is bounded before anything recurses over it.
    doc = Json::parse(schema_text, [](int depth, Json::parse_event_t, Json&) {
      if (depth > kMaxJsonNesting) {
        QS_FAIL(ErrorCode::kInvalidArgument, "json_schema: the schema's JSON is nested deeper than ", kMaxJsonNesting,
                " levels");
      }
      return true;
    });
  } catch (const Json::exception& e) {
    QS_FAIL(ErrorCode::kInvalidArgument, "json_schema: not valid JSON: ", echo(e.what()));
  }
  return Compiler(doc, options).run();
}

}  // namespace qs
