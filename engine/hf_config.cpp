// config.json parsing: each architecture's field names and Hugging Face defaults, checked for sense.
#include "engine/hf_config.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "kernels/error.h"

namespace qs {

namespace {

using json = nlohmann::json;

class ConfigReader {
 public:
  ConfigReader(const json& j, const std::string& file) : j_(j), file_(file) {}

  bool has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }

  int64_t get_int(const char* key) const {
    QS_CHECK(has(key), ErrorCode::kInvalidModel, file_, ": '", key, "' is missing");
    return as_int(key);
  }
  int64_t get_int(const char* key, int64_t fallback) const { return has(key) ? as_int(key) : fallback; }

  double get_float(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    QS_CHECK(v.is_number(), ErrorCode::kInvalidModel, file_, ": '", key, "' is ", v.dump(), ", not a number");
    return v.get<double>();
  }

  bool get_bool(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    QS_CHECK(v.is_boolean(), ErrorCode::kInvalidModel, file_, ": '", key, "' is ", v.dump(), ", not true/false");
    return v.get<bool>();
  }

  std::string get_string(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    QS_CHECK(v.is_string(), ErrorCode::kInvalidModel, file_, ": '", key, "' is ", v.dump(), ", not a string");
    return v.get<std::string>();
  }

  // A token id that may be given as a list (generation configs list several eos ids): the first one.
  int32_t get_token_id(const char* key) const {
    if (!has(key)) return -1;
    const json* v = &j_.at(key);
    if (v->is_array()) {
      if (v->empty()) return -1;
      v = &v->at(0);
    }
    QS_CHECK(v->is_number_integer() && v->get<int64_t>() >= 0 && v->get<int64_t>() < (int64_t(1) << 31),
             ErrorCode::kInvalidModel, file_, ": '", key, "' is ", v->dump(), ", not a token id");
    return int32_t(v->get<int64_t>());
  }

 private:
  int64_t as_int(const char* key) const {
    const json& v = j_.at(key);
    QS_CHECK(v.is_number_integer(), ErrorCode::kInvalidModel, file_, ": '", key, "' is ", v.dump(),
             ", not an integer");
    return v.get<int64_t>();
  }
  const json& j_;
  const std::string& file_;
};

HiddenAct parse_activation(const std::string& act, const std::string& file, const char* key) {
  if (act == "gelu_new" || act == "gelu_pytorch_tanh" || act == "gelu_fast") return HiddenAct::kGeluTanh;
  if (act == "gelu") return HiddenAct::kGeluErf;
  if (act == "silu" || act == "swish") return HiddenAct::kSilu;
  if (act == "relu") return HiddenAct::kRelu;
  QS_FAIL(ErrorCode::kUnsupported, file, ": activation ", key, " = '", act,
          "' is not supported (supported: gelu_new, gelu_pytorch_tanh, gelu, silu, relu)");
}

// transformers 5 writes RoPE as rope_parameters: {"rope_type": "default", "rope_theta": ...}, or one such dict
// per layer type (Gemma 3: "full_attention", "sliding_attention"); older configs have rope_theta and
// rope_scaling. Returns the base for `layer_type` (or the only one); anything but plain RoPE is refused.
double rope_base(const json& j, const std::string& file, const char* layer_type, double fallback) {
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    const json* p = &j["rope_parameters"];
    if (layer_type != nullptr && p->contains(layer_type) && (*p)[layer_type].is_object()) p = &(*p)[layer_type];
    const std::string type = p->contains("rope_type") && (*p)["rope_type"].is_string()
                                 ? (*p)["rope_type"].get<std::string>() : "default";
    QS_CHECK(type == "default", ErrorCode::kUnsupported, file, ": rope_parameters has rope_type '", type,
             "'; quantserve supports only plain RoPE (no scaling)");
    if (p->contains("rope_theta") && (*p)["rope_theta"].is_number()) return (*p)["rope_theta"].get<double>();
  }
  if (j.contains("rope_theta") && j["rope_theta"].is_number()) return j["rope_theta"].get<double>();
  return fallback;
}

// layer_types ("sliding_attention" / "full_attention" per layer) as flags; empty when the config has none.
std::vector<bool> sliding_layer_flags(const json& j, const std::string& file) {
  std::vector<bool> out;
  if (!j.contains("layer_types") || j["layer_types"].is_null()) return out;
  QS_CHECK(j["layer_types"].is_array(), ErrorCode::kInvalidModel, file, ": 'layer_types' is not a list");
  for (const json& t : j["layer_types"]) {
    const std::string s = t.is_string() ? t.get<std::string>() : "";
    QS_CHECK(s == "sliding_attention" || s == "full_attention", ErrorCode::kUnsupported, file, ": layer type ",
             t.dump(), " is not supported (supported: sliding_attention, full_attention)");
    out.push_back(s == "sliding_attention");
  }
  return out;
}

