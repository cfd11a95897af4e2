// The OpenAI-compatible API's request bodies: JSON with OpenAI's names and ranges becomes a
// quantserve.v1.GenerateRequest (which InferenceService::prepare then checks, as for gRPC). Free of HTTP and of the
// engine, so that tests/fuzz/openai_request_fuzzer.cpp runs it alone.
#pragma once
#include <cstdint>
#include <string>

#include "quantserve/v1/inference.pb.h"
#include "server/config.h"

namespace qs::server {

// A request the API refuses before any work: HTTP status, message, the parameter at fault, OpenAI's code.
struct BadRequest {
  int status = 400;
  std::string message;
  std::string param;
  std::string code = "invalid_value";
};

// What the API needs to know about a request beyond the GenerateRequest it becomes.
struct ParsedRequest {
  quantserve::v1::GenerateRequest request;
  bool stream = false;
  bool include_usage = false;
  bool max_tokens_given = false;
  bool logprobs = false;          // chat: logprobs: true; completions: logprobs >= 0 given
  int32_t top_logprobs = 0;
};

// A /v1/completions (chat = false) or /v1/chat/completions body. Throws BadRequest for anything refused: nesting
// deeper than 64 levels, invalid JSON, a parameter of the wrong type or out of range, one this server does not
// implement.
ParsedRequest parse_generation_body(const std::string& body, bool chat, const ServerLimits& limits);

}  // namespace qs::server
