// The OpenAI-compatible HTTP API (see openai_api.h): request parsing with OpenAI's names and ranges, the hand-off
// to the model's engine thread, replies and server-sent event chunks in OpenAI's shapes.
#include "server/openai_api.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <limits>
#include <optional>

#include <nlohmann/json.hpp>

#include "kernels/precision.h"
#include "server/status.h"

namespace qs::server {

namespace v1 = quantserve::v1;
using json = nlohmann::json;

namespace {

// A request the API refuses before any work: HTTP status, message, the parameter at fault, OpenAI's code.
struct BadRequest {
  int status = 400;
  std::string message;
  std::string param;
  std::string code = "invalid_value";
};

[[noreturn]] void refuse(const std::string& param, const std::string& message, int status = 400,
                         const std::string& code = "invalid_value") {
  throw BadRequest{status, message, param, code};
}

// JSON text for a reply; invalid UTF-8 (a token that ends mid-character) becomes U+FFFD instead of an exception.
std::string dump(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

const char* error_type(int status) {
  switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 429: return "rate_limit_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
  }
}

int http_status(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return 200;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::OUT_OF_RANGE: return 400;
    case grpc::StatusCode::UNAUTHENTICATED: return 401;
    case grpc::StatusCode::PERMISSION_DENIED: return 403;
    case grpc::StatusCode::NOT_FOUND: return 404;
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return 429;
    case grpc::StatusCode::CANCELLED: return 499;   // the client went away; nobody reads it
    case grpc::StatusCode::UNIMPLEMENTED: return 501;
    case grpc::StatusCode::UNAVAILABLE: return 503;
    case grpc::StatusCode::DEADLINE_EXCEEDED: return 504;
    default: return 500;
  }
}

void send_error(HttpExchange& exchange, int status, const std::string& message, const std::string& param = "",
                const std::string& code = "", const std::string& request_id = "") {
  HttpExchange::Headers headers;
  if (status == 401) headers.push_back({"WWW-Authenticate", "Bearer"});
  if (status == 429) headers.push_back({"Retry-After", "1"});
  if (status == 503) headers.push_back({"Retry-After", "5"});
  if (!request_id.empty()) headers.push_back({"X-Request-Id", request_id});
  exchange.respond(status, "application/json", http_error_json(message, error_type(status), param, code),
                   std::move(headers));
}

const char* openai_finish_reason(FinishReason reason) {
  return reason == FinishReason::kLength ? "length" : "stop";
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

// What the API needs to know about a request beyond the GenerateRequest it becomes.
struct ParsedRequest {
  v1::GenerateRequest request;
  bool stream = false;
  bool include_usage = false;
  bool max_tokens_given = false;
  bool logprobs = false;          // chat: logprobs: true; completions: logprobs >= 0 given
  int32_t top_logprobs = 0;
};

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

json usage_json(int32_t prompt_tokens, int32_t generated_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", generated_tokens},
          {"total_tokens", prompt_tokens + generated_tokens}};
}

json bytes_json(const std::string& bytes) {
  json out = json::array();
  for (unsigned char c : bytes) out.push_back(int(c));
  return out;
}

// ---- one generation -----------------------------------------------------------------------------------------

// A generation request in flight. Engine-side callbacks run on the model's engine thread, one at a time; the
// object keeps itself alive (self_) until the final event or the refusal.
class HttpGeneration : public std::enable_shared_from_this<HttpGeneration> {
 public:
  HttpGeneration(std::shared_ptr<HttpExchange> exchange, ModelWorker* worker, std::shared_ptr<GenerationJob> job,
                 ParsedRequest parsed, bool chat, std::shared_ptr<std::atomic<int64_t>> active, std::string route)
      : exchange_(std::move(exchange)), worker_(worker), job_(std::move(job)), parsed_(std::move(parsed)),
        chat_(chat), active_(std::move(active)), route_(std::move(route)),
        id_(std::string(chat ? "chatcmpl-" : "cmpl-") + job_->request_id), created_(int64_t(std::time(nullptr))) {}

