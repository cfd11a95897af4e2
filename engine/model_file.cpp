// ModelFile::open: finds what kind of model a path is, reads config, tensors and tokenizer, and checks them.
#include "engine/model_file.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "engine/gguf.h"
#include "engine/hf_config.h"
#include "engine/safetensors.h"
#include "kernels/error.h"
#include "kernels/gguf_blocks.h"

namespace qs {

namespace {

using json = nlohmann::json;
constexpr const char* kCorrupt = "; the model is corrupted or incomplete";

bool path_exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}
bool is_directory(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool is_regular_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}
std::string strip_trailing_slashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}
std::string base_name(const std::string& p) {
  const std::string s = strip_trailing_slashes(p);
  const size_t slash = s.find_last_of('/');
  return slash == std::string::npos ? s : s.substr(slash + 1);
}
std::string parent_dir(const std::string& p) {
  const std::string s = strip_trailing_slashes(p);
  const size_t slash = s.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : s.substr(0, slash);
}
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
const char* architecture_label(Architecture a) {
  switch (a) {
    case Architecture::kGpt2: return "gpt2";
    case Architecture::kGptNeoX: return "gpt_neox";
    case Architecture::kLlama: return "llama";
    case Architecture::kQwen2: return "qwen2";
    case Architecture::kQwen3: return "qwen3";
    case Architecture::kMistral: return "mistral";
    case Architecture::kGemma3: return "gemma3";
  }
  return "?";
}
std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}
// The first bytes of a file, to tell formats apart whatever the name says.
std::string file_prefix(const std::string& path, size_t n) {
  std::ifstream in(path, std::ios::binary);
  std::string buf(n, '\0');
  in.read(buf.data(), std::streamsize(n));
  buf.resize(size_t(std::max<std::streamsize>(in.gcount(), 0)));
  return buf;
}

json read_json_file(const std::string& path) {
  try {
    return json::parse(read_text_file(path));
  } catch (const json::exception& e) {
    QS_FAIL(ErrorCode::kInvalidModel, path, ": not valid JSON (", e.what(), ")");
  }
}

// tokenizer_config.json writes special tokens as "<s>" or as {"content": "<s>", ...}.
std::string token_content(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}
int32_t find_token(const TokenizerSpec& spec, const std::string& token) {
  if (token.empty()) return -1;
  for (size_t i = 0; i < spec.tokens.size(); ++i) {
    if (spec.tokens[i] == token) return int32_t(i);
  }
  return -1;
}
int32_t json_token_id(const json& j, const char* key) {
  if (!j.contains(key)) return -1;
  const json* v = &j[key];
  if (v->is_array() && !v->empty()) v = &v->at(0);
  if (v->is_number_integer() && v->get<int64_t>() >= 0 && v->get<int64_t>() < (int64_t(1) << 31)) {
    return int32_t(v->get<int64_t>());
  }
  return -1;
}

// The llama.cpp name for layer N's tensor ("attn_q") and the Hugging Face one, per architecture.
struct NameRule {
  const char* gguf;
  const char* hf;
};
constexpr NameRule kLlamaLayerNames[] = {
    {"attn_q", "self_attn.q_proj"},     {"attn_k", "self_attn.k_proj"},   {"attn_v", "self_attn.v_proj"},
    {"attn_output", "self_attn.o_proj"}, {"ffn_gate", "mlp.gate_proj"},    {"ffn_up", "mlp.up_proj"},
    {"ffn_down", "mlp.down_proj"},       {"attn_norm", "input_layernorm"}, {"ffn_norm", "post_attention_layernorm"},
};
// Qwen2/Qwen3 use Llama's names, plus Qwen3's QK-norm.
constexpr NameRule kQwenLayerNames[] = {
    {"attn_q", "self_attn.q_proj"},     {"attn_k", "self_attn.k_proj"},   {"attn_v", "self_attn.v_proj"},
    {"attn_output", "self_attn.o_proj"}, {"ffn_gate", "mlp.gate_proj"},    {"ffn_up", "mlp.up_proj"},
    {"ffn_down", "mlp.down_proj"},       {"attn_norm", "input_layernorm"}, {"ffn_norm", "post_attention_layernorm"},
    {"attn_q_norm", "self_attn.q_norm"}, {"attn_k_norm", "self_attn.k_norm"},
};
// Gemma 3: llama.cpp's "ffn_norm" is the pre-feed-forward norm; the two post norms have their own names.
constexpr NameRule kGemma3LayerNames[] = {
    {"attn_q", "self_attn.q_proj"},     {"attn_k", "self_attn.k_proj"},   {"attn_v", "self_attn.v_proj"},
    {"attn_output", "self_attn.o_proj"}, {"ffn_gate", "mlp.gate_proj"},    {"ffn_up", "mlp.up_proj"},
    {"ffn_down", "mlp.down_proj"},       {"attn_norm", "input_layernorm"}, {"ffn_norm", "pre_feedforward_layernorm"},
    {"attn_q_norm", "self_attn.q_norm"}, {"attn_k_norm", "self_attn.k_norm"},
    {"post_attention_norm", "post_attention_layernorm"}, {"post_ffw_norm", "post_feedforward_layernorm"},
};
constexpr NameRule kLlamaGlobalNames[] = {
    {"token_embd", "model.embed_tokens"}, {"output_norm", "model.norm"}, {"output", "lm_head"}};
