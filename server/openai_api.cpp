// The OpenAI-compatible HTTP API (see openai_api.h): the hand-off of a parsed request (server/openai_request.h) to
// the model's engine thread, replies and server-sent event chunks in OpenAI's shapes.
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
#include "server/openai_request.h"
#include "server/status.h"

namespace qs::server {

namespace v1 = quantserve::v1;
using json = nlohmann::json;

namespace {

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
  // Uncounted only here, once the reply's last bytes are with the exchange: a drain that sees zero active
  // requests stops the HTTP server, and a stream whose end was not yet handed over would be cut short.
  ~HttpGeneration() {
    if (counted_) active_->fetch_sub(1);
  }

  void start() {
    self_ = shared_from_this();
    active_->fetch_add(1);
    counted_ = true;
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
  bool counted_ = false;
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
      throw BadRequest{415, "Content-Type must be application/json, got '" + printable(request.header("content-type")) +
                                "'", "", "unsupported_media_type"};
    }
    parsed = parse_generation_body(request.body, chat, options_.limits);
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
