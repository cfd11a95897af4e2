// Architecture hyper-parameters, read from config.json or GGUF metadata, shared by loaders and models.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace qs {

enum class Architecture { kGpt2, kGptNeoX, kLlama, kQwen2, kQwen3, kMistral, kGemma3 };
const char* architecture_name(Architecture a);  // "gpt2", "gpt_neox", "llama", "qwen2", "qwen3", "mistral", "gemma3"

enum class HiddenAct { kGeluTanh, kGeluErf, kSilu, kRelu };

// B = batch, T = tokens, C = hidden, NH = heads, NKV = key/value heads, HD = head dim, V = vocab
struct ModelConfig {
  Architecture arch = Architecture::kGpt2;
  std::string name;                 // human name (general.name, or the directory name)
  int64_t vocab_size = 0;           // V (rows of the embedding table)
  int64_t hidden_size = 0;          // C
  int64_t num_layers = 0;
  int64_t num_heads = 0;            // NH
  int64_t num_kv_heads = 0;         // NKV (== NH without GQA)
  int64_t head_dim = 0;             // HD (C / NH unless the config says otherwise)
  int64_t intermediate_size = 0;    // MLP width (4C for GPT-2 when n_inner is null)
  int64_t max_positions = 0;        // context length the model was trained for
  float norm_eps = 1e-5f;
  HiddenAct hidden_act = HiddenAct::kGeluTanh;
  // Rotary embeddings (NeoX, Llama): rotate_half convention, as Hugging Face applies it.
  float rope_theta = 10000.0f;
  int64_t rotary_dim = 0;           // NeoX rotary_pct * HD; Llama HD; 0 for GPT-2
  bool parallel_residual = false;   // NeoX use_parallel_residual
  bool tie_word_embeddings = false;
  bool attention_bias = false;      // Llama q/k/v/o biases (false for SmolLM2/TinyLlama)
  bool mlp_bias = false;            // Llama mlp biases
  bool qk_norm = false;             // Qwen3, Gemma 3: RMSNorm over each q and k head (HD) before RoPE
  // Sliding-window attention (Mistral, Gemma 3): a token sees the `sliding_window` latest positions, itself
  // included; 0 = no window. With sliding_window_pattern P > 0 (Gemma 3: 6) only layers l with (l + 1) % P != 0
  // slide, the others are global and use rope_theta, the sliding ones rope_local_theta.
  // A config's layer_types list ("sliding_attention" / "full_attention"), when it has one, decides instead.
  int64_t sliding_window = 0;
  int64_t sliding_window_pattern = 0;
  std::vector<bool> sliding_layers;
  float rope_local_theta = 10000.0f;
  float query_pre_attn_scalar = 0;  // Gemma 3: scores are scaled by 1/sqrt(this); 0 = head_dim
  bool layer_slides(int64_t layer) const {
    if (sliding_window <= 0) return false;
    if (!sliding_layers.empty()) return layer < int64_t(sliding_layers.size()) && sliding_layers[size_t(layer)];
    return sliding_window_pattern <= 0 || (layer + 1) % sliding_window_pattern != 0;
  }
  int32_t bos_token_id = -1;
  int32_t eos_token_id = -1;
  std::string chat_template;        // Jinja text from tokenizer_config.json or GGUF; empty when none
};

}  // namespace qs