constexpr NameRule kGpt2LayerNames[] = {
    {"attn_norm", "ln_1"}, {"attn_qkv", "attn.c_attn"}, {"attn_output", "attn.c_proj"},
    {"ffn_norm", "ln_2"},  {"ffn_up", "mlp.c_fc"},      {"ffn_down", "mlp.c_proj"},
};
constexpr NameRule kGpt2GlobalNames[] = {{"token_embd", "transformer.wte"},
                                         {"position_embd", "transformer.wpe"},
                                         {"output_norm", "transformer.ln_f"},
                                         {"output", "lm_head"}};
constexpr NameRule kNeoxLayerNames[] = {
    {"attn_norm", "input_layernorm"},        {"attn_qkv", "attention.query_key_value"},
    {"attn_output", "attention.dense"},      {"ffn_norm", "post_attention_layernorm"},
    {"ffn_up", "mlp.dense_h_to_4h"},         {"ffn_down", "mlp.dense_4h_to_h"},
};
constexpr NameRule kNeoxGlobalNames[] = {{"token_embd", "gpt_neox.embed_in"},
                                         {"output_norm", "gpt_neox.final_layer_norm"},
                                         {"output", "embed_out"}};

// "blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight"; names without a rule are kept.
std::string hf_name_for_gguf(Architecture arch, const std::string& name) {
  const NameRule* layer_rules = nullptr;
  size_t n_layer_rules = 0;
  const NameRule* global_rules = nullptr;
  size_t n_global_rules = 0;
  std::string layer_prefix;
  switch (arch) {
    case Architecture::kLlama:
    case Architecture::kMistral:
      layer_rules = kLlamaLayerNames, n_layer_rules = std::size(kLlamaLayerNames);
      global_rules = kLlamaGlobalNames, n_global_rules = std::size(kLlamaGlobalNames);
      layer_prefix = "model.layers.";
      break;
    case Architecture::kQwen2:
    case Architecture::kQwen3:
      layer_rules = kQwenLayerNames, n_layer_rules = std::size(kQwenLayerNames);
      global_rules = kLlamaGlobalNames, n_global_rules = std::size(kLlamaGlobalNames);
      layer_prefix = "model.layers.";
      break;
    case Architecture::kGemma3:
      layer_rules = kGemma3LayerNames, n_layer_rules = std::size(kGemma3LayerNames);
      global_rules = kLlamaGlobalNames, n_global_rules = std::size(kLlamaGlobalNames);
      layer_prefix = "model.layers.";
      break;
    case Architecture::kGpt2:
      layer_rules = kGpt2LayerNames, n_layer_rules = std::size(kGpt2LayerNames);
      global_rules = kGpt2GlobalNames, n_global_rules = std::size(kGpt2GlobalNames);
      layer_prefix = "transformer.h.";
      break;
    case Architecture::kGptNeoX:
      layer_rules = kNeoxLayerNames, n_layer_rules = std::size(kNeoxLayerNames);
      global_rules = kNeoxGlobalNames, n_global_rules = std::size(kNeoxGlobalNames);
      layer_prefix = "gpt_neox.layers.";
      break;
  }
  const size_t dot = name.find_last_of('.');
  if (dot == std::string::npos) return name;
  const std::string stem = name.substr(0, dot), suffix = name.substr(dot);   // suffix ".weight" / ".bias"
  for (size_t i = 0; i < n_global_rules; ++i) {
    if (stem == global_rules[i].gguf) return std::string(global_rules[i].hf) + suffix;
  }
  if (stem.rfind("blk.", 0) == 0) {
    const size_t dot2 = stem.find('.', 4);
    if (dot2 != std::string::npos && dot2 > 4 &&
        std::all_of(stem.begin() + 4, stem.begin() + long(dot2), [](char c) { return c >= '0' && c <= '9'; })) {
      const std::string layer = stem.substr(4, dot2 - 4), part = stem.substr(dot2 + 1);
      for (size_t i = 0; i < n_layer_rules; ++i) {
        if (part == layer_rules[i].gguf) return layer_prefix + layer + "." + layer_rules[i].hf + suffix;
      }
    }
  }
  return name;
}

// Rows of a Q or K projection, per head: llama.cpp stores (head, HD/2, 2), Hugging Face (head, 2, HD/2).
// W = weight or bias rows, each `row_bytes` long (floats or whole GGUF blocks).
void unpermute_rope_rows(void* out, const void* in, int64_t n_heads, int64_t head_dim, size_t row_bytes) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        const auto* src = static_cast<const uint8_t*>(in) + size_t(h * head_dim + i * 2 + j) * row_bytes;
        auto* dst = static_cast<uint8_t*>(out) + size_t(h * head_dim + j * half + i) * row_bytes;
        std::memcpy(dst, src, row_bytes);
      }
    }
  }
}

class ModelFileLoader : public ModelFile {
 public:
  // What ModelFile::open does, less the out-of-memory translation.
  static std::unique_ptr<ModelFile> open_any(const std::string& path);
  void load_hf(const std::string& dir, const std::vector<std::string>& weight_files, const std::string& index_file);
  void load_gguf(const std::string& path);

