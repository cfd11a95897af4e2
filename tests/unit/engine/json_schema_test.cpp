// The JSON Schema compiler: every supported keyword compiles to the documents it should accept (checked through
// the matcher, byte by byte), every unsupported keyword and every bound is refused with a sentence naming it.
#include <gtest/gtest.h>

#include <string>

#include "engine/grammar.h"
#include "engine/json_schema.h"
#include "kernels/error.h"

namespace qs {
namespace {

// A grammar matcher needs a vocabulary; byte-level tests only use accept_bytes, so one token is enough.
const VocabularyIndex& byte_vocabulary() {
  static const Tokenizer tokenizer([] {
    TokenizerSpec spec;
    spec.tokens = {"a"};
    return spec;
  }());
  static const VocabularyIndex index(tokenizer, {});
  return index;
}

bool accepts(const std::string& schema, const std::string& document, bool spaces = true) {
  JsonSchemaOptions o;
  o.space_after_separators = spaces;
  GrammarMatcher m(compile_json_schema(schema, o), byte_vocabulary());
  return m.accept_bytes(document) && m.is_complete();
}

// The sentence compile_json_schema throws, or "" when it compiles.
std::string error_of(const std::string& schema, const JsonSchemaOptions& o = {}) {
  try {
    compile_json_schema(schema, o);
    return "";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    return e.what();
  }
}

TEST(JsonSchema, ObjectPropertiesInOrderWithRequiredAndOptional) {
  const std::string s = R"({"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},
      "tags":{"type":"array","items":{"type":"string"}}},"required":["name","tags"]})";
  EXPECT_TRUE(accepts(s, R"({"name":"Ann","age":31,"tags":["a","b"]})"));
  EXPECT_TRUE(accepts(s, R"({"name": "Ann", "tags": []})"));       // optional age left out; one space allowed
  EXPECT_FALSE(accepts(s, R"({"name":"Ann","age":31})"));          // required tags missing
  EXPECT_FALSE(accepts(s, R"({"age":31,"name":"Ann","tags":[]})"));  // out of the schema's order
  EXPECT_FALSE(accepts(s, R"({"name":"Ann","tags":[],"x":1})"));   // undeclared property
  EXPECT_FALSE(accepts(s, R"({"name":  "Ann","tags":[]})"));       // two spaces
  EXPECT_FALSE(accepts(s, R"({ "name":"Ann","tags":[]})"));        // space after '{' is not canonical
  EXPECT_FALSE(accepts(s, R"({"name": "Ann","tags":[]})", false));  // compact mode: no spaces at all
  EXPECT_TRUE(accepts(s, R"({"name":"Ann","tags":[]})", false));
}

TEST(JsonSchema, KeysThatPrefixEachOther) {
  const std::string s = R"({"properties":{"a":{"type":"integer"},"ab":{"type":"integer"},"abc":{"type":"boolean"}}})";
  EXPECT_TRUE(accepts(s, R"({"ab":1})"));
  EXPECT_TRUE(accepts(s, R"({"a":1,"abc":true})"));
  EXPECT_TRUE(accepts(s, R"({"abc":false})"));
  EXPECT_TRUE(accepts(s, R"({})"));
  EXPECT_FALSE(accepts(s, R"({"abcd":false})"));
  EXPECT_FALSE(accepts(s, R"({"ab":1,"a":2})"));
}

TEST(JsonSchema, AdditionalProperties) {
  // No properties: any keys, values from additionalProperties (any value when it is true or absent).
  EXPECT_TRUE(accepts(R"({"type":"object"})", R"({"x":[1,{"y":null}],"z":"w"})"));
  EXPECT_TRUE(accepts(R"({"type":"object","additionalProperties":{"type":"integer"}})", R"({"a":1,"b":2})"));
  EXPECT_FALSE(accepts(R"({"type":"object","additionalProperties":{"type":"integer"}})", R"({"a":"1"})"));
  EXPECT_TRUE(accepts(R"({"type":"object","additionalProperties":false})", "{}"));
  EXPECT_FALSE(accepts(R"({"type":"object","additionalProperties":false})", R"({"a":1})"));
  // With properties, only they are generated, whatever additionalProperties says.
  EXPECT_FALSE(accepts(R"({"properties":{"a":{}},"additionalProperties":true})", R"({"a":1,"b":2})"));
}

TEST(JsonSchema, ArraysWithBounds) {
  const std::string s = R"({"type":"array","items":{"type":"integer"},"minItems":2,"maxItems":3})";
  EXPECT_FALSE(accepts(s, "[1]"));
  EXPECT_TRUE(accepts(s, "[1,2]"));
  EXPECT_TRUE(accepts(s, "[1, 2, 3]"));
  EXPECT_FALSE(accepts(s, "[1,2,3,4]"));
  EXPECT_FALSE(accepts(s, "[]"));
  EXPECT_TRUE(accepts(R"({"type":"array"})", R"([1,"a",[],{}])"));
  EXPECT_TRUE(accepts(R"({"type":"array","maxItems":0})", "[]"));
  EXPECT_FALSE(accepts(R"({"type":"array","maxItems":0})", "[1]"));
}