// The sizes every Llama-style config (Llama, Qwen, Mistral, Gemma) spells the same way.
void read_decoder_sizes(const ConfigReader& r, ModelConfig& c, int64_t default_positions) {
  c.vocab_size = r.get_int("vocab_size");
  c.hidden_size = r.get_int("hidden_size");
  c.num_layers = r.get_int("num_hidden_layers");
  c.num_heads = r.get_int("num_attention_heads");
  c.num_kv_heads = r.get_int("num_key_value_heads", c.num_heads);
  c.intermediate_size = r.get_int("intermediate_size");
  c.max_positions = r.get_int("max_position_embeddings", default_positions);
  c.norm_eps = float(r.get_float("rms_norm_eps", 1e-6));
}

void check_positive(int64_t v, const char* what, const std::string& file) {
  QS_CHECK(v > 0 && v < (int64_t(1) << 40), ErrorCode::kInvalidModel, file, ": ", what, " is ", v,
           ", expected a positive number");
}

}  // namespace

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  QS_CHECK(in, ErrorCode::kNotFound, path, ": no such file or it cannot be read");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

ModelConfig read_hf_config(const std::string& path) { return parse_hf_config(read_text_file(path), path); }

ModelConfig parse_hf_config(const std::string& json_text, const std::string& file) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    QS_FAIL(ErrorCode::kInvalidModel, file, ": not valid JSON (", e.what(), ")");
  }
  QS_CHECK(j.is_object(), ErrorCode::kInvalidModel, file, ": not a JSON object");
  ConfigReader r(j, file);
  QS_CHECK(r.has("model_type"), ErrorCode::kInvalidModel, file, ": 'model_type' is missing");
  const std::string model_type = r.get_string("model_type", "");
  QS_CHECK(!r.has("rope_scaling"), ErrorCode::kUnsupported, file, ": rope_scaling ", j.at("rope_scaling").dump(),
           " is set; quantserve does not support RoPE scaling");

  ModelConfig c;
  if (model_type == "gpt2") {
    c.arch = Architecture::kGpt2;
    c.vocab_size = r.get_int("vocab_size");
    c.hidden_size = r.get_int("n_embd");
    c.num_layers = r.get_int("n_layer");
    c.num_heads = r.get_int("n_head");
    c.num_kv_heads = c.num_heads;
    c.intermediate_size = r.get_int("n_inner", 4 * c.hidden_size);
    c.max_positions = r.has("n_positions") ? r.get_int("n_positions") : r.get_int("n_ctx");
    c.norm_eps = float(r.get_float("layer_norm_epsilon", 1e-5));
    c.hidden_act = parse_activation(r.get_string("activation_function", "gelu_new"), file, "activation_function");
    c.rotary_dim = 0;
    c.tie_word_embeddings = r.get_bool("tie_word_embeddings", true);
    c.attention_bias = true;
    c.mlp_bias = true;
  } else if (model_type == "gpt_neox") {
    c.arch = Architecture::kGptNeoX;
    c.vocab_size = r.get_int("vocab_size");
    c.hidden_size = r.get_int("hidden_size");
    c.num_layers = r.get_int("num_hidden_layers");
    c.num_heads = r.get_int("num_attention_heads");
    c.num_kv_heads = c.num_heads;
    c.intermediate_size = r.get_int("intermediate_size");
    c.max_positions = r.get_int("max_position_embeddings");
    c.norm_eps = float(r.get_float("layer_norm_eps", 1e-5));
    c.hidden_act = parse_activation(r.get_string("hidden_act", "gelu"), file, "hidden_act");
    c.rope_theta = float(r.get_float("rotary_emb_base", r.get_float("rope_theta", 10000.0)));
    const double pct = r.get_float("rotary_pct", r.get_float("partial_rotary_factor", 0.25));
    QS_CHECK(pct > 0.0 && pct <= 1.0, ErrorCode::kInvalidModel, file, ": rotary_pct is ", pct,
             ", expected a fraction in (0, 1]");
    c.parallel_residual = r.get_bool("use_parallel_residual", true);
    c.tie_word_embeddings = r.get_bool("tie_word_embeddings", false);
    c.attention_bias = r.get_bool("attention_bias", true);
    c.mlp_bias = true;
    check_positive(c.num_heads, "num_attention_heads", file);
    c.head_dim = c.hidden_size / c.num_heads;
    c.rotary_dim = int64_t(double(c.head_dim) * pct);  // as transformers: int(head_size * rotary_pct)
  } else if (model_type == "llama" || model_type == "qwen2" || model_type == "qwen3" || model_type == "mistral") {
    c.arch = model_type == "qwen2" ? Architecture::kQwen2
             : model_type == "qwen3" ? Architecture::kQwen3
             : model_type == "mistral" ? Architecture::kMistral : Architecture::kLlama;
    read_decoder_sizes(r, c, 2048);
    c.hidden_act = parse_activation(r.get_string("hidden_act", "silu"), file, "hidden_act");
    c.rope_theta = float(rope_base(j, file, nullptr, 10000.0));
    c.tie_word_embeddings = r.get_bool("tie_word_embeddings", false);
    c.attention_bias = r.get_bool("attention_bias", c.arch == Architecture::kQwen2);   // Qwen2: q/k/v biases
    c.mlp_bias = r.get_bool("mlp_bias", false);
    c.qk_norm = c.arch == Architecture::kQwen3;
    check_positive(c.num_heads, "num_attention_heads", file);
    c.head_dim = r.get_int("head_dim", c.hidden_size / c.num_heads);
    c.rotary_dim = c.head_dim;
    // Mistral slides every layer when sliding_window is set; Qwen2/3 only with use_sliding_window, on the layers
    // layer_types marks.
    const bool qwen = c.arch == Architecture::kQwen2 || c.arch == Architecture::kQwen3;
    if (c.arch == Architecture::kMistral || (qwen && r.get_bool("use_sliding_window", false))) {
      c.sliding_window = r.get_int("sliding_window", 0);
      if (qwen) c.sliding_layers = sliding_layer_flags(j, file);
    }
  } else if (model_type == "gemma3_text") {
    c.arch = Architecture::kGemma3;
    read_decoder_sizes(r, c, 131072);
    c.hidden_act = parse_activation(r.get_string("hidden_activation", "gelu_pytorch_tanh"), file, "hidden_activation");
    QS_CHECK(c.hidden_act == HiddenAct::kGeluTanh, ErrorCode::kUnsupported, file,
             ": Gemma 3 with a hidden_activation other than gelu_pytorch_tanh is not supported");
    for (const char* cap : {"final_logit_softcapping", "attn_logit_softcapping"}) {
      QS_CHECK(!r.has(cap), ErrorCode::kUnsupported, file, ": ", cap, " is set; quantserve has no logit soft-capping");
    }
    QS_CHECK(!r.get_bool("use_bidirectional_attention", false), ErrorCode::kUnsupported, file,
             ": bidirectional attention (EmbeddingGemma) is not supported");
    c.rope_theta = float(rope_base(j, file, "full_attention", 1000000.0));
    c.rope_local_theta = float(rope_base(j, file, "sliding_attention", r.get_float("rope_local_base_freq", 10000.0)));
    c.tie_word_embeddings = r.get_bool("tie_word_embeddings", true);
    QS_CHECK(!r.get_bool("attention_bias", false), ErrorCode::kUnsupported, file,
             ": Gemma 3 with attention biases is not supported");
    c.qk_norm = true;
    check_positive(c.num_heads, "num_attention_heads", file);
    c.head_dim = r.get_int("head_dim", 256);
    c.rotary_dim = c.head_dim;
    c.query_pre_attn_scalar = float(r.get_float("query_pre_attn_scalar", double(c.head_dim)));
    c.sliding_window = r.get_int("sliding_window", 4096);
    c.sliding_window_pattern = r.get_int("sliding_window_pattern", 6);
    c.sliding_layers = sliding_layer_flags(j, file);
  } else {
    QS_FAIL(ErrorCode::kUnsupported, file, ": model_type '", model_type,
            "' is not supported (supported: gpt2, gpt_neox, llama, qwen2, qwen3, mistral, gemma3_text)");
  }
  QS_CHECK(c.sliding_window >= 0 && c.sliding_layers.size() <= size_t(c.num_layers), ErrorCode::kInvalidModel, file,
           ": sliding_window ", c.sliding_window, " or layer_types (", c.sliding_layers.size(), " for ", c.num_layers,
           " layers) make no sense");

  check_positive(c.vocab_size, "the vocabulary size", file);
  check_positive(c.hidden_size, "the hidden size", file);
  check_positive(c.num_layers, "the number of layers", file);
  check_positive(c.num_heads, "the number of attention heads", file);
  check_positive(c.num_kv_heads, "the number of key/value heads", file);
  check_positive(c.intermediate_size, "the MLP width", file);
  check_positive(c.max_positions, "the context length", file);
  if (c.head_dim == 0) {
    QS_CHECK(c.hidden_size % c.num_heads == 0, ErrorCode::kInvalidModel, file, ": hidden size ", c.hidden_size,
             " is not divisible by the ", c.num_heads, " attention heads");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  check_positive(c.head_dim, "head_dim", file);
  QS_CHECK(c.num_heads % c.num_kv_heads == 0, ErrorCode::kInvalidModel, file, ": ", c.num_heads,
           " attention heads are not a multiple of the ", c.num_kv_heads, " key/value heads");
  QS_CHECK(std::isfinite(c.norm_eps) && c.norm_eps > 0, ErrorCode::kInvalidModel, file, ": the norm epsilon ",
           c.norm_eps, " is not a positive number");
  QS_CHECK(std::isfinite(c.rope_theta) && c.rope_theta > 0, ErrorCode::kInvalidModel, file, ": the rope base ",
           c.rope_theta, " is not a positive number");
  c.bos_token_id = r.get_token_id("bos_token_id");
  c.eos_token_id = r.get_token_id("eos_token_id");
  return c;
}

}  // namespace qs