 private:
  void add_tensor(StoredTensor t);
  void load_hf_tokenizer(const std::string& dir);
  void load_gguf_config(const GgufFile& g, const std::string& arch_name);
  void load_gguf_tokenizer(const GgufFile& g);
  // Dequantises `t` into an owned F32 buffer; returns it (t now points at it).
  float* materialise_f32(StoredTensor& t, std::vector<int64_t> new_shape);
};

void ModelFileLoader::add_tensor(StoredTensor t) {
  QS_CHECK(!index_.count(t.name) && !unsupported_.count(t.name), ErrorCode::kInvalidModel, t.file, ": tensor '",
           t.name, "' appears more than once in the model", kCorrupt);
  index_[t.name] = tensors_.size();
  tensors_.push_back(std::move(t));
}

float* ModelFileLoader::materialise_f32(StoredTensor& t, std::vector<int64_t> new_shape) {
  auto buffer = std::make_shared<std::vector<float>>(size_t(t.numel()));
  convert_to_f32(buffer->data(), t.data, t.dtype, t.numel());
  float* out = buffer->data();
  storage_.push_back(buffer);
  t.dtype = DType::F32;
  t.data = out;
  t.nbytes = buffer->size() * sizeof(float);
  t.shape = std::move(new_shape);
  return out;
}

// ---- Hugging Face directories ------------------------------------------------------------------------------

void ModelFileLoader::load_hf(const std::string& dir, const std::vector<std::string>& weight_files,
                              const std::string& index_file) {
  format_ = "safetensors";
  const std::string config_path = join_path(dir, "config.json");
  QS_CHECK(is_regular_file(config_path), ErrorCode::kInvalidModel, path_,
           ": no config.json beside the weights; a Hugging Face model needs one to say its architecture");
  config_ = read_hf_config(config_path);
  config_.name = base_name(is_directory(path_) ? path_ : dir);

  // index: tensor -> the shard the index says holds it, checked after reading the shards.
  std::map<std::string, std::string> index_map;
  std::vector<std::string> files = weight_files;
  if (!index_file.empty()) {
    const json index = read_json_file(index_file);
    QS_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
             ErrorCode::kInvalidModel, index_file, ": has no \"weight_map\" object", kCorrupt);
    std::set<std::string> shards;
    for (const auto& [name, shard] : index["weight_map"].items()) {
      QS_CHECK(shard.is_string(), ErrorCode::kInvalidModel, index_file, ": tensor '", name,
               "' maps to ", shard.dump(), ", not a file name", kCorrupt);
      const std::string file = shard.get<std::string>();
      QS_CHECK(!file.empty() && file.find('/') == std::string::npos && file != "." && file != "..",
               ErrorCode::kInvalidModel, index_file, ": tensor '", name, "' maps to '", file,
               "', which is not a file name in the model directory", kCorrupt);
      index_map[name] = file;
      shards.insert(file);
    }
    QS_CHECK(!shards.empty(), ErrorCode::kInvalidModel, index_file, ": the weight_map is empty", kCorrupt);
    for (const auto& s : shards) files.push_back(join_path(dir, s));
  }

  std::map<std::string, std::string> tensor_file;   // canonical name -> file, for the index check
  for (const std::string& file : files) {
    QS_CHECK(path_exists(file), index_file.empty() ? ErrorCode::kNotFound : ErrorCode::kInvalidModel, file,
             ": no such file", index_file.empty() ? "" : str(" (", base_name(index_file), " lists it)"));
    SafetensorsFile st = read_safetensors(file);
    storage_.push_back(st.mapping);
    // GPT-2 checkpoints come with and without the "transformer." prefix; GPT2LMHeadModel's names have it.
    auto canonical = [&](const std::string& name) {
      if (config_.arch == Architecture::kGpt2 && name.rfind("transformer.", 0) != 0 && name != "lm_head.weight") {
        return "transformer." + name;
      }
      return name;
    };
    for (auto& [name, why] : st.unsupported) {
      const std::string c = canonical(name);
      QS_CHECK(!index_.count(c) && !unsupported_.count(c), ErrorCode::kInvalidModel, file, ": tensor '", name,
               "' appears more than once in the model", kCorrupt);
      unsupported_[c] = why;
      tensor_file[c] = base_name(file);
    }
    for (StoredTensor& t : st.tensors) {
      t.name = canonical(t.name);
      tensor_file[t.name] = base_name(file);
      add_tensor(std::move(t));
    }
  }
  for (const auto& [name, shard] : index_map) {
    auto it = tensor_file.find(name);
    if (it == tensor_file.end() && config_.arch == Architecture::kGpt2) it = tensor_file.find("transformer." + name);
    QS_CHECK(it != tensor_file.end() && it->second == shard, ErrorCode::kInvalidModel, index_file, ": tensor '",
             name, "' should be in ", shard, " but ",
             it == tensor_file.end() ? std::string("no shard holds it") : str("it is in ", it->second), kCorrupt);
  }
  QS_CHECK(!tensors_.empty(), ErrorCode::kInvalidModel, path_, ": the model has no tensors", kCorrupt);

  load_hf_tokenizer(dir);
}

