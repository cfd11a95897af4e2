// Every field of a GenerateRequest checked against the server's limits before any work is done with it: what both
// doors (gRPC, and the OpenAI API through InferenceService::prepare) refuse with INVALID_ARGUMENT. Needs no engine
// thread or RPC machinery, so that tests/fuzz/request_validation_fuzzer.cpp runs it alone.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <grpcpp/support/status.h>

#include "engine/engine.h"
#include "quantserve/v1/inference.pb.h"
#include "server/config.h"

namespace qs::server {

// A request that passed: what the engine thread needs (a text prompt is encoded there).
struct ValidatedGeneration {
  std::string prompt;                  // text, or empty with prompt_ids
  std::vector<int32_t> prompt_ids;
  bool chat = false;
  std::string system_prompt;
  std::vector<ChatMessage> messages;   // a conversation; then prompt and system_prompt are empty
  SamplingParams params;               // a json_schema compiled into params.grammar
};

// OK and `out` filled, or INVALID_ARGUMENT with a message naming the field and the limit (never echoing more than a
// few bytes of the caller's). `vocab_size` bounds token ids; `json_space_after_separators` is --json-whitespace.
grpc::Status validate_generate_request(const quantserve::v1::GenerateRequest& request, const ServerLimits& limits,
                                       int64_t vocab_size, bool json_space_after_separators,
                                       ValidatedGeneration& out);

}  // namespace qs::server
