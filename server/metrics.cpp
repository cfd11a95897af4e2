// Prometheus families for quantserve (names and labels exactly as deploy/METRICS.md lists them).
#include "server/metrics.h"

#include <prometheus/text_serializer.h>

#include <unistd.h>

#include <algorithm>

#include <cstdio>

#include "kernels/error.h"
#include "server/status.h"

namespace qs::server {

namespace {

// 1 ms .. 60 s: token latencies on a GPU are ms, long generations on a CPU tens of seconds.
const prometheus::Histogram::BucketBoundaries kLatencyBuckets = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};

const grpc::StatusCode kStatuses[] = {
    grpc::StatusCode::OK,          grpc::StatusCode::INVALID_ARGUMENT,   grpc::StatusCode::NOT_FOUND,
    grpc::StatusCode::RESOURCE_EXHAUSTED, grpc::StatusCode::DEADLINE_EXCEEDED, grpc::StatusCode::CANCELLED,
    grpc::StatusCode::UNAVAILABLE, grpc::StatusCode::INTERNAL,           grpc::StatusCode::FAILED_PRECONDITION,
    grpc::StatusCode::UNIMPLEMENTED, grpc::StatusCode::UNAUTHENTICATED, grpc::StatusCode::PERMISSION_DENIED};
const FinishReason kReasons[] = {FinishReason::kLength, FinishReason::kEos,   FinishReason::kStop,
                                 FinishReason::kCancelled, FinishReason::kError, FinishReason::kNone};

}  // namespace

const char* api_name(Api api) { return api == Api::kHttp ? "http" : "grpc"; }

void ModelMetrics::count_request(Api api, grpc::StatusCode status, FinishReason reason) {
  auto it = requests.find({api, status, reason});
  if (it == requests.end()) it = requests.find({api, grpc::StatusCode::INTERNAL, FinishReason::kError});
  it->second->Increment();
}

void ModelMetrics::observe_api_duration(Api api, double seconds) {
  // Refused requests (no time measured) would only pile up in the lowest bucket.
  if (prometheus::Histogram* h = api_duration[int(api)]; h && seconds > 0) h->Observe(seconds);
}

