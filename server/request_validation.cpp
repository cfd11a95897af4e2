// GenerateRequest validation (see request_validation.h).
#include "server/request_validation.h"

#include <algorithm>
#include <cmath>

#include "engine/json_schema.h"
#include "server/status.h"

namespace qs::server {

namespace v1 = quantserve::v1;

namespace {
grpc::Status invalid(const std::string& message) { return {grpc::StatusCode::INVALID_ARGUMENT, message}; }
}  // namespace

grpc::Status validate_generate_request(const v1::GenerateRequest& request, const ServerLimits& limits,
                                       int64_t vocab_size, bool json_space_after_separators,
                                       ValidatedGeneration& out) {
  if (!request.messages().empty()) {
    if (!request.prompt().empty() || !request.prompt_token_ids().empty() || !request.system_prompt().empty()) {
      return invalid("messages carry the whole conversation: leave prompt, prompt_token_ids and system_prompt empty");
    }
    int64_t bytes = 0;
    for (const v1::ChatMessage& m : request.messages()) {
      if (m.role() != "system" && m.role() != "user" && m.role() != "assistant") {
        return invalid("messages: role '" + printable(m.role(), 32) + "' is not one of: system, user, assistant");
      }
      bytes += int64_t(m.content().size());
    }
    if (bytes > limits.max_prompt_tokens * 64) {
      return invalid("the messages are " + std::to_string(bytes) + " bytes, far over the server's limit of " +
                     std::to_string(limits.max_prompt_tokens) + " tokens (--max-prompt-tokens)");
    }
  } else if (request.prompt().empty() && request.prompt_token_ids().empty()) {
    return invalid("empty prompt: set prompt (text), prompt_token_ids or messages");
  }
  if (!request.prompt().empty() && !request.prompt_token_ids().empty()) {
    return invalid("set either prompt or prompt_token_ids, not both");
  }
  if (!request.prompt_token_ids().empty()) {
    if (request.chat()) return invalid("chat applies to a text prompt, not to prompt_token_ids");
    if (request.prompt_token_ids_size() > limits.max_prompt_tokens) {
      return invalid("the prompt has " + std::to_string(request.prompt_token_ids_size()) +
                     " tokens, over the server's limit of " + std::to_string(limits.max_prompt_tokens) +
                     " (--max-prompt-tokens)");
    }
    for (int32_t id : request.prompt_token_ids()) {
      if (id < 0 || id >= vocab_size) {
        return invalid("prompt token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                       std::to_string(vocab_size) + ")");
      }
    }
  }
  // A text prompt's token count is only known after encoding (on the engine thread); bytes bound it cheaply.
  if (int64_t(request.prompt().size() + request.system_prompt().size()) > limits.max_prompt_tokens * 64) {
    return invalid("the prompt is " + std::to_string(request.prompt().size()) +
                   " bytes, far over the server's limit of " + std::to_string(limits.max_prompt_tokens) +
                   " tokens (--max-prompt-tokens)");
  }

  SamplingParams params;
  if (request.max_new_tokens() < 0) return invalid("max_new_tokens must be >= 0 (0 = the server's default)");
  if (request.max_new_tokens() > limits.max_new_tokens) {
    return invalid("max_new_tokens " + std::to_string(request.max_new_tokens()) + " is over the server's limit of " +
                   std::to_string(limits.max_new_tokens) + " (--max-new-tokens)");
  }
  params.max_new_tokens = request.max_new_tokens() > 0 ? request.max_new_tokens()
                                                       : int32_t(std::min<int64_t>(128, limits.max_new_tokens));
  if (request.has_temperature()) {
    if (!(request.temperature() >= 0) || !std::isfinite(request.temperature())) {
      return invalid("temperature must be >= 0 (0 = greedy), got " + std::to_string(request.temperature()));
    }
    params.temperature = request.temperature();
  }
  if (request.top_k() < 0) return invalid("top_k must be >= 0 (0 = off), got " + std::to_string(request.top_k()));
  params.top_k = request.top_k();
  if (request.has_top_p()) {
    if (!(request.top_p() > 0 && request.top_p() <= 1)) {
      return invalid("top_p must be in (0, 1], got " + std::to_string(request.top_p()));
    }
    params.top_p = request.top_p();
  }
  if (request.has_repetition_penalty()) {
    // Bounded: a penalty of 1e-38 turns logits into inf and logprobs into NaN.
    if (!(request.repetition_penalty() >= 0.01f && request.repetition_penalty() <= 100.0f)) {
      return invalid("repetition_penalty must be in [0.01, 100] (1 = off), got " +
                     std::to_string(request.repetition_penalty()));
    }
    params.repetition_penalty = request.repetition_penalty();
  }
  if (request.logprobs() < 0 || request.logprobs() > 20) {
    return invalid("logprobs must be in [0, 20], got " + std::to_string(request.logprobs()));
  }
  params.logprobs = request.logprobs();
  if (request.has_presence_penalty()) {
    if (!(std::fabs(request.presence_penalty()) <= 2)) {
      return invalid("presence_penalty must be in [-2, 2], got " + std::to_string(request.presence_penalty()));
    }
    params.presence_penalty = request.presence_penalty();
  }
  if (request.has_frequency_penalty()) {
    if (!(std::fabs(request.frequency_penalty()) <= 2)) {
      return invalid("frequency_penalty must be in [-2, 2], got " + std::to_string(request.frequency_penalty()));
    }
    params.frequency_penalty = request.frequency_penalty();
  }
  if (request.has_seed()) params.seed = request.seed();
  // Bounded: every stop sequence is searched for after every token.
  if (request.stop_size() > 16) return invalid("at most 16 stop sequences, got " + std::to_string(request.stop_size()));
  for (const std::string& s : request.stop()) {
    if (s.empty() || s.size() > 256) return invalid("each stop sequence must be 1 to 256 bytes");
    params.stop.push_back(s);
  }
  for (int32_t id : request.stop_token_ids()) {
    if (id < 0 || id >= vocab_size) {
      return invalid("stop token id " + std::to_string(id) + " is outside the vocabulary");
    }
    params.stop_token_ids.push_back(id);
  }
  params.ignore_eos = request.ignore_eos();
  if (!request.json_schema().empty()) {
    // Compiled here, on the RPC thread: a bad schema is refused before it queues, and the engine thread only
    // walks the grammar (Engine::submit refuses it next to ignore_eos, stop or stop_token_ids).
    try {
      JsonSchemaOptions schema_options;
      schema_options.space_after_separators = json_space_after_separators;
      params.grammar = compile_json_schema(request.json_schema(), schema_options);
    } catch (const Error& e) {
      // The compiler's message quotes the schema's keywords and values: echoed bounded and printable (the
      // request_validation fuzzer found a keyword with a DEL byte reaching the status and the log line raw).
      return invalid(printable(e.what(), 512));
    }
  }

  out.prompt = request.prompt();
  out.prompt_ids.assign(request.prompt_token_ids().begin(), request.prompt_token_ids().end());
  out.chat = request.chat();
  out.system_prompt = request.system_prompt();
  for (const v1::ChatMessage& m : request.messages()) out.messages.push_back({m.role(), m.content()});
  out.params = std::move(params);
  return grpc::Status::OK;
}

}  // namespace qs::server
