// The quantserve.v1.Inference service on gRPC's callback API: request validation, one reactor per call, and the
// hand-off to the model's engine thread (server/scheduler.h).
#pragma once
#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "quantserve/v1/inference.grpc.pb.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/metrics.h"
#include "server/scheduler.h"
#include "server/task_worker.h"

namespace qs::server {

class InferenceService final : public quantserve::v1::Inference::CallbackService {
 public:
  // `workers` in --model order (the first is the default); they and `auth` (null = no authentication) outlive the
  // service.
  InferenceService(std::vector<ModelWorker*> workers, const ServeOptions& options, Metrics& metrics,
                   const TokenAuth* auth = nullptr);

  // Shutdown: from now on generation requests are refused with UNAVAILABLE.
  void start_draining() { draining_ = true; }
  bool draining() const { return draining_; }

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const quantserve::v1::GenerateRequest* request,
                                     quantserve::v1::GenerateResponse* response) override;
  grpc::ServerWriteReactor<quantserve::v1::GenerateResponse>* GenerateStream(
      grpc::CallbackServerContext* context, const quantserve::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const quantserve::v1::ListModelsRequest* request,
                                       quantserve::v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const quantserve::v1::GetModelRequest* request,
                                     quantserve::v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const quantserve::v1::TokenizeRequest* request,
                                     quantserve::v1::TokenizeResponse* response) override;

  // Used by the call reactors (service.cpp) and the OpenAI-compatible API (openai_api.cpp).
  const std::vector<ModelWorker*>& workers() const { return workers_; }
  ModelWorker* find_worker(const std::string& name) const;
  std::string next_request_id() { return "req-" + std::to_string(next_id_.fetch_add(1)); }
  // Checks a request against the limits and fills `job`; on OK a queue place is reserved on `*worker`.
  grpc::Status prepare(const quantserve::v1::GenerateRequest& request, ModelWorker** worker, GenerationJob& job);
  Metrics& metrics() { return metrics_; }
  // OK, or UNAUTHENTICATED / PERMISSION_DENIED for a call that needs `scope` (always OK without --auth-token-file).
  grpc::Status authorize(const grpc::CallbackServerContext* context, AuthScope scope);
  // Generate/GenerateStream calls not yet done (their reactor not yet freed); shutdown waits for zero.
  int64_t active_calls() const { return active_calls_.load(); }
  std::atomic<int64_t>& active_calls_counter() { return active_calls_; }

 private:
  std::vector<ModelWorker*> workers_;
  ServeOptions options_;
  Metrics& metrics_;
  const TokenAuth* auth_;
  std::map<std::string, quantserve::v1::ModelInfo> infos_;   // built once at start-up
  std::atomic<bool> draining_{false};
  std::atomic<uint64_t> next_id_{1};
  std::atomic<int64_t> active_calls_{0};
  TaskWorker tokenize_worker_;   // Tokenize calls, off the engine threads; last, so it finishes them first
};

// The description GetModel returns: config, load report summarised per tensor class, limits.
quantserve::v1::ModelInfo describe_model(const std::string& name, const Model& model, const ServerLimits& limits,
                                         int64_t kv_blocks_total, const EngineOptions& engine);

}  // namespace qs::server