Metrics::Metrics(const std::string& listen) : registry_(std::make_shared<prometheus::Registry>()) {
  using namespace prometheus;
  auto& r = *registry_;
  ttft_ = &BuildHistogram().Name("quantserve_time_to_first_token_seconds")
               .Help("Request arrival to the first generated token, including queue time and prefill").Register(r);
  itl_ = &BuildHistogram().Name("quantserve_inter_token_latency_seconds")
              .Help("Time between two consecutive generated tokens of one request").Register(r);
  duration_ = &BuildHistogram().Name("quantserve_request_duration_seconds")
                   .Help("Request arrival to the last token or final status").Register(r);
  api_duration_ = &BuildHistogram().Name("quantserve_api_request_duration_seconds")
                       .Help("Request arrival to its last byte handed to the front door (api: grpc or http)")
                       .Register(r);
  queue_ = &BuildHistogram().Name("quantserve_queue_duration_seconds")
                .Help("Time a request waited before it was admitted to the running batch").Register(r);
  prompt_tokens_ = &BuildCounter().Name("quantserve_prompt_tokens_total")
                        .Help("Prompt tokens of admitted requests").Register(r);
  generated_tokens_ = &BuildCounter().Name("quantserve_generated_tokens_total")
                           .Help("Tokens generated (sampled)").Register(r);
  requests_ = &BuildCounter().Name("quantserve_requests_total")
                   .Help("Finished requests by front door (api), gRPC status (HTTP maps onto it) and finish reason").Register(r);
  running_ = &BuildGauge().Name("quantserve_requests_running").Help("Requests in the running batch").Register(r);
  waiting_ = &BuildGauge().Name("quantserve_requests_waiting")
                  .Help("Requests queued, not yet admitted to the running batch").Register(r);
  batch_size_ = &BuildGauge().Name("quantserve_batch_size").Help("Sequences in the last decode step").Register(r);
  kv_used_ = &BuildGauge().Name("quantserve_kv_cache_blocks_used").Help("KV-cache blocks allocated").Register(r);
  kv_total_ = &BuildGauge().Name("quantserve_kv_cache_blocks_total").Help("KV-cache blocks in total").Register(r);
  kv_bytes_ = &BuildGauge().Name("quantserve_kv_cache_capacity_bytes")
                   .Help("KV-cache budget: bytes of all its blocks, K and V of every layer").Register(r);
  kv_committed_ = &BuildGauge().Name("quantserve_kv_cache_committed_bytes")
                       .Help("Part of the KV-cache budget backed by memory (committed as blocks are first used)")
                       .Register(r);
  kv_used_bytes_ = &BuildGauge().Name("quantserve_kv_cache_used_bytes")
                        .Help("Bytes of the KV-cache blocks held by sequences").Register(r);
  kv_cached_ = &BuildGauge().Name("quantserve_kv_cache_blocks_cached")
                   .Help("KV-cache blocks no sequence holds, kept for prefix reuse (evicted, least recently used "
                         "first, when blocks are needed)")
                   .Register(r);
  kv_window_used_ = &BuildGauge().Name("quantserve_kv_cache_window_blocks_used")
                        .Help("Sliding-window layers' KV-cache blocks of running sequences' rings (held or kept "
                              "for their next positions), for models whose KV cache is split into layer groups "
                              "(Gemma 3); 0 otherwise")
                        .Register(r);
  kv_window_cached_ = &BuildGauge().Name("quantserve_kv_cache_window_blocks_cached")
                          .Help("Sliding-window layers' KV-cache blocks no sequence holds, kept for prefix reuse "
                                "(KV layer groups; 0 otherwise)")
                          .Register(r);
  kv_window_total_ = &BuildGauge().Name("quantserve_kv_cache_window_blocks_total")
                         .Help("Sliding-window layers' KV-cache blocks in total (KV layer groups; 0 otherwise)")
                         .Register(r);
  prefix_queried_ = &BuildCounter().Name("quantserve_prefix_cache_queried_tokens_total")
                         .Help("Prompt tokens of admitted requests looked up in the prefix cache").Register(r);
  prefix_hits_ = &BuildCounter().Name("quantserve_prefix_cache_hit_tokens_total")
                      .Help("Prompt tokens found in the prefix cache (their KV reused, not computed)").Register(r);
  device_used_ = &BuildGauge().Name("quantserve_device_memory_used_bytes")
                      .Help("Memory in use on the device (host RSS on CPU hosts)").Register(r);
  device_total_ = &BuildGauge().Name("quantserve_device_memory_total_bytes")
                       .Help("Memory the device has in total").Register(r);
  weight_bytes_ = &BuildGauge().Name("quantserve_model_weight_bytes")
                       .Help("Bytes of the loaded (quantized) weights").Register(r);
  load_seconds_ = &BuildGauge().Name("quantserve_model_load_seconds").Help("Wall time of the last model load").Register(r);
  quantize_seconds_ = &BuildGauge().Name("quantserve_model_quantize_seconds")
                           .Help("Part of the model load spent quantizing").Register(r);
  quant_error_ = &BuildGauge().Name("quantserve_quantization_relative_error")
                      .Help("Relative Frobenius error ||W - Q(W)|| / ||W|| of the loaded weights by tensor class: "
                            "stat=mean or max over the class's tensors")
                      .Register(r);
  bytes_saved_ = &BuildGauge().Name("quantserve_model_weight_bytes_saved")
                      .Help("Bytes the loaded precision saves against the same weights in fp32").Register(r);
  resident_bytes_ = &BuildGauge().Name("process_resident_memory_bytes")
                         .Help("Resident memory size in bytes").Register(r).Add({});
  unknown_ = &make_model("unknown", "", "", false);
  update_process_memory();

  if (!listen.empty()) {
    HttpServerOptions options;
    options.listen = listen;
    options.name = "metrics";
    options.max_body_bytes = 64 << 10;   // a scrape has no body
    options.max_connections = 256;
    http_ = std::make_unique<HttpServer>(options, [registry = registry_](const HttpRequest& request,
                                                                         std::shared_ptr<HttpExchange> exchange) {
      if (request.method != "GET" && request.method != "HEAD") {
        exchange->respond(405, "text/plain", "only GET\n", {{"Allow", "GET, HEAD"}});
      } else if (request.path != "/metrics" && request.path != "/") {
        exchange->respond(404, "text/plain", "metrics are at /metrics\n");
      } else {
        exchange->respond(200, "text/plain; version=0.0.4; charset=utf-8",
                          prometheus::TextSerializer().Serialize(registry->Collect()));
      }
    });
  }
}

Metrics::~Metrics() = default;

