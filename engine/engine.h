// The generation engine: one model on one backend, a paged KV cache, and an iteration-level scheduler.
// Not thread-safe: one thread owns an Engine and calls step(); other threads talk to it through the server.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/model.h"
#include "engine/tokenizer.h"

namespace qs {

struct JsonGrammar;   // engine/grammar.h

struct SamplingParams {
  float temperature = 1.0f;             // 0 = greedy
  int32_t top_k = 0;                    // 0 = off
  float top_p = 1.0f;                   // 1 = off
  float repetition_penalty = 1.0f;      // 1 = off (CTRL-style: divide positive logits, multiply negative)
  std::optional<uint64_t> seed;         // same seed + same request = same tokens
  int32_t max_new_tokens = 128;
  std::vector<std::string> stop;        // stop sequences (not included in the output)
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int32_t logprobs = 0;                 // top-N log-probabilities per generated token (0 = none)
  // OpenAI's penalties, over the tokens generated so far: logit -= frequency * count + presence * (count > 0).
  float presence_penalty = 0;           // [-2, 2], 0 = off
  float frequency_penalty = 0;          // [-2, 2], 0 = off
  // Constrained decoding (engine/json_schema.h compiles one): only tokens that keep the output a valid prefix of
  // a document are sampled, EOS only once it is complete. Not with ignore_eos, stop or stop_token_ids.
  std::shared_ptr<const JsonGrammar> grammar;
};

// One turn of a conversation, for chat templates.
struct ChatMessage {
  std::string role;                     // "system", "user" or "assistant"
  std::string content;
};

enum class FinishReason { kNone, kLength, kEos, kStop, kCancelled, kError };
const char* finish_reason_name(FinishReason r);   // "none", "length", "eos", "stop", "cancelled", "error"

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
};

// What the engine reports for a request after each step that produced something for it.
struct GenerationEvent {
  uint64_t request_id = 0;
  std::vector<int32_t> token_ids;            // new tokens this step (usually one)
  std::string text;                          // new text, whole UTF-8 characters, stop sequences removed
  std::vector<TokenLogprob> logprobs;        // chosen token's logprob, one per new token (if asked)
  std::vector<std::vector<TokenLogprob>> top_logprobs;  // top-N per new token (if asked)
  FinishReason finish = FinishReason::kNone; // set on the request's last event
  std::string error;                         // with kError
  int32_t prompt_tokens = 0;
  int32_t generated_tokens = 0;              // so far
  double queue_seconds = 0;                  // submit -> first scheduled
  double first_token_seconds = 0;            // submit -> first token (0 until then)
  double total_seconds = 0;                  // submit -> this event
};
using EventCallback = std::function<void(const GenerationEvent&)>;

struct EngineOptions {
  int64_t max_batch_size = 32;          // running sequences per step
  int64_t max_batch_tokens = 512;       // tokens per forward pass (prefill chunks + decodes)
  int64_t prefill_chunk = 256;          // longest slice of one prompt in one pass
  int64_t kv_block_size = 16;
  int64_t kv_cache_tokens = 0;          // capacity in tokens; 0 = kv_cache_bytes, or the default
  int64_t kv_cache_bytes = 0;           // capacity as a byte budget (K and V of every layer); 0 = kv_cache_tokens,
                                        // or the default: max_batch_size * context length (capped, kv_cache.h)
  std::optional<DType> kv_cache_dtype;  // storage; none = the backend's default (fp16 on the CPU, fp32 on CUDA)
  int64_t max_context = 0;              // prompt + new tokens; 0 = the model's max_positions
  bool prefix_cache = true;             // reuse the KV blocks of earlier prompts' common prefixes (kv_cache.h)
  // A model with global and sliding layers (Gemma 3) on a backend with layer groups (the CPU): a KV pool and
  // block table for each kind, the sliding one a ring of window + chunk blocks per sequence (WindowBlocks);
  // a prefix hit then shares the global blocks up to it and the sliding ones of its last window. false: one
  // table for all layers, as for every other model.
  bool kv_layer_groups = true;
};

struct EngineStats {
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_total = 0;
  int64_t kv_cache_bytes = 0;           // capacity (the budget)
  int64_t kv_cache_committed_bytes = 0; // backed by memory now (committed as blocks are first written)
  int64_t kv_cache_used_bytes = 0;      // the blocks sequences hold
  int64_t kv_blocks_cached = 0;         // full blocks no sequence holds, kept for prefix reuse (evictable)
  // With KV layer groups the kv_blocks_* above are the global layers' pool; these the sliding layers' (0 without).
  int64_t kv_window_blocks_used = 0;     // the rings of running sequences (WindowBlocks), filled or not
  int64_t kv_window_blocks_total = 0;
  int64_t kv_window_blocks_cached = 0;   // sliding blocks no sequence holds, kept for prefix reuse
  int64_t prefix_cache_queried_tokens = 0;  // prompt tokens of admitted requests looked up in the prefix cache
  int64_t prefix_cache_hit_tokens = 0;      // of those, found cached (not computed again)
  int64_t last_batch_size = 0;          // sequences in the last forward pass
  int64_t last_batch_tokens = 0;
  int64_t steps = 0;
};

class Engine {
 public:
  Engine(std::unique_ptr<Model> model, std::unique_ptr<Tokenizer> tokenizer, const EngineOptions& options);
  ~Engine();

  const Model& model() const;
  const Tokenizer& tokenizer() const;
  const EngineOptions& options() const;
  // One sentence for the load log when the KV cache is not one pool and table for all layers (KV layer groups:
  // the pools, the ring a sequence holds, and what is turned off for it); empty otherwise.
  const std::string& kv_layout() const;

  // Queues a request; events arrive through `on_event` from inside step(). Throws qs::Error
  // kInvalidArgument (empty prompt, bad sampling values, prompt + max_new_tokens over the context) or
  // kResourceExhausted (could never fit in the KV cache). Returns the request id.
  uint64_t submit(std::vector<int32_t> prompt_ids, const SamplingParams& params, EventCallback on_event);
  // Finishes a request with kCancelled at the next step (or now, if it is still waiting); frees its blocks.
  void cancel(uint64_t request_id);
  bool has_work() const;
  // One iteration: admit waiting requests whose KV blocks fit, run one batched forward pass over prefill
  // chunks and decode tokens, sample, emit events, retire finished requests.
  void step();
  EngineStats stats() const;

  // Applies the model's chat template to one user message (ChatML for SmolLM2; plain text when none).
  std::string apply_chat_template(const std::string& user_message, const std::string& system = "") const;
  // The same for a whole conversation, ending with the assistant's turn opened (the generation prompt).
  // Throws kInvalidArgument for a role other than system, user or assistant.
  std::string apply_chat_template(const std::vector<ChatMessage>& messages) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The chat template `tmpl` (the model's Jinja text, recognised by its family's markers) rendered for `messages`;
// what Engine::apply_chat_template uses. Throws kInvalidArgument for an unknown role.
std::string render_chat_template(const std::string& tmpl, const std::vector<ChatMessage>& messages);

// Convenience for CLIs and tests: runs one prompt to completion and returns the generated text and ids.
struct GenerateResult {
  std::string text;
  std::vector<int32_t> token_ids;
  FinishReason finish = FinishReason::kNone;
  int32_t prompt_tokens = 0;
};
GenerateResult generate_once(Engine& engine, const std::vector<int32_t>& prompt_ids, const SamplingParams& params);

}  // namespace qs