void ModelFileLoader::load_hf_tokenizer(const std::string& dir) {
  const std::string tokenizer_json = join_path(dir, "tokenizer.json");
  const std::string vocab = join_path(dir, "vocab.json"), merges = join_path(dir, "merges.txt");
  if (is_regular_file(tokenizer_json)) {
    tokenizer_spec_ = read_tokenizer_json(tokenizer_json);
  } else if (is_regular_file(vocab) && is_regular_file(merges)) {
    tokenizer_spec_ = read_vocab_merges(vocab, merges);
  } else {
    QS_FAIL(ErrorCode::kInvalidModel, dir, ": no tokenizer: expected tokenizer.json, or vocab.json and merges.txt");
  }

  // bos/eos: generation_config.json decides what ends generation, then config.json, then tokenizer_config.json.
  int32_t bos = config_.bos_token_id, eos = config_.eos_token_id;
  const std::string tok_config_path = join_path(dir, "tokenizer_config.json");
  if (is_regular_file(tok_config_path)) {
    const json tc = read_json_file(tok_config_path);
    if (tc.is_object()) {
      if (tc.contains("chat_template")) {
        const json& t = tc["chat_template"];
        if (t.is_string()) {
          config_.chat_template = t.get<std::string>();
        } else if (t.is_array()) {   // [{"name": "default", "template": "..."}, ...]
          for (const json& e : t) {
            if (e.is_object() && e.contains("template") && e["template"].is_string() &&
                (config_.chat_template.empty() || e.value("name", "") == "default")) {
              config_.chat_template = e["template"].get<std::string>();
            }
          }
        }
      }
      if (bos < 0 && tc.contains("bos_token")) bos = find_token(tokenizer_spec_, token_content(tc["bos_token"]));
      if (eos < 0 && tc.contains("eos_token")) eos = find_token(tokenizer_spec_, token_content(tc["eos_token"]));
      if (tc.contains("add_bos_token") && tc["add_bos_token"].is_boolean()) {
        tokenizer_spec_.add_bos = tc["add_bos_token"].get<bool>();
      }
    }
  }
  const std::string jinja = join_path(dir, "chat_template.jinja");
  if (config_.chat_template.empty() && is_regular_file(jinja)) config_.chat_template = read_text_file(jinja);

  const std::string gen_config_path = join_path(dir, "generation_config.json");
  if (is_regular_file(gen_config_path)) {
    const json gc = read_json_file(gen_config_path);
    if (gc.is_object()) {
      if (json_token_id(gc, "bos_token_id") >= 0) bos = json_token_id(gc, "bos_token_id");
      if (json_token_id(gc, "eos_token_id") >= 0) eos = json_token_id(gc, "eos_token_id");
    }
  }
  if (bos < 0) bos = tokenizer_spec_.bos_id;
  if (eos < 0) eos = tokenizer_spec_.eos_id;
  const int64_t n_tokens = int64_t(tokenizer_spec_.tokens.size());
  QS_CHECK(bos < n_tokens && eos < n_tokens, ErrorCode::kInvalidModel, dir, ": bos/eos token ids (", bos, ", ", eos,
           ") are outside the tokenizer's ", n_tokens, " tokens");
  config_.bos_token_id = tokenizer_spec_.bos_id = bos;
  config_.eos_token_id = tokenizer_spec_.eos_id = eos;
}

// ---- GGUF --------------------------------------------------------------------------------------------------

