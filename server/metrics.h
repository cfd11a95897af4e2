// Prometheus metrics (deploy/METRICS.md is the contract): families built once at start-up, labelled children
// kept by reference, so the request path only observes, increments and sets.
#pragma once
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <grpcpp/support/status.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "engine/engine.h"
#include "server/http_server.h"

namespace qs::server {

// The front door a request came through (label api="grpc" / "http").
enum class Api { kGrpc = 0, kHttp = 1 };
const char* api_name(Api api);

// The series of one served model.
struct ModelMetrics {
  std::string model;
  prometheus::Histogram* time_to_first_token = nullptr;
  prometheus::Histogram* inter_token_latency = nullptr;
  prometheus::Histogram* request_duration = nullptr;
  prometheus::Histogram* queue_duration = nullptr;
  prometheus::Counter* prompt_tokens = nullptr;
  prometheus::Counter* generated_tokens = nullptr;
  prometheus::Gauge* requests_running = nullptr;
  prometheus::Gauge* requests_waiting = nullptr;
  prometheus::Gauge* batch_size = nullptr;
  prometheus::Gauge* kv_blocks_used = nullptr;
  prometheus::Gauge* kv_blocks_total = nullptr;
  prometheus::Gauge* kv_cache_bytes = nullptr;            // capacity (the budget)
  prometheus::Gauge* kv_cache_committed_bytes = nullptr;  // backed by memory
  prometheus::Gauge* kv_cache_used_bytes = nullptr;       // held by sequences
  prometheus::Gauge* kv_blocks_cached = nullptr;          // kept for prefix reuse, held by no sequence
  // With KV layer groups (Gemma 3) the blocks_* above count the global layers' pool; these the sliding-window
  // layers' ring pool (0 for a model with one pool).
  prometheus::Gauge* kv_window_blocks_used = nullptr;
  prometheus::Gauge* kv_window_blocks_total = nullptr;
  prometheus::Gauge* kv_window_blocks_cached = nullptr;
  prometheus::Counter* prefix_cache_queried_tokens = nullptr;
  prometheus::Counter* prefix_cache_hit_tokens = nullptr;
  prometheus::Gauge* weight_bytes = nullptr;
  prometheus::Gauge* load_seconds = nullptr;
  prometheus::Gauge* quantize_seconds = nullptr;
  // quantserve_requests_total{api, status, finish_reason}, every combination pre-created.
  std::map<std::tuple<Api, grpc::StatusCode, FinishReason>, prometheus::Counter*> requests;
  // quantserve_api_request_duration_seconds{api}: arrival to the last byte handed to the front door.
  prometheus::Histogram* api_duration[2] = {nullptr, nullptr};

  void count_request(Api api, grpc::StatusCode status, FinishReason reason);
  void observe_api_duration(Api api, double seconds);
};

class Metrics {
 public:
  // Builds every family; `listen` ("HOST:PORT") starts the /metrics endpoint, empty = none (tests).
  explicit Metrics(const std::string& listen);
  ~Metrics();

  // Start-up only: the children of one model (labels model, precision; the KV-cache bytes also carry dtype,
  // the cache's storage, e.g. "fp16").
  ModelMetrics& add_model(const std::string& model, const std::string& precision,
                          const std::string& kv_cache_dtype = "fp32");
  // Requests for models that do not exist (NOT_FOUND) are counted under model="unknown".
  ModelMetrics& unknown_model() { return *unknown_; }
  // Device memory gauges for `device` ("cpu", "cuda:0"); children made on first use at start-up.
  void register_device(const std::string& device);
  void set_device_memory(const std::string& device, double used_bytes, double total_bytes);
  // Start-up, once per model: the load report's quantization error per tensor class (mean and max of the tensors'
  // relative Frobenius errors) and the bytes saved against fp32, as gauges labelled model and precision.
  void set_quantization(const std::string& model, const std::string& precision, const LoadReport& report);
  // Reads /proc/self/statm into process_resident_memory_bytes.
  void update_process_memory();
  std::vector<int> listening_ports() const;
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<HttpServer> http_;   // /metrics (not prometheus-cpp's Exposer, civetweb: see http_server.h)
  prometheus::Family<prometheus::Histogram>* ttft_ = nullptr;
  prometheus::Family<prometheus::Histogram>* itl_ = nullptr;
  prometheus::Family<prometheus::Histogram>* duration_ = nullptr;
  prometheus::Family<prometheus::Histogram>* queue_ = nullptr;
  prometheus::Family<prometheus::Histogram>* api_duration_ = nullptr;
  prometheus::Family<prometheus::Counter>* prompt_tokens_ = nullptr;
  prometheus::Family<prometheus::Counter>* generated_tokens_ = nullptr;
  prometheus::Family<prometheus::Counter>* requests_ = nullptr;
  prometheus::Family<prometheus::Gauge>* running_ = nullptr;
  prometheus::Family<prometheus::Gauge>* waiting_ = nullptr;
  prometheus::Family<prometheus::Gauge>* batch_size_ = nullptr;
  prometheus::Family<prometheus::Gauge>* kv_used_ = nullptr;
  prometheus::Family<prometheus::Gauge>* kv_total_ = nullptr;
  prometheus::Family<prometheus::Gauge>* kv_bytes_ = nullptr;
  prometheus::Family<prometheus::Gauge>* kv_committed_ = nullptr;
  prometheus::Family<prometheus::Gauge>* kv_used_bytes_ = nullptr;
  prometheus::Family<prometheus::Gauge>* kv_cached_ = nullptr;
  prometheus::Family<prometheus::Gauge>* kv_window_used_ = nullptr;
  prometheus::Family<prometheus::Gauge>* kv_window_total_ = nullptr;
  prometheus::Family<prometheus::Gauge>* kv_window_cached_ = nullptr;
  prometheus::Family<prometheus::Counter>* prefix_queried_ = nullptr;
  prometheus::Family<prometheus::Counter>* prefix_hits_ = nullptr;
  prometheus::Family<prometheus::Gauge>* device_used_ = nullptr;
  prometheus::Family<prometheus::Gauge>* device_total_ = nullptr;
  prometheus::Family<prometheus::Gauge>* weight_bytes_ = nullptr;
  prometheus::Family<prometheus::Gauge>* load_seconds_ = nullptr;
  prometheus::Family<prometheus::Gauge>* quantize_seconds_ = nullptr;
  prometheus::Family<prometheus::Gauge>* quant_error_ = nullptr;
  prometheus::Family<prometheus::Gauge>* bytes_saved_ = nullptr;
  prometheus::Gauge* resident_bytes_ = nullptr;

  std::mutex devices_mutex_;   // guards the map's structure only; gauges are thread-safe
  std::map<std::string, std::pair<prometheus::Gauge*, prometheus::Gauge*>> devices_;
  std::map<std::string, std::unique_ptr<ModelMetrics>> models_;
  ModelMetrics* unknown_ = nullptr;

  ModelMetrics& make_model(const std::string& model, const std::string& precision, const std::string& kv_cache_dtype,
                           bool with_model_gauges);
};

}  // namespace qs::server
