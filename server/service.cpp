// Reactors for Generate (unary) and GenerateStream (server streaming), and the small RPCs.
#include "server/service.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <mutex>

#include "engine/kv_cache.h"
#include "kernels/backend.h"
#include "server/request_validation.h"
#include "server/status.h"

namespace qs::server {

namespace v1 = quantserve::v1;

namespace {

v1::FinishReason to_proto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength: return v1::FINISH_REASON_LENGTH;
    case FinishReason::kEos: return v1::FINISH_REASON_EOS;
    case FinishReason::kStop: return v1::FINISH_REASON_STOP;
    case FinishReason::kCancelled: return v1::FINISH_REASON_CANCELLED;
    default: return v1::FINISH_REASON_UNSPECIFIED;
  }
}

grpc::Status invalid(const std::string& message) { return {grpc::StatusCode::INVALID_ARGUMENT, message}; }

// Adds one engine event's tokens, text and log-probabilities to a response or chunk.
void append_event(v1::GenerateResponse& response, const GenerationEvent& event, bool with_logprobs) {
  response.mutable_text()->append(event.text);
  for (size_t i = 0; i < event.token_ids.size(); ++i) {
    response.add_token_ids(event.token_ids[i]);
    if (!with_logprobs) continue;
    v1::TokenLogprob* lp = response.add_logprobs();
    lp->set_token_id(event.token_ids[i]);
    if (i < event.logprobs.size()) lp->set_logprob(event.logprobs[i].logprob);
    if (i < event.top_logprobs.size()) {
      for (const TokenLogprob& top : event.top_logprobs[i]) {
        v1::TopLogprob* t = lp->add_top();
        t->set_token_id(top.token);
        t->set_logprob(top.logprob);
      }
    }
  }
}

void fill_usage_timings(v1::GenerateResponse& response, const GenerationEvent& event, const GenerationJob& job) {
  response.mutable_usage()->set_prompt_tokens(event.prompt_tokens);
  response.mutable_usage()->set_generated_tokens(event.generated_tokens);
  response.mutable_timings()->set_queue_seconds(job.queue_seconds);
  response.mutable_timings()->set_time_to_first_token_seconds(job.first_token_seconds);
  response.mutable_timings()->set_total_seconds(job.total_seconds);
}

bool deadline_passed(const grpc::CallbackServerContext* context) {
  return context->deadline() <= std::chrono::system_clock::now();
}

// The shared half of Generate and GenerateStream: validation, job set-up, final status, the log line and the
// requests counter. Lifetime: two references, one for gRPC (dropped in OnDone) and one for the engine thread
// (dropped after the final event or the refusal), so neither side can see the call freed under it.
class GenerationCall {
 public:
  GenerationCall(InferenceService& service, grpc::CallbackServerContext* context)
      : service_(service), context_(context), request_id_(service.next_request_id()) {
    service_.active_calls_counter().fetch_add(1);
  }
  virtual ~GenerationCall() { service_.active_calls_counter().fetch_sub(1); }

 protected:
  // Validates and posts the job. Returns a non-OK status when the call must finish at once.
  grpc::Status begin(const v1::GenerateRequest& request) {
    model_name_ = printable(request.model());
    job_ = std::make_shared<GenerationJob>();
    job_->request_id = request_id_;
    grpc::Status status = service_.prepare(request, &worker_, *job_);
    if (!status.ok()) return status;
    model_name_ = worker_->name();
    with_logprobs_ = request.logprobs() > 0;
    refs_.fetch_add(1);   // the engine side's reference
    job_->on_event = [this](const GenerationEvent& event) { on_event(event); };
    job_->on_error = [this](const Error& error) { on_error(error); };
    worker_->submit(job_);
    return grpc::Status::OK;
  }

  virtual void on_event(const GenerationEvent& event) = 0;
  virtual void on_error(const Error& error) = 0;

  void cancel() {
    if (worker_ && job_) worker_->cancel(job_);
  }

  grpc::Status final_status(const GenerationEvent& event) const {
    switch (event.finish) {
      case FinishReason::kCancelled:
        if (job_->cancelled_by_server) {
          return {grpc::StatusCode::UNAVAILABLE, "the server is shutting down and its drain grace period ended"};
        }
        if (deadline_passed(context_)) return {grpc::StatusCode::DEADLINE_EXCEEDED, "the request's deadline passed"};
        return {grpc::StatusCode::CANCELLED, "the request was cancelled"};
      case FinishReason::kError:
        return {grpc::StatusCode::INTERNAL, "internal error in request " + request_id_ + ": " + event.error};
      default:
        return grpc::Status::OK;
    }
  }

