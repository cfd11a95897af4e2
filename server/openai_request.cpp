// OpenAI request bodies -> GenerateRequest (see openai_request.h).
#include "server/openai_request.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <vector>

#include <nlohmann/json.hpp>

#include "server/status.h"

namespace qs::server {

namespace v1 = quantserve::v1;
using json = nlohmann::json;

namespace {

[[noreturn]] void refuse(const std::string& param, const std::string& message, int status = 400,
                         const std::string& code = "invalid_value") {
  throw BadRequest{status, message, param, code};
}

// Nesting deeper than this is refused before parsing (no request needs it; a JSON bomb does).
constexpr int kMaxJsonDepth = 64;

bool too_deep(const std::string& body) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : body) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) return true;
    } else if (c == ']' || c == '}') --depth;
  }
  return false;
}

// ---- parameters -------------------------------------------------------------------------------------------------

const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

std::optional<double> number(const json& body, const char* name, double lo, double hi) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_number()) refuse(name, std::string(name) + " must be a number", 400, "invalid_type");
  const double x = v->get<double>();
  if (!(x >= lo && x <= hi)) {
    refuse(name, std::string(name) + " must be in [" + json(lo).dump() + ", " + json(hi).dump() + "], got " +
                     v->dump());
  }
  return x;
}

std::optional<int64_t> integer(const json& body, const char* name, int64_t lo, int64_t hi) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_number_integer()) refuse(name, std::string(name) + " must be an integer", 400, "invalid_type");
  const int64_t x = v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())
                        ? std::numeric_limits<int64_t>::max()
                        : v->get<int64_t>();
  if (x < lo || x > hi) {
    refuse(name, std::string(name) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                     v->dump());
  }
  return x;
}

std::optional<bool> boolean(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) refuse(name, std::string(name) + " must be true or false", 400, "invalid_type");
  return v->get<bool>();
}

std::string text_of(const json& v, const char* param) {
  if (!v.is_string()) refuse(param, std::string(param) + " must be a string", 400, "invalid_type");
  return v.get<std::string>();
}

// Parameters a client may send that this server does not implement: refused by name rather than ignored, so
// nobody gets a different answer than they asked for without knowing.
void refuse_unsupported(const json& body, bool chat) {
  if (auto n = integer(body, "n", 1, 1 << 20); n && *n != 1) refuse("n", "n must be 1: one choice per request");
  if (auto b = integer(body, "best_of", 1, 1 << 20); b && *b != 1) refuse("best_of", "best_of must be 1");
  if (boolean(body, "echo").value_or(false)) refuse("echo", "echo is not supported");
  if (field(body, "suffix")) refuse("suffix", "suffix is not supported");
  if (const json* bias = field(body, "logit_bias"); bias && !bias->empty()) {
    refuse("logit_bias", "logit_bias is not supported");
  }
  for (const char* name : {"tools", "functions"}) {
    if (const json* t = field(body, name); t && !t->empty()) {
      refuse(name, std::string(name) + ": tool and function calling are not supported");
    }
  }
  for (const char* name : {"tool_choice", "function_call"}) {
    if (const json* t = field(body, name); t && !(t->is_string() && t->get<std::string>() == "none")) {
      refuse(name, std::string(name) + ": tool and function calling are not supported");
    }
  }
  if (const json* modalities = field(body, "modalities")) {
    if (!(modalities->is_array() && modalities->size() == 1 && (*modalities)[0] == "text")) {
      refuse("modalities", "only the text modality is supported");
    }
  }
  if (!chat && field(body, "top_logprobs")) refuse("top_logprobs", "top_logprobs is a chat parameter; use logprobs");
}

