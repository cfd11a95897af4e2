// config.json parsing: each architecture's field names and Hugging Face defaults, checked for sense.
#include "engine/hf_config.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

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
  } else if (model_type == "llama") {
    c.arch = Architecture::kLlama;
    c.vocab_size = r.get_int("vocab_size");
    c.hidden_size = r.get_int("hidden_size");
    c.num_layers = r.get_int("num_hidden_layers");
    c.num_heads = r.get_int("num_attention_heads");
    c.num_kv_heads = r.get_int("num_key_value_heads", c.num_heads);
    c.intermediate_size = r.get_int("intermediate_size");
    c.max_positions = r.get_int("max_position_embeddings", 2048);
    c.norm_eps = float(r.get_float("rms_norm_eps", 1e-6));
    c.hidden_act = parse_activation(r.get_string("hidden_act", "silu"), file, "hidden_act");
    c.rope_theta = float(r.get_float("rope_theta", 10000.0));
    c.tie_word_embeddings = r.get_bool("tie_word_embeddings", false);
    c.attention_bias = r.get_bool("attention_bias", false);
    c.mlp_bias = r.get_bool("mlp_bias", false);
    check_positive(c.num_heads, "num_attention_heads", file);
    c.head_dim = r.get_int("head_dim", c.hidden_size / c.num_heads);
    c.rotary_dim = c.head_dim;
  } else {
    QS_FAIL(ErrorCode::kUnsupported, file, ": model_type '", model_type,
            "' is not supported (supported: gpt2, gpt_neox, llama)");
  }

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