ModelMetrics& Metrics::make_model(const std::string& model, const std::string& precision,
                                  const std::string& kv_cache_dtype, bool with_model_gauges) {
  auto m = std::make_unique<ModelMetrics>();
  m->model = model;
  const prometheus::Labels labels{{"model", model}};
  for (Api api : {Api::kGrpc, Api::kHttp}) {
    for (grpc::StatusCode status : kStatuses) {
      for (FinishReason reason : kReasons) {
        m->requests[{api, status, reason}] =
            &requests_->Add({{"model", model}, {"api", api_name(api)}, {"status", grpc_code_name(status)},
                             {"finish_reason", finish_reason_name(reason)}});
      }
    }
  }
  auto& ref = *m;
  models_[model] = std::move(m);
  if (!with_model_gauges) return ref;   // "unknown": only the refused-request counts
  ModelMetrics* mm = &ref;
  mm->time_to_first_token = &ttft_->Add(labels, kLatencyBuckets);
  mm->inter_token_latency = &itl_->Add(labels, kLatencyBuckets);
  mm->request_duration = &duration_->Add(labels, kLatencyBuckets);
  mm->queue_duration = &queue_->Add(labels, kLatencyBuckets);
  for (Api api : {Api::kGrpc, Api::kHttp}) {
    mm->api_duration[int(api)] = &api_duration_->Add({{"model", model}, {"api", api_name(api)}}, kLatencyBuckets);
  }
  mm->prompt_tokens = &prompt_tokens_->Add(labels);
  mm->generated_tokens = &generated_tokens_->Add(labels);
  mm->requests_running = &running_->Add(labels);
  mm->requests_waiting = &waiting_->Add(labels);
  mm->batch_size = &batch_size_->Add(labels);
  mm->kv_blocks_used = &kv_used_->Add(labels);
  mm->kv_blocks_total = &kv_total_->Add(labels);
  mm->kv_blocks_cached = &kv_cached_->Add(labels);
  mm->kv_window_blocks_used = &kv_window_used_->Add(labels);
  mm->kv_window_blocks_total = &kv_window_total_->Add(labels);
  mm->kv_window_blocks_cached = &kv_window_cached_->Add(labels);
  mm->prefix_cache_queried_tokens = &prefix_queried_->Add(labels);
  mm->prefix_cache_hit_tokens = &prefix_hits_->Add(labels);
  const prometheus::Labels with_dtype{{"model", model}, {"dtype", kv_cache_dtype}};
  mm->kv_cache_bytes = &kv_bytes_->Add(with_dtype);
  mm->kv_cache_committed_bytes = &kv_committed_->Add(with_dtype);
  mm->kv_cache_used_bytes = &kv_used_bytes_->Add(with_dtype);
  const prometheus::Labels with_precision{{"model", model}, {"precision", precision}};
  mm->weight_bytes = &weight_bytes_->Add(with_precision);
  mm->load_seconds = &load_seconds_->Add(with_precision);
  mm->quantize_seconds = &quantize_seconds_->Add(with_precision);
  return ref;
}

ModelMetrics& Metrics::add_model(const std::string& model, const std::string& precision,
                                 const std::string& kv_cache_dtype) {
  QS_CHECK(!models_.count(model), ErrorCode::kInvalidArgument, "model name '", model, "' is used twice");
  return make_model(model, precision, kv_cache_dtype, true);
}

void Metrics::set_quantization(const std::string& model, const std::string& precision, const LoadReport& report) {
  struct Class {
    double sum = 0, max = 0;
    int tensors = 0;
  };
  std::map<std::string, Class> classes;
  for (const TensorReport& t : report.tensors) {
    Class& c = classes[t.tensor_class.empty() ? "other" : t.tensor_class];
    c.sum += t.error.rel_frobenius;
    c.max = std::max(c.max, t.error.rel_frobenius);
    c.tensors++;
  }
  for (const auto& [tensor_class, c] : classes) {
    const prometheus::Labels base{{"model", model}, {"precision", precision}, {"tensor_class", tensor_class}};
    prometheus::Labels mean = base, max = base;
    mean["stat"] = "mean";
    max["stat"] = "max";
    quant_error_->Add(mean).Set(c.sum / c.tensors);
    quant_error_->Add(max).Set(c.max);
  }
  const double saved = double(report.original_bytes) - double(report.weight_bytes);
  bytes_saved_->Add({{"model", model}, {"precision", precision}}).Set(std::max(0.0, saved));
}

void Metrics::register_device(const std::string& device) {
  std::lock_guard<std::mutex> lock(devices_mutex_);
  if (devices_.count(device)) return;
  devices_[device] = {&device_used_->Add({{"device", device}}), &device_total_->Add({{"device", device}})};
}

void Metrics::set_device_memory(const std::string& device, double used_bytes, double total_bytes) {
  std::pair<prometheus::Gauge*, prometheus::Gauge*> gauges{nullptr, nullptr};
  {
    std::lock_guard<std::mutex> lock(devices_mutex_);
    auto it = devices_.find(device);
    if (it == devices_.end()) return;
    gauges = it->second;
  }
  gauges.first->Set(used_bytes);
  gauges.second->Set(total_bytes);
}

void Metrics::update_process_memory() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return;
  unsigned long size_pages = 0, resident_pages = 0;
  if (std::fscanf(f, "%lu %lu", &size_pages, &resident_pages) == 2) {
    resident_bytes_->Set(double(resident_pages) * double(sysconf(_SC_PAGESIZE)));
  }
  std::fclose(f);
}

std::vector<int> Metrics::listening_ports() const {
  return http_ ? std::vector<int>{http_->port()} : std::vector<int>{};
}

}  // namespace qs::server