std::vector<v1::ChatMessage> parse_messages(const json& body) {
  const json* messages = field(body, "messages");
  if (!messages) refuse("messages", "messages is required", 400, "missing_required_parameter");
  if (!messages->is_array() || messages->empty()) refuse("messages", "messages must be a non-empty array");
  std::vector<v1::ChatMessage> out;
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) refuse(where, where + " must be an object with role and content");
    const json* role = field(m, "role");
    if (!role || !role->is_string()) refuse(where + ".role", where + ".role is required");
    std::string r = role->get<std::string>();
    if (r == "developer") r = "system";   // OpenAI's newer name for the system turn
    if (r != "system" && r != "user" && r != "assistant") {
      refuse(where + ".role", where + ".role '" + printable(r) + "' is not supported (system, user, assistant)");
    }
    std::string content;
    const json* c = field(m, "content");
    if (c && c->is_string()) {
      content = c->get<std::string>();
    } else if (c && c->is_array()) {   // content parts: text only
      for (const json& part : *c) {
        const json* type = part.is_object() ? field(part, "type") : nullptr;
        if (!type || *type != "text") {
          refuse(where + ".content", where + ".content: only parts of type 'text' are supported");
        }
        const json* text = field(part, "text");
        if (!text || !text->is_string()) refuse(where + ".content", where + ".content: a text part needs text");
        content += text->get<std::string>();
      }
    } else if (c || r != "assistant") {
      refuse(where + ".content", where + ".content must be a string or an array of text parts");
    }
    v1::ChatMessage message;
    message.set_role(r);
    message.set_content(std::move(content));
    out.push_back(std::move(message));
  }
  return out;
}

void parse_prompt(const json& body, v1::GenerateRequest& request) {
  const json* prompt = field(body, "prompt");
  if (!prompt) refuse("prompt", "prompt is required", 400, "missing_required_parameter");
  const json* p = prompt;
  // One prompt per request: "text", ["text"], [ids] or [[ids]].
  if (p->is_array() && p->size() == 1 && ((*p)[0].is_string() || (*p)[0].is_array())) p = &(*p)[0];
  if (p->is_string()) {
    if (p->get_ref<const std::string&>().empty()) refuse("prompt", "prompt must not be empty");
    request.set_prompt(p->get<std::string>());
    return;
  }
  if (p->is_array() && !p->empty() && std::all_of(p->begin(), p->end(), [](const json& t) {
        return t.is_number_integer();
      })) {
    for (const json& t : *p) {
      const int64_t id = t.get<int64_t>();
      if (id < 0 || id > std::numeric_limits<int32_t>::max()) refuse("prompt", "prompt token ids must be >= 0");
      request.add_prompt_token_ids(int32_t(id));
    }
    return;
  }
  if (p->is_array() && p->size() > 1) refuse("prompt", "one prompt per request: send a string, not a list of them");
  refuse("prompt", "prompt must be a string, a list of one string, or a list of token ids");
}