TEST(JsonSchema, EnumConstAndTypeFiltering) {
  const std::string s = R"({"enum":["red","green",1,12,null,{"a":[1]}]})";
  for (const char* doc : {R"("red")", R"("green")", "1", "12", "null", R"({"a":[1]})"}) EXPECT_TRUE(accepts(s, doc)) << doc;
  for (const char* doc : {R"("blue")", "2", "123", R"("re")", R"({"a":[1,2]})"}) EXPECT_FALSE(accepts(s, doc)) << doc;
  EXPECT_TRUE(accepts(R"({"const":"x"})", R"("x")"));
  EXPECT_FALSE(accepts(R"({"const":"x"})", R"("y")"));
  // A value of another type than the schema asks for cannot validate: it is left out.
  EXPECT_FALSE(accepts(R"({"type":"string","enum":["a",1]})", "1"));
  EXPECT_TRUE(accepts(R"({"type":"integer","enum":["a",1,2.0]})", "2.0"));
}

TEST(JsonSchema, ScalarTypes) {
  EXPECT_TRUE(accepts(R"({"type":"integer"})", "-120"));
  EXPECT_TRUE(accepts(R"({"type":"integer"})", "0"));
  EXPECT_FALSE(accepts(R"({"type":"integer"})", "012"));
  EXPECT_FALSE(accepts(R"({"type":"integer"})", "1.5"));
  EXPECT_FALSE(accepts(R"({"type":"integer"})", "-"));
  EXPECT_FALSE(accepts(R"({"type":"integer"})", "12345678901234567"));   // 17 digits: over the cap
  for (const char* doc : {"0", "-0.5", "3.25e-7", "1E+3", "10"}) EXPECT_TRUE(accepts(R"({"type":"number"})", doc)) << doc;
  for (const char* doc : {"1.", ".5", "1e", "+1", "01", "1.5.2"}) EXPECT_FALSE(accepts(R"({"type":"number"})", doc)) << doc;
  EXPECT_TRUE(accepts(R"({"type":"boolean"})", "false"));
  EXPECT_FALSE(accepts(R"({"type":"boolean"})", "fals"));
  EXPECT_TRUE(accepts(R"({"type":"null"})", "null"));
  EXPECT_TRUE(accepts(R"({"type":["string","null"]})", "null"));
  EXPECT_TRUE(accepts(R"({"type":["string","null"]})", R"("x")"));
  EXPECT_FALSE(accepts(R"({"type":["string","null"]})", "1"));
}

TEST(JsonSchema, StringsEscapesAndUtf8) {
  const std::string s = R"({"type":"string"})";
  EXPECT_TRUE(accepts(s, R"("a\"b\\c\/\n\t\u00e9")"));
  EXPECT_TRUE(accepts(s, "\"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80\""));   // é € 😀
  EXPECT_FALSE(accepts(s, R"("\x")"));
  EXPECT_FALSE(accepts(s, R"("\u12G4")"));
  EXPECT_FALSE(accepts(s, "\"a\nb\""));             // raw control character
  EXPECT_FALSE(accepts(s, "\"\xC3\""));             // character cut short
  EXPECT_FALSE(accepts(s, "\"\xC0\xAF\""));         // overlong
  EXPECT_FALSE(accepts(s, "\"\xED\xA0\x80\""));     // a surrogate in UTF-8
  EXPECT_FALSE(accepts(s, "\"\xFF\""));
  EXPECT_FALSE(accepts(s, R"("abc)"));
}

TEST(JsonSchema, AnyOfNestingAndRefs) {
  const std::string s = R"({"anyOf":[{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]},
      {"type":"object","properties":{"b":{"type":"string"}},"required":["b"]},{"type":"integer"}]})";
  EXPECT_TRUE(accepts(s, R"({"a":1})"));
  EXPECT_TRUE(accepts(s, R"({"b":"x"})"));
  EXPECT_TRUE(accepts(s, "7"));
  EXPECT_FALSE(accepts(s, R"({"a":"x"})"));
  const std::string tree = R"({"$defs":{"node":{"type":"object","properties":{"v":{"type":"integer"},
      "kids":{"type":"array","items":{"$ref":"#/$defs/node"}}},"required":["v"]}},"$ref":"#/$defs/node"})";
  EXPECT_TRUE(accepts(tree, R"({"v":1,"kids":[{"v":2},{"v":3,"kids":[{"v":4}]}]})"));
  EXPECT_FALSE(accepts(tree, R"({"v":1,"kids":[{"w":2}]})"));
  EXPECT_TRUE(accepts(R"({"definitions":{"x":{"type":"null"}},"properties":{"p":{"$ref":"#/definitions/x"}}})",
                      R"({"p":null})"));
}

TEST(JsonSchema, AnnotationsAreIgnoredAndEmptySchemaIsAnyValue) {
  const std::string s = R"({"title":"T","description":"d","$schema":"https://json-schema.org/draft/2020-12/schema",
      "properties":{"a":{"type":"string","default":"x","examples":["y"]}}})";
  EXPECT_TRUE(accepts(s, R"({"a":"z"})"));
  EXPECT_TRUE(accepts("{}", R"([{"k":true}, -1.5, "s"])"));
  EXPECT_TRUE(accepts("true", "null"));
}