  // One log line and one count per request, whatever its end.
  void record(const grpc::Status& status, FinishReason reason) {
    ModelMetrics& m = worker_ ? worker_->metrics() : service_.metrics().unknown_model();
    m.count_request(Api::kGrpc, status.error_code(), reason);
    const GenerationJob* j = job_.get();
    if (j) m.observe_api_duration(Api::kGrpc, j->total_seconds);
    std::fprintf(stderr,
                 "quantserve: request %s api=grpc model=%s prompt_tokens=%d generated_tokens=%d queue_ms=%.1f ttft_ms=%.1f "
                 "total_ms=%.1f status=%s finish=%s%s%s\n",
                 request_id_.c_str(), model_name_.empty() ? "-" : model_name_.c_str(), prompt_tokens_,
                 generated_tokens_, j ? j->queue_seconds * 1e3 : 0.0, j ? j->first_token_seconds * 1e3 : 0.0,
                 j ? j->total_seconds * 1e3 : 0.0, grpc_code_name(status.error_code()), finish_reason_name(reason),
                 status.ok() ? "" : " message=", status.ok() ? "" : status.error_message().c_str());
  }

  void unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  InferenceService& service_;
  grpc::CallbackServerContext* context_;
  std::string request_id_;
  std::string model_name_;
  ModelWorker* worker_ = nullptr;
  std::shared_ptr<GenerationJob> job_;
  bool with_logprobs_ = false;
  int32_t prompt_tokens_ = 0;
  int32_t generated_tokens_ = 0;

 private:
  std::atomic<int> refs_{1};   // gRPC's
};

class UnaryGenerateCall final : public grpc::ServerUnaryReactor, public GenerationCall {
 public:
  UnaryGenerateCall(InferenceService& service, grpc::CallbackServerContext* context,
                    const v1::GenerateRequest* request, v1::GenerateResponse* response)
      : GenerationCall(service, context), response_(response) {
    response_->set_request_id(request_id_);
    grpc::Status status = begin(*request);
    if (!status.ok()) {
      record(status, FinishReason::kNone);
      Finish(status);
    }
  }

  void OnCancel() override { cancel(); }
  void OnDone() override { unref(); }

 private:
  // Engine thread; the response is touched by nobody else until Finish.
  void on_event(const GenerationEvent& event) override {
    append_event(*response_, event, with_logprobs_);
    prompt_tokens_ = event.prompt_tokens;
    generated_tokens_ = event.generated_tokens;
    if (event.finish == FinishReason::kNone) return;
    response_->set_model(model_name_);
    response_->set_finish_reason(to_proto(event.finish));
    fill_usage_timings(*response_, event, *job_);
    grpc::Status status = final_status(event);
    record(status, event.finish);
    Finish(status);
    unref();
  }

  void on_error(const Error& error) override {
    grpc::Status status = to_grpc_status(error, request_id_);
    record(status, status.error_code() == grpc::StatusCode::INTERNAL ? FinishReason::kError : FinishReason::kNone);
    Finish(status);
    unref();
  }

  v1::GenerateResponse* response_;
};

class StreamGenerateCall final : public grpc::ServerWriteReactor<v1::GenerateResponse>, public GenerationCall {
 public:
  StreamGenerateCall(InferenceService& service, grpc::CallbackServerContext* context,
                     const v1::GenerateRequest* request)
      : GenerationCall(service, context) {
    grpc::Status status = begin(*request);
    if (!status.ok()) {
      record(status, FinishReason::kNone);
      Finish(status);
    }
  }

  void OnCancel() override { cancel(); }
  void OnDone() override { unref(); }