  void start() {
    self_ = shared_from_this();
    active_->fetch_add(1);
    std::weak_ptr<HttpGeneration> weak = self_;
    exchange_->on_client_gone([weak] {
      if (auto self = weak.lock()) self->worker_->cancel(self->job_);
    });
    job_->on_event = [this](const GenerationEvent& event) { on_event(event); };
    job_->on_error = [this](const Error& error) { on_error(error); };
    worker_->submit(job_);
  }

 private:
  void on_event(const GenerationEvent& event) {
    prompt_tokens_ = event.prompt_tokens;
    generated_tokens_ = event.generated_tokens;
    // While the reply waits, nobody watches the socket: look once per event, so a client that left mid-way
    // frees its KV blocks at the next step.
    if (event.finish == FinishReason::kNone && exchange_->client_gone()) worker_->cancel(job_);
    if (parsed_.stream) {
      stream_event(event);
    } else {
      text_ += event.text;
      add_logprobs(event, logprobs_);
    }
    if (event.finish == FinishReason::kNone) return;
    std::shared_ptr<HttpGeneration> keep = std::move(self_);   // freed when this returns
    const grpc::Status status = final_status(event);
    // Counted before the reply goes out, as the gRPC door does before Finish: a client that scrapes /metrics
    // right after its reply must see its request counted.
    record(status, event.finish);
    if (parsed_.stream) {
      finish_stream(event, status);
    } else if (status.ok()) {
      exchange_->respond(200, "application/json", dump(whole_reply(event)) + "\n", {{"X-Request-Id", job_->request_id}});
    } else {
      send_error(*exchange_, http_status(status.error_code()), status.error_message(), "", "", job_->request_id);
    }
  }

  void on_error(const Error& error) {
    std::shared_ptr<HttpGeneration> keep = std::move(self_);
    const grpc::Status status = to_grpc_status(error, job_->request_id);
    record(status, status.error_code() == grpc::StatusCode::INTERNAL ? FinishReason::kError : FinishReason::kNone);
    send_error(*exchange_, http_status(status.error_code()), status.error_message(), "", "", job_->request_id);
  }

  grpc::Status final_status(const GenerationEvent& event) const {
    if (event.finish == FinishReason::kCancelled) {
      if (job_->cancelled_by_server) {
        return {grpc::StatusCode::UNAVAILABLE, "the server is shutting down and its drain grace period ended"};
      }
      return {grpc::StatusCode::CANCELLED, "the request was cancelled (the client went away)"};
    }
    if (event.finish == FinishReason::kError) {
      return {grpc::StatusCode::INTERNAL, "internal error in request " + job_->request_id + ": " + event.error};
    }
    return grpc::Status::OK;
  }

  // Logprobs of this event's tokens in the API's shape (chat: content entries; completions: parallel lists).
  void add_logprobs(const GenerationEvent& event, json& into) {
    if (!parsed_.logprobs) return;
    const Tokenizer& tokenizer = worker_->tokenizer();
    if (into.is_null()) {
      into = chat_ ? json{{"content", json::array()}}
                   : json{{"tokens", json::array()}, {"token_logprobs", json::array()},
                          {"top_logprobs", json::array()}, {"text_offset", json::array()}};
    }
    // The end-of-sequence token is not part of the text, so it gets no entry either.
    const size_t n = event.token_ids.size() - (event.finish == FinishReason::kEos && !event.token_ids.empty());
    for (size_t i = 0; i < n; ++i) {
      const std::string& piece = tokenizer.token_bytes(event.token_ids[i]);
      const double logprob = i < event.logprobs.size() ? event.logprobs[i].logprob : 0.0;
      const std::vector<TokenLogprob> none;
      const std::vector<TokenLogprob>& top = i < event.top_logprobs.size() ? event.top_logprobs[i] : none;
      const size_t shown = std::min(top.size(), size_t(parsed_.top_logprobs));
      if (chat_) {
        json alternatives = json::array();
        for (size_t k = 0; k < shown; ++k) {
          const std::string& alt = tokenizer.token_bytes(top[k].token);
          alternatives.push_back({{"token", alt}, {"logprob", top[k].logprob}, {"bytes", bytes_json(alt)}});
        }
        into["content"].push_back(
            {{"token", piece}, {"logprob", logprob}, {"bytes", bytes_json(piece)}, {"top_logprobs", alternatives}});
      } else {
        json alternatives = json::object();
        for (size_t k = 0; k < shown; ++k) alternatives[tokenizer.token_bytes(top[k].token)] = top[k].logprob;
        into["tokens"].push_back(piece);
        into["token_logprobs"].push_back(logprob);
        into["top_logprobs"].push_back(alternatives);
        into["text_offset"].push_back(text_offset_);
      }
      text_offset_ += int64_t(piece.size());
    }
  }