TEST(JsonSchema, UnsupportedKeywordsAreNamed) {
  EXPECT_EQ(error_of(R"({"type":"object","patternProperties":{"a":{}}})"),
            "json_schema: keyword 'patternProperties' is not supported");
  for (const char* k : {"pattern", "format", "minLength", "maxLength", "minimum", "maximum", "oneOf", "allOf", "not",
                        "if", "uniqueItems", "prefixItems", "dependentRequired", "multipleOf"}) {
    const std::string e = error_of(std::string(R"({"properties":{"p":{")") + k + R"(":1}}})");
    EXPECT_EQ(e, std::string("json_schema: keyword '") + k + "' is not supported (at #/properties/p)");
  }
}

TEST(JsonSchema, MalformedSchemasAreRefused) {
  EXPECT_NE(error_of("{").find("json_schema: not valid JSON"), std::string::npos);
  EXPECT_NE(error_of("[1]").find("a schema must be an object or a boolean"), std::string::npos);
  EXPECT_NE(error_of("false").find("accepts nothing"), std::string::npos);
  EXPECT_NE(error_of(R"({"type":"strin"})").find("unknown type 'strin'"), std::string::npos);
  EXPECT_NE(error_of(R"({"properties":{"a":{}},"required":["b"]})").find("required property 'b' is not in properties"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"enum":[]})").find("enum must be a non-empty list"), std::string::npos);
  EXPECT_NE(error_of(R"({"type":"string","enum":[1]})").find("no enum or const value"), std::string::npos);
  EXPECT_NE(error_of(R"({"anyOf":[]})").find("anyOf must be a non-empty list"), std::string::npos);
  EXPECT_NE(error_of(R"({"type":"string","anyOf":[{}]})").find("anyOf next to other keywords ('type')"), std::string::npos);
  EXPECT_NE(error_of(R"({"minItems":3,"maxItems":2})").find("minItems 3 is over maxItems 2"), std::string::npos);
  EXPECT_NE(error_of(R"({"minItems":-1})").find("minItems must be an integer"), std::string::npos);
  EXPECT_NE(error_of(R"({"items":[{}]})").find("tuple validation"), std::string::npos);
  EXPECT_NE(error_of(R"({"$ref":"#/$defs/missing"})").find("does not resolve"), std::string::npos);
  EXPECT_NE(error_of(R"({"$ref":"http://x/y"})").find("is not supported: only"), std::string::npos);
  EXPECT_NE(error_of(R"({"$defs":{"a":{"$ref":"#/$defs/a"}},"$ref":"#/$defs/a"})").find("refers back to itself"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"$defs":{"a":{"anyOf":[{"$ref":"#/$defs/a"},{"type":"null"}]}},"$ref":"#/$defs/a"})")
                .find("refers back to itself"),
            std::string::npos);
}

TEST(JsonSchema, SizeDepthAndNodeBounds) {
  JsonSchemaOptions o;
  o.max_schema_bytes = 100;
  const std::string big = std::string(R"({"description":")") + std::string(200, 'x') + "\"}";
  EXPECT_EQ(error_of(big, o), "json_schema: the schema is " + std::to_string(big.size()) + " bytes, over the limit of 100");
  std::string deep = R"({"type":"integer"})";
  for (int i = 0; i < 20; ++i) deep = R"({"type":"array","items":)" + deep + "}";
  EXPECT_NE(error_of(deep).find("nested deeper than 16 levels"), std::string::npos);
  std::string deep_json(300, '[');
  EXPECT_NE(error_of(R"({"enum":[)" + deep_json + std::string(300, ']') + "]}").find("nested deeper than 128"),
            std::string::npos);
  std::string wide = R"({"properties":{)";
  for (int i = 0; i < 5000; ++i) wide += (i ? "," : "") + std::string("\"p") + std::to_string(i) + "\":{\"type\":\"null\"}";
  wide += "}}";
  JsonSchemaOptions large;
  large.max_schema_bytes = size_t(1) << 20;
  EXPECT_NE(error_of(wide, large).find("more than 4096 grammar nodes"), std::string::npos);
  // A caller's long key is not echoed whole.
  const std::string long_key(1000, 'k');
  const std::string e = error_of(R"({"properties":{")" + long_key + R"(":{"format":"x"}}})");
  EXPECT_LT(e.size(), 400u) << e;
}

TEST(JsonSchema, OutputDepthIsBounded) {
  JsonSchemaOptions o;
  o.max_output_depth = 3;
  GrammarMatcher m(compile_json_schema("{}", o), byte_vocabulary());
  EXPECT_TRUE(m.accept_bytes("[[["));
  EXPECT_FALSE(m.accept_bytes("["));   // a fourth value open at once
  EXPECT_FALSE(m.accept_bytes("1"));
  EXPECT_TRUE(m.accept_bytes("]],1]"));
  EXPECT_TRUE(m.is_complete());
}

}  // namespace
}  // namespace qs