void ModelFileLoader::load_gguf_config(const GgufFile& g, const std::string& a) {
  const std::string& file = path_;
  auto required = [&](const std::string& key) {
    QS_CHECK(g.find(key) != nullptr, ErrorCode::kInvalidModel, file, ": metadata '", key, "' is missing", kCorrupt);
    const int64_t v = g.get_int(key, 0);
    QS_CHECK(v > 0 && v < (int64_t(1) << 40), ErrorCode::kInvalidModel, file, ": metadata '", key, "' is ", v,
             ", expected a positive number", kCorrupt);
    return v;
  };
  ModelConfig& c = config_;
  c.name = g.get_string("general.name", "");
  if (c.name.empty()) c.name = base_name(file);
  c.num_layers = required(a + ".block_count");
  c.hidden_size = required(a + ".embedding_length");
  c.intermediate_size = required(a + ".feed_forward_length");
  c.num_heads = required(a + ".attention.head_count");
  c.num_kv_heads = g.find(a + ".attention.head_count_kv") ? required(a + ".attention.head_count_kv") : c.num_heads;
  c.max_positions = required(a + ".context_length");
  QS_CHECK(c.hidden_size % c.num_heads == 0 || g.find(a + ".attention.key_length"), ErrorCode::kInvalidModel, file,
           ": embedding length ", c.hidden_size, " is not divisible by the ", c.num_heads, " heads", kCorrupt);
  c.head_dim = g.find(a + ".attention.key_length") ? required(a + ".attention.key_length") : c.hidden_size / c.num_heads;
  QS_CHECK(c.num_heads % c.num_kv_heads == 0, ErrorCode::kInvalidModel, file, ": ", c.num_heads,
           " heads are not a multiple of the ", c.num_kv_heads, " key/value heads", kCorrupt);
  c.rope_theta = float(g.get_float(a + ".rope.freq_base", 10000.0));
  const std::string scaling = g.get_string(a + ".rope.scaling.type", "none");
  QS_CHECK(scaling == "none" && g.get_float(a + ".rope.scaling.factor", 0.0) <= 1.0, ErrorCode::kUnsupported, file,
           ": RoPE scaling ('", scaling, "') is set; quantserve does not support RoPE scaling");
  switch (c.arch) {
    case Architecture::kGemma3:
      // llama.cpp's Gemma 3: every sixth layer global (rope.freq_base), the rest sliding with base 10000;
      // scores scaled by 1/sqrt(head_dim) (query_pre_attn_scalar = head_dim for the sizes that write no key).
      c.norm_eps = float(g.get_float(a + ".attention.layer_norm_rms_epsilon", 1e-6));
      c.hidden_act = HiddenAct::kGeluTanh;
      c.rotary_dim = c.head_dim;
      c.qk_norm = true;
      c.sliding_window = g.get_int(a + ".attention.sliding_window", 0);
      c.sliding_window_pattern = g.get_int(a + ".attention.sliding_window_pattern", 6);
      c.rope_local_theta = float(g.get_float(a + ".rope.freq_base_swa", 10000.0));
      c.query_pre_attn_scalar = float(c.head_dim);
      QS_CHECK(c.sliding_window >= 0 && c.sliding_window_pattern >= 0, ErrorCode::kInvalidModel, file,
               ": the sliding window ", c.sliding_window, " or its pattern ", c.sliding_window_pattern,
               " is negative", kCorrupt);
      break;
    case Architecture::kQwen2:
    case Architecture::kQwen3:
      c.norm_eps = float(g.get_float(a + ".attention.layer_norm_rms_epsilon", 1e-6));
      c.hidden_act = HiddenAct::kSilu;
      c.rotary_dim = c.head_dim;
      c.qk_norm = c.arch == Architecture::kQwen3;
      break;
    case Architecture::kMistral:
    case Architecture::kLlama:
      c.norm_eps = float(g.get_float(a + ".attention.layer_norm_rms_epsilon", 1e-5));
      c.hidden_act = HiddenAct::kSilu;
      c.rotary_dim = g.get_int(a + ".rope.dimension_count", c.head_dim);
      QS_CHECK(c.rotary_dim == c.head_dim, ErrorCode::kUnsupported, file, ": rope.dimension_count ", c.rotary_dim,
               " differs from the head size ", c.head_dim, "; partial rotary Llama models are not supported");
      break;
    case Architecture::kGpt2:
      c.norm_eps = float(g.get_float(a + ".attention.layer_norm_epsilon", 1e-5));
      c.hidden_act = HiddenAct::kGeluTanh;
      c.rotary_dim = 0;
      c.attention_bias = c.mlp_bias = true;
      break;
    case Architecture::kGptNeoX:
      c.norm_eps = float(g.get_float(a + ".attention.layer_norm_epsilon", 1e-5));
      c.hidden_act = HiddenAct::kGeluErf;
      c.rotary_dim = g.get_int(a + ".rope.dimension_count", c.head_dim / 4);
      QS_CHECK(c.rotary_dim > 0 && c.rotary_dim <= c.head_dim, ErrorCode::kInvalidModel, file,
               ": rope.dimension_count ", c.rotary_dim, " does not fit the head size ", c.head_dim, kCorrupt);
      c.parallel_residual = g.get_bool(a + ".use_parallel_residual", true);
      c.attention_bias = c.mlp_bias = true;
      break;
  }
}