  json envelope(const char* object) const {
    return {{"id", id_}, {"object", object}, {"created", created_}, {"model", worker_->name()}};
  }

  json whole_reply(const GenerationEvent& event) const {
    json reply = envelope(chat_ ? "chat.completion" : "text_completion");
    json choice = {{"index", 0}, {"logprobs", logprobs_}, {"finish_reason", openai_finish_reason(event.finish)}};
    if (chat_) choice["message"] = {{"role", "assistant"}, {"content", text_}};
    else choice["text"] = text_;
    reply["choices"] = json::array({choice});
    reply["usage"] = usage_json(prompt_tokens_, generated_tokens_);
    return reply;
  }

  void send_chunk(const json& delta_or_text, const json& logprobs, const json& finish_reason) {
    json chunk = envelope(chat_ ? "chat.completion.chunk" : "text_completion");
    json choice = {{"index", 0}, {"logprobs", logprobs}, {"finish_reason", finish_reason}};
    if (chat_) choice["delta"] = delta_or_text;
    else choice["text"] = delta_or_text;
    chunk["choices"] = json::array({choice});
    if (parsed_.include_usage) chunk["usage"] = nullptr;
    exchange_->send("data: " + dump(chunk) + "\n\n");
  }

  void begin_stream() {
    if (stream_started_) return;
    stream_started_ = true;
    exchange_->begin_stream(200, "text/event-stream",
                            {{"Cache-Control", "no-cache"}, {"X-Accel-Buffering", "no"},
                             {"X-Request-Id", job_->request_id}});
    if (chat_) send_chunk({{"role", "assistant"}, {"content", ""}}, nullptr, nullptr);
  }

  void stream_event(const GenerationEvent& event) {
    if (event.text.empty() && event.token_ids.empty()) return;
    begin_stream();
    json logprobs;
    add_logprobs(event, logprobs);
    if (chat_) send_chunk({{"content", event.text}}, logprobs, nullptr);
    else send_chunk(event.text, logprobs, nullptr);
  }

  void finish_stream(const GenerationEvent& event, const grpc::Status& status) {
    if (!status.ok() && !stream_started_) {   // nothing sent yet: a plain HTTP error says it best
      send_error(*exchange_, http_status(status.error_code()), status.error_message(), "", "", job_->request_id);
      return;
    }
    begin_stream();
    if (status.ok()) {
      send_chunk(chat_ ? json::object() : json(""), nullptr, openai_finish_reason(event.finish));
      if (parsed_.include_usage) {
        json chunk = envelope(chat_ ? "chat.completion.chunk" : "text_completion");
        chunk["choices"] = json::array();
        chunk["usage"] = usage_json(prompt_tokens_, generated_tokens_);
        exchange_->send("data: " + dump(chunk) + "\n\n");
      }
    } else {
      exchange_->send("data: " + http_error_json(status.error_message(), error_type(http_status(status.error_code()))) +
                      "\n");
    }
    exchange_->send("data: [DONE]\n\n");
    exchange_->end_stream();
  }

