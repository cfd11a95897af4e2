// What request_validation_fuzzer and openai_request_fuzzer hold every validated GenerateRequest to: small limits
// (so the fuzzer reaches them), and the properties of validate_generate_request's two outcomes.
#pragma once
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "quantserve/v1/inference.pb.h"
#include "server/config.h"
#include "server/request_validation.h"

namespace qs::fuzz {

constexpr int64_t kVocabSize = 1000;

inline server::ServerLimits fuzz_limits() {
  server::ServerLimits limits;
  limits.max_prompt_tokens = 32;   // text prompts: 32 * 64 bytes
  limits.max_new_tokens = 100;
  return limits;
}

inline void property(bool holds, const char* what, const std::string& detail = "") {
  if (holds) return;
  std::fprintf(stderr, "property failed: %s %s\n", what, detail.substr(0, 300).c_str());
  std::abort();
}

// A message a caller may see in a status and the log: bounded and without control characters.
inline bool printable_message(const std::string& message) {
  if (message.empty() || message.size() > 1024) return false;
  for (unsigned char c : message) {
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

inline void check_validation(const quantserve::v1::GenerateRequest& request, bool json_space_after_separators) {
  const server::ServerLimits limits = fuzz_limits();
  server::ValidatedGeneration out;
  const grpc::Status status =
      server::validate_generate_request(request, limits, kVocabSize, json_space_after_separators, out);
  if (!status.ok()) {
    property(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT, "a refusal is INVALID_ARGUMENT",
             status.error_message());
    property(printable_message(status.error_message()), "a refusal's message is short and printable",
             status.error_message());
    return;
  }
  const SamplingParams& p = out.params;
  property(std::isfinite(p.temperature) && p.temperature >= 0, "temperature finite and >= 0");
  property(p.top_p > 0 && p.top_p <= 1, "top_p in (0, 1]");
  property(p.top_k >= 0, "top_k >= 0");
  property(p.repetition_penalty >= 0.01f && p.repetition_penalty <= 100, "repetition_penalty in [0.01, 100]");
  property(std::fabs(p.presence_penalty) <= 2 && std::fabs(p.frequency_penalty) <= 2, "penalties in [-2, 2]");
  property(p.logprobs >= 0 && p.logprobs <= 20, "logprobs in [0, 20]");
  property(p.max_new_tokens >= 1 && p.max_new_tokens <= limits.max_new_tokens, "max_new_tokens in [1, limit]");
  property(p.stop.size() <= 16, "at most 16 stops");
  for (const std::string& s : p.stop) property(!s.empty() && s.size() <= 256, "a stop is 1 to 256 bytes");
  for (int32_t id : p.stop_token_ids) property(id >= 0 && id < kVocabSize, "stop token ids in the vocabulary");
  property(int64_t(out.prompt_ids.size()) <= limits.max_prompt_tokens, "prompt ids within --max-prompt-tokens");
  for (int32_t id : out.prompt_ids) property(id >= 0 && id < kVocabSize, "prompt ids in the vocabulary");
  int64_t text_bytes = int64_t(out.prompt.size() + out.system_prompt.size());
  for (const ChatMessage& m : out.messages) {
    property(m.role == "system" || m.role == "user" || m.role == "assistant", "known roles only");
    text_bytes += int64_t(m.content.size());
  }
  property(text_bytes <= limits.max_prompt_tokens * 64, "prompt bytes bounded");
  property(!out.prompt.empty() || !out.prompt_ids.empty() || !out.messages.empty(), "something to generate from");
  property(out.prompt.empty() || out.prompt_ids.empty(), "not both a text prompt and token ids");
  property(out.messages.empty() || (out.prompt.empty() && out.prompt_ids.empty() && out.system_prompt.empty()),
           "messages carry the whole conversation");
  property(request.json_schema().empty() == (p.grammar == nullptr), "a schema compiles into a grammar");
}

}  // namespace qs::fuzz