void ModelFileLoader::load_gguf_tokenizer(const GgufFile& g) {
  const std::string& file = path_;
  const GgufValue* model = g.find("tokenizer.ggml.model");
  QS_CHECK(model != nullptr, ErrorCode::kInvalidModel, file,
           ": has no tokenizer (metadata 'tokenizer.ggml.model' is missing)");
  const std::string kind = g.get_string("tokenizer.ggml.model", "");
  QS_CHECK(kind == "gpt2" || kind == "llama", ErrorCode::kUnsupported, file, ": its tokenizer model is '", kind,
           "'; quantserve supports byte-level BPE ('gpt2') and SentencePiece BPE ('llama') tokenizers");
  const bool spm = kind == "llama";
  auto string_array = [&](const char* key, bool required) {
    std::vector<std::string> out;
    const GgufValue* v = g.find(key);
    QS_CHECK(v != nullptr || !required, ErrorCode::kInvalidModel, file, ": metadata '", key, "' is missing", kCorrupt);
    if (v == nullptr) return out;
    QS_CHECK(v->is_array() && v->array_type == GgufValueType::kString, ErrorCode::kInvalidModel, file,
             ": metadata '", key, "' is not an array of strings", kCorrupt);
    return v->strings;
  };
  TokenizerSpec& spec = tokenizer_spec_;
  spec.tokens = string_array("tokenizer.ggml.tokens", true);
  QS_CHECK(!spec.tokens.empty(), ErrorCode::kInvalidModel, file, ": the tokenizer has no tokens", kCorrupt);
  const int64_t n_tokens = int64_t(spec.tokens.size());
  if (spm) {
    // SentencePiece: merges are implied by the scores; control tokens are special, user-defined ones ("\n",
    // "<start_of_image>") are matched whole in any text, as llama.cpp and transformers' GGUF converter do.
    spec.model = "spm";
    const GgufValue* scores = g.find("tokenizer.ggml.scores");
    QS_CHECK(scores != nullptr && scores->is_array() && int64_t(scores->floats.size()) == n_tokens &&
                 int64_t(scores->array_size()) == n_tokens,
             ErrorCode::kInvalidModel, file, ": a SentencePiece tokenizer needs 'tokenizer.ggml.scores', one float per "
             "token (", n_tokens, ")", kCorrupt);
    spec.scores.assign(scores->floats.begin(), scores->floats.end());
    spec.add_space_prefix = g.get_bool("tokenizer.ggml.add_space_prefix", true);
  }
  for (const std::string& m : string_array("tokenizer.ggml.merges", !spm)) {
    const size_t space = m.find(' ');
    QS_CHECK(space != std::string::npos && space > 0 && space + 1 < m.size(), ErrorCode::kInvalidModel, file,
             ": tokenizer merge '", m, "' is not two tokens separated by a space", kCorrupt);
    spec.merges.emplace_back(m.substr(0, space), m.substr(space + 1));
  }
  if (const GgufValue* types = g.find("tokenizer.ggml.token_type")) {
    QS_CHECK(types->is_array() && int64_t(types->ints.size()) == n_tokens && int64_t(types->array_size()) == n_tokens,
             ErrorCode::kInvalidModel, file, ": metadata 'tokenizer.ggml.token_type' is not ", n_tokens,
             " integers (one per token)", kCorrupt);
    for (int64_t i = 0; i < n_tokens; ++i) {
      const int64_t t = types->ints[size_t(i)];
      if (t == 3 || (t == 4 && !spm)) spec.special_ids.push_back(int32_t(i));   // control, user-defined
      if (t == 4 && spm) spec.added_ids.push_back(int32_t(i));
    }
  }
  auto token_id = [&](const char* key) -> int32_t {
    const int64_t id = g.get_int(key, -1);
    QS_CHECK(id >= -1 && id < n_tokens, ErrorCode::kInvalidModel, file, ": metadata '", key, "' is ", id,
             ", outside the ", n_tokens, " tokens", kCorrupt);
    return int32_t(id);
  };
  spec.bos_id = token_id("tokenizer.ggml.bos_token_id");
  spec.eos_id = token_id("tokenizer.ggml.eos_token_id");
  spec.add_bos = g.get_bool("tokenizer.ggml.add_bos_token", false);
  // A file without the key predates it (llama.cpp's converters of then wrote GPT-2-style vocabularies). A name
  // whose regex is not implemented is refused: splitting with another would tokenize wrongly without a word.
  const std::string pre = g.get_string("tokenizer.ggml.pre", "gpt-2");
  QS_CHECK(spm || set_gguf_pretokenizer(pre, spec), ErrorCode::kUnsupported, file, ": its pre-tokenizer '", pre,
           "' (metadata 'tokenizer.ggml.pre') is not implemented; implemented: ", gguf_pretokenizer_names());
  config_.bos_token_id = spec.bos_id;
  config_.eos_token_id = spec.eos_id;
  config_.chat_template = g.get_string("tokenizer.chat_template", "");
  if (config_.arch == Architecture::kGemma3) {
    // Gemma's turns end with <end_of_turn>, which stops generation as <eos> does (its generation_config lists
    // both); files without a template (llama.cpp writes none for some) get Gemma's turn format.
    if (const int32_t end = find_token(spec, "<end_of_turn>"); end >= 0) config_.eos_token_id = end;
    if (config_.chat_template.empty()) {
      config_.chat_template = "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
                              "{{ m['content'] }}<end_of_turn>\n{% endfor %}<start_of_turn>model\n";
    }
  }
  validate_tokenizer_spec(spec, file);
}