  // One log line and one count per request, as the gRPC door does.
  void record(const grpc::Status& status, FinishReason reason) {
    active_->fetch_sub(1);
    ModelMetrics& m = worker_->metrics();
    m.count_request(Api::kHttp, status.error_code(), reason);
    m.observe_api_duration(Api::kHttp, job_->total_seconds);
    std::fprintf(stderr,
                 "quantserve: request %s api=http route=%s model=%s prompt_tokens=%d generated_tokens=%d "
                 "queue_ms=%.1f ttft_ms=%.1f total_ms=%.1f status=%s http=%d finish=%s%s%s\n",
                 job_->request_id.c_str(), route_.c_str(), worker_->name().c_str(), prompt_tokens_,
                 generated_tokens_, job_->queue_seconds * 1e3, job_->first_token_seconds * 1e3,
                 job_->total_seconds * 1e3, grpc_code_name(status.error_code()), http_status(status.error_code()),
                 finish_reason_name(reason), status.ok() ? "" : " message=",
                 status.ok() ? "" : status.error_message().c_str());
  }

  std::shared_ptr<HttpExchange> exchange_;
  ModelWorker* worker_;
  std::shared_ptr<GenerationJob> job_;
  ParsedRequest parsed_;
  bool chat_;
  std::shared_ptr<std::atomic<int64_t>> active_;
  std::string route_;
  std::string id_;
  int64_t created_;
  std::shared_ptr<HttpGeneration> self_;
  // Engine thread only.
  std::string text_;
  json logprobs_;
  int64_t text_offset_ = 0;
  int32_t prompt_tokens_ = 0;
  int32_t generated_tokens_ = 0;
  bool stream_started_ = false;
};

bool is_json(const std::string& content_type) {
  std::string type = content_type.substr(0, content_type.find(';'));
  type.erase(std::remove(type.begin(), type.end(), ' '), type.end());
  std::transform(type.begin(), type.end(), type.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return type == "application/json";
}

}  // namespace

void OpenAiApi::handle(const HttpRequest& request, std::shared_ptr<HttpExchange> exchange) {
  InferenceService* service = service_.load();
  const std::string& path = request.path;
  const bool get = request.method == "GET" || request.method == "HEAD";
  if (path == "/health") {
    if (!get) return send_error(*exchange, 405, "use GET /health");
    if (!service) return exchange->respond(503, "application/json", "{\"status\":\"loading\"}\n");
    if (service->draining()) return exchange->respond(503, "application/json", "{\"status\":\"draining\"}\n");
    if (stalled_.load()) return exchange->respond(503, "application/json", "{\"status\":\"stalled\"}\n");
    return exchange->respond(200, "application/json", "{\"status\":\"ok\"}\n");
  }
  const bool models = path == "/v1/models" || path.rfind("/v1/models/", 0) == 0;
  const bool completions = path == "/v1/completions", chat = path == "/v1/chat/completions";
  if (!models && !completions && !chat) {
    return send_error(*exchange, 404,
                      "no route " + printable(request.method, 8) + " " + printable(path) +
                          "; this server answers POST /v1/completions, POST /v1/chat/completions, GET /v1/models "
                          "and GET /health",
                      "", "unknown_url");
  }
  if (models != get) {
    return send_error(*exchange, 405, "use " + std::string(models ? "GET " : "POST ") + printable(path));
  }
  if (auth_) {
    const AuthResult result = auth_->check(request.header("authorization"), models ? AuthScope::kRead : AuthScope::kAll);
    if (result != AuthResult::kAllowed) {
      const bool forbidden = result == AuthResult::kForbidden;
      const grpc::StatusCode code =
          forbidden ? grpc::StatusCode::PERMISSION_DENIED : grpc::StatusCode::UNAUTHENTICATED;
      metrics_.unknown_model().count_request(Api::kHttp, code, FinishReason::kNone);
      std::fprintf(stderr, "quantserve: request refused api=http route=%s http=%d message=%s\n",
                   printable(path).c_str(), http_status(code), auth_message(result));
      return send_error(*exchange, http_status(code), auth_message(result), "",
                        forbidden ? "insufficient_scope" : "invalid_api_key");
    }
  }
  if (!service) return send_error(*exchange, 503, "the server is loading its models; retry shortly", "", "loading");
  if (models) return list_models(*service, path.size() > 11 ? path.substr(11) : "", *exchange);
  generate(*service, request, std::move(exchange), chat);
}

void OpenAiApi::list_models(InferenceService& service, const std::string& only, HttpExchange& exchange) {
  json data = json::array();
  for (ModelWorker* w : service.workers()) {
    if (!only.empty() && w->name() != only) continue;
    const ModelConfig& config = w->model().config();
    data.push_back({{"id", w->name()},
                    {"object", "model"},
                    {"created", started_},
                    {"owned_by", "quantserve"},
                    {"max_model_len", config.max_positions},
                    {"precision", precision_name(w->model().report().precision)}});
  }
  if (!only.empty()) {
    if (data.empty()) return send_error(exchange, 404, "unknown model '" + printable(only) + "'", "model",
                                        "model_not_found");
    return exchange.respond(200, "application/json", dump(data[0]) + "\n");
  }
  exchange.respond(200, "application/json", dump(json{{"object", "list"}, {"data", data}}) + "\n");
}

void OpenAiApi::generate(InferenceService& service, const HttpRequest& request,
                         std::shared_ptr<HttpExchange> exchange, bool chat) {
  const std::string route = chat ? "/v1/chat/completions" : "/v1/completions";
  ParsedRequest parsed;
  try {
    if (!is_json(request.header("content-type"))) {
      refuse("", "Content-Type must be application/json, got '" + printable(request.header("content-type")) + "'",
             415, "unsupported_media_type");
    }
    if (too_deep(request.body)) {
      refuse("", "the JSON body nests deeper than " + std::to_string(kMaxJsonDepth) + " levels", 400, "invalid_json");
    }
    json body = json::parse(request.body, nullptr, /*allow_exceptions=*/false);
    if (body.is_discarded()) refuse("", "the request body is not valid JSON", 400, "invalid_json");
    parsed = parse_generation(body, chat, options_.limits);
  } catch (const BadRequest& bad) {
    metrics_.unknown_model().count_request(Api::kHttp, grpc::StatusCode::INVALID_ARGUMENT, FinishReason::kNone);
    std::fprintf(stderr, "quantserve: request - api=http route=%s status=INVALID_ARGUMENT http=%d message=%s\n",
                 route.c_str(), bad.status, printable(bad.message, 200).c_str());
    return send_error(*exchange, bad.status, bad.message, bad.param, bad.code);
  }

  auto job = std::make_shared<GenerationJob>();
  job->request_id = service.next_request_id();
  ModelWorker* worker = nullptr;
  const grpc::Status status = service.prepare(parsed.request, &worker, *job);
  if (!status.ok()) {
    ModelMetrics& m = worker ? worker->metrics() : metrics_.unknown_model();
    m.count_request(Api::kHttp, status.error_code(), FinishReason::kNone);
    std::fprintf(stderr, "quantserve: request %s api=http route=%s model=%s status=%s http=%d message=%s\n",
                 job->request_id.c_str(), route.c_str(), worker ? worker->name().c_str() : "-",
                 grpc_code_name(status.error_code()), http_status(status.error_code()),
                 status.error_message().c_str());
    const bool unknown_model = status.error_code() == grpc::StatusCode::NOT_FOUND;
    const bool schema = status.error_message().rfind("json_schema", 0) == 0;
    return send_error(*exchange, http_status(status.error_code()), status.error_message(),
                      unknown_model ? "model" : schema ? "response_format" : "",
                      unknown_model ? "model_not_found" : "", job->request_id);
  }
  if (!parsed.max_tokens_given) {   // chat without max_tokens: as much as the context holds, up to the limit
    job->params.max_new_tokens = int32_t(options_.limits.max_new_tokens);
    job->max_new_tokens_to_context = true;
  }
  auto call = std::make_shared<HttpGeneration>(std::move(exchange), worker, std::move(job), std::move(parsed), chat,
                                               active_, route);
  call->start();
}

}  // namespace qs::server