ParsedRequest parse_generation(const json& body, bool chat, const ServerLimits& limits) {
  if (!body.is_object()) refuse("", "the request body must be a JSON object");
  refuse_unsupported(body, chat);
  ParsedRequest parsed;
  v1::GenerateRequest& r = parsed.request;
  if (const json* model = field(body, "model")) r.set_model(text_of(*model, "model"));
  if (chat) {
    for (v1::ChatMessage& m : parse_messages(body)) *r.add_messages() = std::move(m);
  } else {
    parse_prompt(body, r);
  }
  // Tokens to generate: chat's newer name first; both are bounded by the server's --max-new-tokens.
  const char* max_name = field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  if (auto max = integer(body, max_name, 1, std::numeric_limits<int32_t>::max())) {
    if (*max > limits.max_new_tokens) {
      refuse(max_name, std::string(max_name) + " " + std::to_string(*max) + " is over the server's limit of " +
                           std::to_string(limits.max_new_tokens) + " (--max-new-tokens)");
    }
    r.set_max_new_tokens(int32_t(*max));
    parsed.max_tokens_given = true;
  } else if (!chat) {
    r.set_max_new_tokens(int32_t(std::min<int64_t>(16, limits.max_new_tokens)));   // OpenAI's default here
    parsed.max_tokens_given = true;
  }
  if (auto t = number(body, "temperature", 0, 2)) r.set_temperature(float(*t));
  if (auto p = number(body, "top_p", 0, 1)) {
    if (*p <= 0) refuse("top_p", "top_p must be in (0, 1]");
    r.set_top_p(float(*p));
  }
  if (auto k = integer(body, "top_k", -1, std::numeric_limits<int32_t>::max())) r.set_top_k(int32_t(std::max<int64_t>(0, *k)));
  if (auto p = number(body, "presence_penalty", -2, 2)) r.set_presence_penalty(float(*p));
  if (auto p = number(body, "frequency_penalty", -2, 2)) r.set_frequency_penalty(float(*p));
  if (auto p = number(body, "repetition_penalty", 0.01, 100)) r.set_repetition_penalty(float(*p));
  if (auto s = integer(body, "seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max())) {
    r.set_seed(uint64_t(*s));
  }
  if (auto ignore = boolean(body, "ignore_eos")) r.set_ignore_eos(*ignore);
  if (const json* stop = field(body, "stop")) {
    std::vector<std::string> stops;
    if (stop->is_string()) {
      stops.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const json& s : *stop) stops.push_back(text_of(s, "stop"));
    } else {
      refuse("stop", "stop must be a string or a list of strings", 400, "invalid_type");
    }
    if (stops.size() > 16) refuse("stop", "at most 16 stop sequences, got " + std::to_string(stops.size()));
    for (const std::string& s : stops) {
      if (s.empty() || s.size() > 256) refuse("stop", "each stop sequence must be 1 to 256 bytes");
      r.add_stop(s);
    }
  }
  if (chat) {
    parsed.logprobs = boolean(body, "logprobs").value_or(false);
    if (auto top = integer(body, "top_logprobs", 0, 20)) {
      if (!parsed.logprobs) refuse("top_logprobs", "top_logprobs needs logprobs: true");
      parsed.top_logprobs = int32_t(*top);
    }
  } else if (auto n = integer(body, "logprobs", 0, 20)) {
    parsed.logprobs = true;
    parsed.top_logprobs = int32_t(*n);
  }
  // The engine reports the chosen token's logprob only with the top list; asking for one alternative covers
  // logprobs without top_logprobs, and the reply shows only what was asked.
  if (parsed.logprobs) r.set_logprobs(std::max(1, parsed.top_logprobs));
  parsed.stream = boolean(body, "stream").value_or(false);
  if (const json* options = field(body, "stream_options")) {
    if (!parsed.stream) refuse("stream_options", "stream_options needs stream: true");
    if (!options->is_object()) refuse("stream_options", "stream_options must be an object");
    parsed.include_usage = boolean(*options, "include_usage").value_or(false);
  }
  // Structured output: both forms become the JSON Schema of constrained decoding (prepare() compiles it).
  if (const json* format = field(body, "response_format")) {
    const json* type = format->is_object() ? field(*format, "type") : nullptr;
    if (!type || !type->is_string()) refuse("response_format", "response_format must be an object with a type");
    const std::string kind = type->get<std::string>();
    if (kind == "json_object") {
      r.set_json_schema("{\"type\":\"object\"}");
    } else if (kind == "json_schema") {
      const json* spec = field(*format, "json_schema");
      const json* schema = spec && spec->is_object() ? field(*spec, "schema") : nullptr;
      if (!schema || !(schema->is_object() || schema->is_boolean())) {
        refuse("response_format", "response_format.json_schema.schema must be a JSON Schema object");
      }
      r.set_json_schema(schema->dump());
    } else if (kind != "text") {
      refuse("response_format", "response_format type '" + printable(kind) +
                                    "' is not one of: text, json_object, json_schema");
    }
  }
  if (const json* user = field(body, "user")) text_of(*user, "user");
  return parsed;
}

}  // namespace

ParsedRequest parse_generation_body(const std::string& body, bool chat, const ServerLimits& limits) {
  if (too_deep(body)) {
    refuse("", "the JSON body nests deeper than " + std::to_string(kMaxJsonDepth) + " levels", 400, "invalid_json");
  }
  const json parsed = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) refuse("", "the request body is not valid JSON", 400, "invalid_json");
  return parse_generation(parsed, chat, limits);
}

}  // namespace qs::server