void ModelFileLoader::load_gguf(const std::string& path) {
  format_ = "gguf";
  GgufFile g = read_gguf(path);
  storage_.push_back(g.mapping);

  QS_CHECK(g.find("general.architecture") != nullptr, ErrorCode::kInvalidModel, path,
           ": metadata 'general.architecture' is missing", kCorrupt);
  const std::string arch = g.get_string("general.architecture", "");
  if (arch == "llama") {
    config_.arch = Architecture::kLlama;
  } else if (arch == "gpt2") {
    config_.arch = Architecture::kGpt2;
  } else if (arch == "gptneox") {
    config_.arch = Architecture::kGptNeoX;
  } else if (arch == "qwen2") {
    config_.arch = Architecture::kQwen2;
  } else if (arch == "qwen3") {
    config_.arch = Architecture::kQwen3;
  } else if (arch == "gemma3") {
    config_.arch = Architecture::kGemma3;
  } else {
    QS_FAIL(ErrorCode::kUnsupported, path, ": architecture '", arch,
            "' is not supported (supported: llama, gpt2, gptneox, qwen2, qwen3, gemma3)");
  }
  load_gguf_config(g, arch);
  const ModelConfig& c = config_;
  for (const StoredTensor& t : g.tensors) {
    QS_CHECK(t.name != "rope_freqs.weight", ErrorCode::kUnsupported, path,
             ": tensor 'rope_freqs.weight' means RoPE frequency scaling, which quantserve does not support");
  }

  bool has_output = false;
  for (StoredTensor t : g.tensors) {
    const std::string gguf_name = t.name;
    t.name = hf_name_for_gguf(c.arch, gguf_name);
    if (t.name == "lm_head.weight" || t.name == "embed_out.weight") has_output = true;
    auto is = [&](const char* part) {
      return gguf_name.size() > std::strlen(part) && gguf_name.rfind("blk.", 0) == 0 &&
             (ends_with(gguf_name, str(".", part, ".weight")) || ends_with(gguf_name, str(".", part, ".bias")));
    };
    const bool is_bias = ends_with(gguf_name, ".bias");
    const int64_t rows = t.shape.empty() ? 0 : t.shape[0];
    const int64_t cols = t.shape.size() == 2 ? t.shape[1] : 1;
    const std::string where = str(path, ": tensor '", gguf_name, "' (", t.name, ")");
    if (c.arch == Architecture::kLlama && (is("attn_q") || is("attn_k"))) {
      // llama.cpp's converter interleaved each head's rows for its RoPE; the engine rotates halves, as HF does.
      const int64_t heads = is("attn_q") ? c.num_heads : c.num_kv_heads;
      QS_CHECK(t.shape.size() == (is_bias ? 1u : 2u) && rows == heads * c.head_dim && c.head_dim % 2 == 0,
               ErrorCode::kInvalidModel, where, " has shape ", shape_string(t.shape), ", expected ", heads * c.head_dim,
               " rows (", heads, " heads of ", c.head_dim, ")", kCorrupt);
      if (!is_bias && is_gguf_block_type(t.dtype)) {
        // Rows are whole blocks: move them as they are, so a 4-bit load keeps the file's blocks (no rounding).
        auto buffer = std::make_shared<std::vector<uint8_t>>(t.nbytes);
        unpermute_rope_rows(buffer->data(), t.data, heads, c.head_dim, dtype_bytes(t.dtype, cols));
        storage_.push_back(buffer);
        t.data = buffer->data();
      } else {
        std::vector<float> permuted(static_cast<size_t>(t.numel()));
        convert_to_f32(permuted.data(), t.data, t.dtype, t.numel());
        float* out = materialise_f32(t, t.shape);
        unpermute_rope_rows(out, permuted.data(), heads, c.head_dim, size_t(cols) * sizeof(float));
      }
    } else if (c.arch == Architecture::kGpt2 && !is_bias &&
               (is("attn_qkv") || is("attn_output") || is("ffn_up") || is("ffn_down"))) {
      // llama.cpp transposed GPT-2's Conv1D weights to [out, in]; HF keeps them [in, out].
      QS_CHECK(t.shape.size() == 2, ErrorCode::kInvalidModel, where, " has shape ", shape_string(t.shape),
               ", expected a matrix", kCorrupt);
      std::vector<float> linear(static_cast<size_t>(t.numel()));
      convert_to_f32(linear.data(), t.data, t.dtype, t.numel());
      float* out = materialise_f32(t, {cols, rows});
      for (int64_t o = 0; o < rows; ++o) {
        for (int64_t i = 0; i < cols; ++i) out[i * rows + o] = linear[size_t(o * cols + i)];
      }
    } else if (c.arch == Architecture::kGemma3 && ends_with(gguf_name, "norm.weight")) {
      // llama.cpp's converter stored Gemma's norm weights as 1 + w; the loader gives HF's w (as transformers'
      // GGUF reader does) and the model adds the one back.
      std::vector<float> shifted(static_cast<size_t>(t.numel()));
      convert_to_f32(shifted.data(), t.data, t.dtype, t.numel());
      float* out = materialise_f32(t, t.shape);
      for (size_t i = 0; i < shifted.size(); ++i) out[i] = shifted[i] - 1.0f;
    } else if (c.arch == Architecture::kGptNeoX && is("attn_qkv")) {
      // llama.cpp's converter regrouped NeoX's fused QKV rows (head, 3, HD) as (3, head, HD); put them back.
      const int64_t C = c.num_heads * c.head_dim;
      QS_CHECK(t.shape.size() == (is_bias ? 1u : 2u) && rows == 3 * C, ErrorCode::kInvalidModel, where,
               " has shape ", shape_string(t.shape), ", expected ", 3 * C, " rows", kCorrupt);
      std::vector<float> grouped(static_cast<size_t>(t.numel()));
      convert_to_f32(grouped.data(), t.data, t.dtype, t.numel());
      float* out = materialise_f32(t, t.shape);
      for (int64_t p = 0; p < 3; ++p) {
        for (int64_t h = 0; h < c.num_heads; ++h) {
          std::memcpy(out + (h * 3 * c.head_dim + p * c.head_dim) * cols,
                      grouped.data() + (p * C + h * c.head_dim) * cols,
                      size_t(c.head_dim * cols) * sizeof(float));
        }
      }
    }
    add_tensor(std::move(t));
  }
  config_.tie_word_embeddings = !has_output;
  for (const char* emb : {"model.embed_tokens.weight", "transformer.wte.weight", "gpt_neox.embed_in.weight"}) {
    if (const StoredTensor* e = find(emb)) {
      QS_CHECK(e->shape.size() == 2 && e->shape[1] == c.hidden_size, ErrorCode::kInvalidModel, path,
               ": the token embedding has shape ", shape_string(e->shape), ", expected [vocab, ", c.hidden_size, "]",
               kCorrupt);
      config_.vocab_size = e->shape[0];
    }
  }
  QS_CHECK(config_.vocab_size > 0, ErrorCode::kInvalidModel, path, ": tensor 'token_embd.weight' is missing",
           kCorrupt);
  if (c.arch == Architecture::kQwen2) config_.attention_bias = true;
  if (config_.attention_bias == false && c.arch == Architecture::kLlama) {
    config_.attention_bias = find("model.layers.0.self_attn.q_proj.bias") != nullptr;
    config_.mlp_bias = find("model.layers.0.mlp.up_proj.bias") != nullptr;
  }
  load_gguf_tokenizer(g);
  QS_CHECK(int64_t(tokenizer_spec_.tokens.size()) <= config_.vocab_size, ErrorCode::kInvalidModel, path,
           ": the tokenizer has ", tokenizer_spec_.tokens.size(), " tokens but the embedding only ",
           config_.vocab_size, " rows", kCorrupt);
}

}  // namespace

