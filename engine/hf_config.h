// Hugging Face config.json -> ModelConfig for the architectures quantserve runs (gpt2, gpt_neox, llama).
#pragma once
#include <string>

#include "engine/model_config.h"

namespace qs {

// Parses the text of a config.json; `file` names it in error messages. Throws qs::Error: kInvalidModel for
// bad JSON or missing/mistyped fields, kUnsupported for an unknown model_type, rope_scaling, or an activation
// this engine lacks. bos/eos come from the config when present; the name is left empty for the caller.
ModelConfig parse_hf_config(const std::string& json_text, const std::string& file);
// Reads and parses `path` (kNotFound when missing).
ModelConfig read_hf_config(const std::string& path);

// Reads a whole small file (config, tokenizer_config) as text; kNotFound when missing.
std::string read_text_file(const std::string& path);

}  // namespace qs
