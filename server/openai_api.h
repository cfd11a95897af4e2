// The OpenAI-compatible HTTP API, a second front door to the same engines, limits and metrics as the gRPC
// service: POST /v1/completions, POST /v1/chat/completions (both with server-sent events), GET /v1/models,
// GET /v1/models/{id}, and GET /health (503 while loading or draining). Requests become a
// quantserve.v1.GenerateRequest and go through InferenceService::prepare, so both doors refuse the same things.
#pragma once
#include <atomic>
#include <cstdint>
#include <ctime>
#include <memory>
#include <string>

#include "server/auth.h"
#include "server/config.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/service.h"

namespace qs::server {

class OpenAiApi {
 public:
  // `auth` (null = no authentication) outlives the API.
  OpenAiApi(const ServeOptions& options, Metrics& metrics, const TokenAuth* auth = nullptr)
      : options_(options), metrics_(metrics), auth_(auth) {}

  // Until a service is attached (the models are loading), /health and every /v1 route answer 503.
  void attach(InferenceService* service) { service_.store(service); }
  // The watchdog's verdict: while set, /health answers 503 "stalled".
  void set_stalled(bool stalled) { stalled_.store(stalled); }
  void handle(const HttpRequest& request, std::shared_ptr<HttpExchange> exchange);
  // Generation requests not yet answered in full; shutdown waits for zero.
  int64_t active() const { return active_->load(); }

 private:
  void list_models(InferenceService& service, const std::string& only, HttpExchange& exchange);
  void generate(InferenceService& service, const HttpRequest& request, std::shared_ptr<HttpExchange> exchange,
                bool chat);

  ServeOptions options_;
  Metrics& metrics_;
  const TokenAuth* auth_;
  std::atomic<InferenceService*> service_{nullptr};
  std::atomic<bool> stalled_{false};
  int64_t started_ = int64_t(std::time(nullptr));   // "created" of the models
  std::shared_ptr<std::atomic<int64_t>> active_ = std::make_shared<std::atomic<int64_t>>(0);
};

}  // namespace qs::server