// ---- ModelFile ---------------------------------------------------------------------------------------------

int64_t StoredTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::unique_ptr<ModelFile> ModelFile::open(const std::string& path) {
  QS_CHECK(!path.empty(), ErrorCode::kNotFound, "no model path given");
  QS_CHECK(path_exists(path), ErrorCode::kNotFound, path, ": no such file or directory");
  try {
    return ModelFileLoader::open_any(path);
  } catch (const std::bad_alloc&) {
    QS_FAIL(ErrorCode::kResourceExhausted, path, ": out of memory while loading the model");
  }
}

std::unique_ptr<ModelFile> ModelFileLoader::open_any(const std::string& path) {
  auto model = std::make_unique<ModelFileLoader>();
  model->path_ = path;
  if (is_directory(path)) {
    const std::string index = join_path(path, "model.safetensors.index.json");
    const std::string single = join_path(path, "model.safetensors");
    if (is_regular_file(index)) {
      model->load_hf(path, {}, index);
    } else if (is_regular_file(single)) {
      model->load_hf(path, {single}, "");
    } else {
      QS_CHECK(!is_regular_file(join_path(path, "pytorch_model.bin")), ErrorCode::kUnsupported, path,
               ": has PyTorch .bin weights only; quantserve reads safetensors (convert the model, or pass a .gguf)");
      QS_FAIL(ErrorCode::kInvalidModel, path, ": is not a model directory: it has no model.safetensors or "
              "model.safetensors.index.json", is_regular_file(join_path(path, "config.json")) ? "" : " and no config.json");
    }
    return model;
  }
  const std::string head = file_prefix(path, 16);
  if (head.size() >= 4 && head.compare(0, 4, "GGUF") == 0) {
    model->load_gguf(path);
  } else if (ends_with(path, ".gguf")) {
    QS_FAIL(ErrorCode::kInvalidModel, path, ": not a GGUF file (the first 4 bytes are not the magic 'GGUF')");
  } else if (ends_with(path, ".safetensors.index.json")) {
    model->load_hf(parent_dir(path), {}, path);
  } else if (ends_with(path, ".safetensors") || (head.size() >= 9 && head[8] == '{')) {
    model->load_hf(parent_dir(path), {path}, "");
  } else {
    QS_FAIL(ErrorCode::kInvalidModel, path,
            ": is not a model: neither a GGUF file, a safetensors file, nor a Hugging Face model directory");
  }
  return model;
}

const StoredTensor* ModelFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const StoredTensor& ModelFile::get(const std::string& name, const std::vector<int64_t>& shape) const {
  const StoredTensor* t = find(name);
  if (t == nullptr) {
    auto why = unsupported_.find(name);
    QS_CHECK(why == unsupported_.end(), ErrorCode::kUnsupported, path_, ": ", why->second);
    QS_FAIL(ErrorCode::kInvalidModel, path_, ": tensor '", name, "' is missing (expected shape ", shape_string(shape),
            "); the model is incomplete or not a ", architecture_label(config_.arch), " model");
  }
  QS_CHECK(t->shape == shape, ErrorCode::kInvalidModel, t->file, ": tensor '", name, "' has shape ",
           shape_string(t->shape), ", expected ", shape_string(shape), kCorrupt);
  return *t;
}

std::vector<float> ModelFile::get_f32(const std::string& name, const std::vector<int64_t>& shape) const {
  const StoredTensor& t = get(name, shape);
  std::vector<float> out(static_cast<size_t>(t.numel()));
  convert_to_f32(out.data(), t.data, t.dtype, t.numel());
  return out;
}

}  // namespace qs