  void OnWriteDone(bool ok) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      writing_ = false;
      if (!ok) {
        broken_ = true;   // the client is gone: drop what is queued, finish when the engine says so
        pending_.Clear();
        has_pending_ = false;
      }
    }
    if (!ok) cancel();
    pump();
  }

 private:
  // Engine thread. Events that arrive while a write is in flight are merged into one pending chunk, so a slow
  // reader costs one chunk of memory, not one per token.
  void on_event(const GenerationEvent& event) override {
    const bool final = event.finish != FinishReason::kNone;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      prompt_tokens_ = event.prompt_tokens;
      generated_tokens_ = event.generated_tokens;
      if (!broken_ && (final || !event.token_ids.empty() || !event.text.empty())) {
        pending_.set_request_id(request_id_);
        pending_.set_model(model_name_);
        append_event(pending_, event, with_logprobs_);
        fill_usage_timings(pending_, event, *job_);
        if (final) pending_.set_finish_reason(to_proto(event.finish));
        has_pending_ = true;
      }
      if (final) {
        final_ = true;
        final_reason_ = event.finish;
        final_status_ = final_status(event);
      }
    }
    pump();
    if (final) unref();
  }

  void on_error(const Error& error) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      final_ = true;
      final_status_ = to_grpc_status(error, request_id_);
      final_reason_ =
          final_status_.error_code() == grpc::StatusCode::INTERNAL ? FinishReason::kError : FinishReason::kNone;
      pending_.Clear();
      has_pending_ = false;
    }
    pump();
    unref();
  }

  // Starts the next write or the Finish; never holds the lock while calling into gRPC.
  void pump() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (writing_ || finish_called_) return;
    if (has_pending_) {
      current_.Swap(&pending_);
      pending_.Clear();
      has_pending_ = false;
      writing_ = true;
      lock.unlock();
      StartWrite(&current_);
      return;
    }
    if (!final_) return;
    finish_called_ = true;
    grpc::Status status = final_status_;
    FinishReason reason = final_reason_;
    lock.unlock();
    record(status, reason);
    Finish(status);   // after this the call may be freed by OnDone: touch nothing
  }

  std::mutex mutex_;
  v1::GenerateResponse pending_;
  v1::GenerateResponse current_;
  bool has_pending_ = false;
  bool writing_ = false;
  bool broken_ = false;
  bool final_ = false;
  bool finish_called_ = false;
  grpc::Status final_status_;
  FinishReason final_reason_ = FinishReason::kNone;
};

}  // namespace

InferenceService::InferenceService(std::vector<ModelWorker*> workers, const ServeOptions& options, Metrics& metrics,
                                   const TokenAuth* auth)
    : workers_(std::move(workers)),
      options_(options),
      metrics_(metrics),
      auth_(auth),
      tokenize_worker_(options.limits.max_tokenize_queued) {
  for (ModelWorker* w : workers_) {
    ServerLimits limits = options_.limits;
    limits.prefix_cache = limits.prefix_cache && w->prefix_cache();   // off for a model with KV layer groups
    infos_[w->name()] = describe_model(w->name(), w->model(), limits, w->kv_blocks_total(), w->engine_options());
  }
}

ModelWorker* InferenceService::find_worker(const std::string& name) const {
  if (workers_.empty()) return nullptr;
  if (name.empty()) return workers_.front();
  for (ModelWorker* w : workers_) {
    if (w->name() == name) return w;
  }
  return nullptr;
}

grpc::Status InferenceService::prepare(const v1::GenerateRequest& request, ModelWorker** worker_out,
                                       GenerationJob& job) {
  if (draining_) return {grpc::StatusCode::UNAVAILABLE, "the server is shutting down; retry on another replica"};
  ModelWorker* worker = find_worker(request.model());
  if (!worker) {
    std::string served;
    for (ModelWorker* w : workers_) served += (served.empty() ? "" : ", ") + w->name();
    return {grpc::StatusCode::NOT_FOUND, "unknown model '" + printable(request.model()) + "'; this server serves: " + served};
  }
  *worker_out = worker;
  const ServerLimits& limits = options_.limits;
  ValidatedGeneration valid;
  if (grpc::Status status = validate_generate_request(request, limits, worker->vocab_size(),
                                                      options_.json_whitespace != "none", valid);
      !status.ok()) {
    return status;
  }
  job.prompt = std::move(valid.prompt);
  job.prompt_ids = std::move(valid.prompt_ids);
  job.chat = valid.chat;
  job.system_prompt = std::move(valid.system_prompt);
  job.messages = std::move(valid.messages);
  job.params = std::move(valid.params);

  if (!worker->try_reserve()) {
    return {grpc::StatusCode::RESOURCE_EXHAUSTED,
            "the queue of model '" + worker->name() + "' is full (" + std::to_string(limits.max_queued) +
                " requests waiting, --max-queued); retry later"};
  }
  return grpc::Status::OK;
}

grpc::Status InferenceService::authorize(const grpc::CallbackServerContext* context, AuthScope scope) {
  if (!auth_) return grpc::Status::OK;
  std::string authorization;
  const auto& metadata = context->client_metadata();
  if (auto it = metadata.find("authorization"); it != metadata.end()) {
    authorization.assign(it->second.data(), it->second.size());
  }
  const AuthResult result = auth_->check(authorization, scope);
  if (result == AuthResult::kAllowed) return grpc::Status::OK;
  const grpc::StatusCode code =
      result == AuthResult::kForbidden ? grpc::StatusCode::PERMISSION_DENIED : grpc::StatusCode::UNAUTHENTICATED;
  metrics_.unknown_model().count_request(Api::kGrpc, code, FinishReason::kNone);
  std::fprintf(stderr, "quantserve: request refused api=grpc status=%s message=%s\n", grpc_code_name(code),
               auth_message(result));
  return {code, auth_message(result)};
}

