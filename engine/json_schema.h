// JSON Schema -> JsonGrammar (engine/grammar.h): the subset of JSON Schema that constrained decoding supports.
#pragma once
#include <cstddef>
#include <memory>
#include <string_view>

#include "engine/grammar.h"

namespace qs {

struct JsonSchemaOptions {
  size_t max_schema_bytes = 64 * 1024;  // a request's schema text
  int max_schema_depth = 16;            // schemas nested in schemas (properties, items, anyOf, $ref targets)
  int max_nodes = 4096;                 // grammar nodes the schema compiles to
  int max_output_depth = 32;            // values open at once in generated output (nesting + 1)
  bool space_after_separators = true;   // allow one ' ' after ':' and ',' (docs/SERVING.md says why)
};

// Compiles a JSON Schema. Supported: type (a name or a list of names), properties, required,
// additionalProperties (false, true, or a schema when there are no properties), items, minItems, maxItems,
// enum, const, anyOf, $ref to "#", "#/$defs/..." or "#/definitions/...", and the annotations (title,
// description, default, examples, $schema, $id, $comment, deprecated, readOnly, writeOnly), which are ignored.
// Properties come out in the schema's order; only declared properties are generated (additionalProperties
// true or absent allows more, but output without them is still valid). Any other keyword, and schemas over
// the limits, throw qs::Error(kInvalidArgument) with a sentence that starts "json_schema: ".
std::shared_ptr<const JsonGrammar> compile_json_schema(std::string_view schema_text,
                                                       const JsonSchemaOptions& options = {});

}  // namespace qs
