// libFuzzer target: an OpenAI API request body (the first byte picks /v1/chat/completions when odd,
// /v1/completions when even) through parse_generation_body (server/openai_request.h) and then, as the server
// does, the GenerateRequest validation. A body is refused with a BadRequest (a 4xx and a message) or becomes a
// request held to validation_properties.h; any other exception escaping is a bug (the HTTP door would not catch it).
#include <cstddef>
#include <cstdint>
#include <string>

#include "server/openai_request.h"
#include "validation_properties.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool chat = data[0] & 1;
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  qs::server::ParsedRequest parsed;
  try {
    parsed = qs::server::parse_generation_body(body, chat, qs::fuzz::fuzz_limits());
  } catch (const qs::server::BadRequest& bad) {
    qs::fuzz::property(bad.status >= 400 && bad.status < 500, "a refusal is a 4xx");
    qs::fuzz::property(!bad.message.empty() && bad.message.size() <= 2048, "a refusal says why, briefly",
                       bad.message);
    return 0;
  }
  qs::fuzz::property(parsed.top_logprobs >= 0 && parsed.top_logprobs <= 20, "top_logprobs in [0, 20]");
  qs::fuzz::property(!parsed.include_usage || parsed.stream, "include_usage only when streaming");
  qs::fuzz::check_validation(parsed.request, /*json_space_after_separators=*/true);
  return 0;
}