namespace {
// A stream refused before it starts (authentication): finishes at once.
class RefusedStream final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  explicit RefusedStream(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};
}  // namespace

grpc::ServerUnaryReactor* InferenceService::Generate(grpc::CallbackServerContext* context,
                                                     const v1::GenerateRequest* request,
                                                     v1::GenerateResponse* response) {
  if (grpc::Status denied = authorize(context, AuthScope::kAll); !denied.ok()) {
    auto* reactor = context->DefaultReactor();
    reactor->Finish(denied);
    return reactor;
  }
  return new UnaryGenerateCall(*this, context, request, response);
}

grpc::ServerWriteReactor<v1::GenerateResponse>* InferenceService::GenerateStream(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  if (grpc::Status denied = authorize(context, AuthScope::kAll); !denied.ok()) return new RefusedStream(denied);
  return new StreamGenerateCall(*this, context, request);
}

grpc::ServerUnaryReactor* InferenceService::ListModels(grpc::CallbackServerContext* context,
                                                       const v1::ListModelsRequest*,
                                                       v1::ListModelsResponse* response) {
  if (grpc::Status denied = authorize(context, AuthScope::kRead); !denied.ok()) {
    auto* reactor = context->DefaultReactor();
    reactor->Finish(denied);
    return reactor;
  }
  for (ModelWorker* w : workers_) {
    const v1::ModelInfo& info = infos_.at(w->name());
    v1::ModelSummary* s = response->add_models();
    s->set_name(info.name());
    s->set_architecture(info.architecture());
    s->set_precision(info.precision());
    s->set_device(info.device());
    s->set_path(info.path());
  }
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* InferenceService::GetModel(grpc::CallbackServerContext* context,
                                                     const v1::GetModelRequest* request, v1::ModelInfo* response) {
  auto* reactor = context->DefaultReactor();
  if (grpc::Status denied = authorize(context, AuthScope::kRead); !denied.ok()) {
    reactor->Finish(denied);
    return reactor;
  }
  ModelWorker* worker = find_worker(request->name());
  if (!worker) {
    reactor->Finish({grpc::StatusCode::NOT_FOUND, "unknown model '" + printable(request->name()) + "'"});
    return reactor;
  }
  *response = infos_.at(worker->name());
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* InferenceService::Tokenize(grpc::CallbackServerContext* context,
                                                     const v1::TokenizeRequest* request,
                                                     v1::TokenizeResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (grpc::Status denied = authorize(context, AuthScope::kRead); !denied.ok()) {
    reactor->Finish(denied);
    return reactor;
  }
  ModelWorker* worker = find_worker(request->model());
  if (!worker) {
    reactor->Finish({grpc::StatusCode::NOT_FOUND, "unknown model '" + printable(request->model()) + "'"});
    return reactor;
  }
  if (int64_t(request->text().size()) > options_.limits.max_prompt_tokens * 64) {
    reactor->Finish(invalid("the text is over the server's prompt limit (--max-prompt-tokens)"));
    return reactor;
  }
  // Off the engine thread: the tokenizer (its word cache locks itself) and the chat template are read-only after
  // load, so a Tokenize neither waits for a decode step nor delays one (16 calls of 256 KiB once held a 2-token
  // Generate 1.26 s). Bounded like Generate: past --max-tokenize-queued the call is refused at once.
  const bool posted = tokenize_worker_.try_post([reactor, request, response, worker] {
    try {
      const Tokenizer& tokenizer = worker->tokenizer();
      std::string text = request->chat()
                             ? render_chat_template(worker->model().config().chat_template, {{"user", request->text()}})
                             : request->text();
      std::vector<int32_t> ids = tokenizer.encode(text, request->parse_special() || request->chat());
      for (int32_t id : ids) {
        response->add_token_ids(id);
        response->add_tokens(tokenizer.token_bytes(id));
      }
      reactor->Finish(grpc::Status::OK);
    } catch (const Error& e) {
      reactor->Finish(to_grpc_status(e, "tokenize"));
    } catch (const std::exception& e) {
      reactor->Finish({grpc::StatusCode::INTERNAL, std::string("tokenize: ") + e.what()});
    }
  });
  if (!posted) {
    reactor->Finish({grpc::StatusCode::RESOURCE_EXHAUSTED,
                     std::to_string(tokenize_worker_.max_pending()) +
                         " Tokenize calls are already pending (--max-tokenize-queued); retry later"});
  }
  return reactor;
}

v1::ModelInfo describe_model(const std::string& name, const Model& model, const ServerLimits& limits,
                             int64_t kv_blocks_total, const EngineOptions& engine) {
  const ModelConfig& config = model.config();
  const LoadReport& report = model.report();
  v1::ModelInfo info;
  info.set_name(name);
  info.set_path(report.model_path);
  info.set_format(report.format);
  info.set_architecture(architecture_name(config.arch));
  info.set_precision(precision_name(report.precision));
  info.set_group_size(report.group_size);
  info.set_device(report.device.empty() ? model.backend().name() : report.device);
  info.set_vocab_size(config.vocab_size);
  info.set_hidden_size(config.hidden_size);
  info.set_num_layers(config.num_layers);
  info.set_num_heads(config.num_heads);
  info.set_num_kv_heads(config.num_kv_heads);
  info.set_max_positions(config.max_positions);
  info.set_has_chat_template(!config.chat_template.empty());
  info.set_weight_bytes(report.weight_bytes);
  info.set_original_bytes(report.original_bytes);
  info.set_load_seconds(report.load_seconds);
  info.set_quantize_seconds(report.quantize_seconds);
  info.set_peak_device_bytes(report.peak_device_bytes);
  for (const auto& [cls, bytes] : report.bytes_by_class) (*info.mutable_bytes_by_class())[cls] = bytes;

  // Per tensor class: max of maxima, element-weighted mean, median of medians, element-weighted RMS of the
  // relative Frobenius errors (the report has no per-tensor norms to combine them exactly).
  struct ClassSum {
    int tensors = 0;
    uint64_t bytes = 0, original = 0;
    double max_abs = 0, mean_weighted = 0, rel2_weighted = 0, elements = 0;
    std::vector<double> medians;
  };
  std::map<std::string, ClassSum> classes;
  auto& by_precision = *info.mutable_weight_bytes_by_precision();
  for (const TensorReport& t : report.tensors) {
    double n = 1;
    for (int64_t d : t.shape) n *= double(d);
    ClassSum& c = classes[t.tensor_class.empty() ? "other" : t.tensor_class];
    c.tensors++;
    c.bytes += t.bytes;
    c.original += t.original_bytes;
    c.max_abs = std::max(c.max_abs, t.error.max_abs);
    c.mean_weighted += t.error.mean_abs * n;
    c.rel2_weighted += t.error.rel_frobenius * t.error.rel_frobenius * n;
    c.elements += n;
    c.medians.push_back(t.error.median_abs);
    by_precision[precision_name(t.precision)] += t.bytes;
  }
  if (report.tensors.empty()) by_precision[precision_name(report.precision)] = report.weight_bytes;
  for (auto& [cls, c] : classes) {
    v1::TensorClassReport* r = info.add_quantization();
    r->set_tensor_class(cls);
    r->set_tensors(c.tensors);
    r->set_bytes(c.bytes);
    r->set_original_bytes(c.original);
    r->set_max_abs_error(c.max_abs);
    if (c.elements > 0) {
      r->set_mean_abs_error(c.mean_weighted / c.elements);
      r->set_rel_frobenius_error(std::sqrt(c.rel2_weighted / c.elements));
    }
    if (!c.medians.empty()) {
      std::nth_element(c.medians.begin(), c.medians.begin() + c.medians.size() / 2, c.medians.end());
      r->set_median_abs_error(c.medians[c.medians.size() / 2]);
    }
  }

  v1::ServerLimits* l = info.mutable_limits();
  l->set_max_queued(limits.max_queued);
  l->set_max_batch_size(limits.max_batch_size);
  l->set_max_batch_tokens(limits.max_batch_tokens);
  l->set_max_prompt_tokens(limits.max_prompt_tokens);
  l->set_max_new_tokens(limits.max_new_tokens);
  l->set_max_message_bytes(limits.max_message_bytes);
  l->set_kv_cache_tokens(limits.kv_cache_tokens);
  l->set_kv_cache_blocks_total(kv_blocks_total);
  l->set_prefix_cache(limits.prefix_cache);
  if (engine.kv_cache_dtype) {
    l->set_kv_cache_dtype(kv_cache_dtype_name(*engine.kv_cache_dtype));
    l->set_kv_cache_bytes_per_token(int64_t(2 * size_t(config.num_layers * config.num_kv_heads) *
                                            kv_head_bytes(*engine.kv_cache_dtype, config.head_dim)));
  }
  l->set_kv_cache_bytes(engine.kv_cache_bytes);
  return info;
}

}  // namespace qs::server
