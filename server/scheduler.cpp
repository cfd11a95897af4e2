// The engine thread of one model: drains the inbox, runs Engine::step(), turns engine events into metrics and
// per-request callbacks, and publishes the gauges.
#include "server/scheduler.h"

#include <cstdio>

namespace qs::server {

namespace {
double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}
}  // namespace

ModelWorker::ModelWorker(std::string name, std::function<LoadedEngine()> load,
                         std::function<ModelMetrics&(const Model&)> make_metrics, Metrics& all_metrics,
                         const WorkerOptions& options)
    : name_(std::move(name)), all_metrics_(all_metrics), options_(options) {
  thread_ = std::thread([this, load = std::move(load), make_metrics = std::move(make_metrics)] {
    run(load, make_metrics);
  });
  std::unique_lock<std::mutex> lock(mutex_);
  wake_.wait(lock, [this] { return loaded_ || load_error_; });
  if (load_error_) {
    lock.unlock();
    thread_.join();
    std::rethrow_exception(load_error_);
  }
}

ModelWorker::~ModelWorker() { stop(); }

void ModelWorker::run(const std::function<LoadedEngine()>& load,
                      const std::function<ModelMetrics&(const Model&)>& make_metrics) {
  try {
    LoadedEngine loaded = load();
    backend_ = std::move(loaded.backend);
    engine_ = std::move(loaded.engine);
    model_ = &engine_->model();
    metrics_ = &make_metrics(*model_);
    vocab_size_ = model_->config().vocab_size;
    kv_blocks_total_ = engine_->stats().kv_blocks_total;
    prefix_cache_ = engine_->options().prefix_cache;
    device_ = model_->backend().name();
    all_metrics_.register_device(device_);
    const LoadReport& report = model_->report();
    if (metrics_->weight_bytes) metrics_->weight_bytes->Set(double(report.weight_bytes));
    if (metrics_->load_seconds) metrics_->load_seconds->Set(report.load_seconds);
    if (metrics_->quantize_seconds) metrics_->quantize_seconds->Set(report.quantize_seconds);
    all_metrics_.set_quantization(name_, precision_name(report.precision), report);
    update_gauges(true);
  } catch (...) {
    std::lock_guard<std::mutex> lock(mutex_);
    load_error_ = std::current_exception();
    wake_.notify_all();
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    loaded_ = true;
  }
  wake_.notify_all();
  loop();
  // The engine is destroyed on the thread that made it, before the backend it runs on.
  engine_.reset();
  backend_.reset();
}

void ModelWorker::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool ModelWorker::try_reserve() {
  int64_t current = outstanding_.load();
  for (;;) {
    int64_t queued = current - started_.load();
    if (queued >= options_.limits.max_queued) return false;
    if (outstanding_.compare_exchange_weak(current, current + 1)) return true;
  }
}

void ModelWorker::release() { outstanding_.fetch_sub(1); }

void ModelWorker::post(std::function<void(Engine&)> task) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    inbox_.push_back(std::move(task));
  }
  wake_.notify_one();
}

void ModelWorker::submit(std::shared_ptr<GenerationJob> job) {
  post([this, job](Engine&) { do_submit(job); });
}

void ModelWorker::cancel(std::shared_ptr<GenerationJob> job) {
  job->cancel_requested = true;
  post([this, job](Engine& engine) {
    if (job->engine_id != 0 && active_.count(job->engine_id)) engine.cancel(job->engine_id);
  });
}

void ModelWorker::cancel_all() {
  post([this](Engine& engine) {
    cancel_everything_ = true;
    for (auto& [id, job] : active_) {
      job->cancelled_by_server = true;
      engine.cancel(id);
    }
  });
}

void ModelWorker::do_submit(const std::shared_ptr<GenerationJob>& job) {
  job->submitted = Clock::now();
  if (cancel_everything_) job->cancelled_by_server = true;
  if (job->cancel_requested || job->cancelled_by_server) {
    GenerationEvent event;
    event.finish = FinishReason::kCancelled;
    handle_event(job, event);
    return;
  }
  try {
    std::vector<int32_t> ids = job->prompt_ids;
    if (ids.empty()) {
      const Tokenizer& tokenizer = engine_->tokenizer();
      std::string text = !job->messages.empty() ? engine_->apply_chat_template(job->messages)
                         : job->chat      ? engine_->apply_chat_template(job->prompt, job->system_prompt)
                                          : job->prompt;
      ids = tokenizer.encode(text, /*parse_special=*/job->chat || !job->messages.empty());
      if (tokenizer.add_bos() && tokenizer.bos_id() >= 0 && (ids.empty() || ids.front() != tokenizer.bos_id())) {
        ids.insert(ids.begin(), tokenizer.bos_id());
      }
    }
    QS_CHECK(!ids.empty(), ErrorCode::kInvalidArgument, "the prompt encodes to no tokens");
    QS_CHECK(int64_t(ids.size()) <= options_.limits.max_prompt_tokens, ErrorCode::kInvalidArgument, "the prompt has ",
             ids.size(), " tokens, over the server's limit of ", options_.limits.max_prompt_tokens,
             " (--max-prompt-tokens)");
    const size_t prompt_tokens = ids.size();
    if (job->max_new_tokens_to_context) {
      const int64_t room = engine_->options().max_context - int64_t(prompt_tokens);
      if (room >= 1 && room < job->params.max_new_tokens) job->params.max_new_tokens = int32_t(room);
    }
    std::shared_ptr<GenerationJob> keep = job;
    uint64_t id = engine_->submit(std::move(ids), job->params,
                                  [this, keep](const GenerationEvent& event) { handle_event(keep, event); });
    metrics_->prompt_tokens->Increment(double(prompt_tokens));
    if (!job->done) {
      job->engine_id = id;
      active_[id] = job;
    }
  } catch (const Error& e) {
    job->done = true;
    outstanding_.fetch_sub(1);
    job->on_error(e);
  } catch (const std::exception& e) {
    job->done = true;
    outstanding_.fetch_sub(1);
    job->on_error(Error(ErrorCode::kInternal, e.what()));
  }
}

void ModelWorker::handle_event(const std::shared_ptr<GenerationJob>& job_ptr, const GenerationEvent& event) {
  GenerationJob& job = *job_ptr;
  if (job.done) return;
  const Clock::time_point now = Clock::now();
  const bool final = event.finish != FinishReason::kNone;
  if (!job.queue_observed && (!event.token_ids.empty() || final || event.queue_seconds > 0)) {
    job.queue_observed = true;
    job.queue_seconds = seconds_between(job.arrival, job.submitted) + event.queue_seconds;
    metrics_->queue_duration->Observe(job.queue_seconds);
  }
  if (!job.started) {
    // Admitted (or finished while waiting): no longer counts against --max-queued.
    job.started = true;
    started_.fetch_add(1);
  }
  const size_t n = event.token_ids.size();
  if (n > 0) {
    if (!job.got_first_token) {
      job.got_first_token = true;
      job.first_token_seconds = seconds_between(job.arrival, now);
      metrics_->time_to_first_token->Observe(job.first_token_seconds);
      // Several tokens in the first event: the ones after the first are spread over no time.
      for (size_t i = 1; i < n; ++i) metrics_->inter_token_latency->Observe(0);
    } else {
      double each = seconds_between(job.last_token, now) / double(n);
      for (size_t i = 0; i < n; ++i) metrics_->inter_token_latency->Observe(each);
    }
    job.last_token = now;
    metrics_->generated_tokens->Increment(double(n));
  }
  job.total_seconds = seconds_between(job.arrival, now);
  if (final) {
    job.done = true;
    metrics_->request_duration->Observe(job.total_seconds);
    if (job.engine_id) finished_.push_back(job.engine_id);
    started_.fetch_sub(1);
    outstanding_.fetch_sub(1);
  }
  job.on_event(event);
}

void ModelWorker::fail_all(const std::string& why) {
  std::fprintf(stderr, "quantserve: engine step failed for model %s: %s\n", name_.c_str(), why.c_str());
  for (auto& [id, job] : active_) {
    if (job->done) continue;
    job->done = true;
    if (job->started) started_.fetch_sub(1);
    outstanding_.fetch_sub(1);
    job->on_error(Error(ErrorCode::kInternal, "engine step failed: " + why));
    try {
      engine_->cancel(id);
    } catch (...) {
    }
  }
  active_.clear();
}

void ModelWorker::update_gauges(bool memory) {
  EngineStats stats = engine_->stats();
  metrics_->requests_running->Set(double(stats.running));
  metrics_->requests_waiting->Set(double(stats.waiting));
  metrics_->batch_size->Set(double(stats.last_batch_size));
  metrics_->kv_blocks_used->Set(double(stats.kv_blocks_used));
  metrics_->kv_blocks_total->Set(double(stats.kv_blocks_total));
  metrics_->kv_cache_bytes->Set(double(stats.kv_cache_bytes));
  metrics_->kv_cache_committed_bytes->Set(double(stats.kv_cache_committed_bytes));
  metrics_->kv_cache_used_bytes->Set(double(stats.kv_cache_used_bytes));
  metrics_->kv_blocks_cached->Set(double(stats.kv_blocks_cached));
  metrics_->kv_window_blocks_used->Set(double(stats.kv_window_blocks_used));
  metrics_->kv_window_blocks_total->Set(double(stats.kv_window_blocks_total));
  metrics_->kv_window_blocks_cached->Set(double(stats.kv_window_blocks_cached));
  // The engine counts since it started; the counters advance by what is new since the last update.
  metrics_->prefix_cache_queried_tokens->Increment(double(stats.prefix_cache_queried_tokens - prefix_queried_seen_));
  metrics_->prefix_cache_hit_tokens->Increment(double(stats.prefix_cache_hit_tokens - prefix_hits_seen_));
  prefix_queried_seen_ = stats.prefix_cache_queried_tokens;
  prefix_hits_seen_ = stats.prefix_cache_hit_tokens;
  if (memory) {
    MemoryInfo info = model_->backend().memory_info();
    all_metrics_.set_device_memory(device_, double(info.used_bytes), double(info.total_bytes));
    all_metrics_.update_process_memory();
  }
}

double ModelWorker::stalled_seconds() const {
  if (outstanding_.load() == 0) return 0;
  const int64_t now = Clock::now().time_since_epoch().count();
  return std::chrono::duration<double>(Clock::duration(now - heartbeat_ns_.load())).count();
}

void ModelWorker::loop() {
  Clock::time_point last_memory = Clock::now();
  const auto step_delay = std::chrono::duration<double, std::milli>(options_.step_delay_ms);
  for (;;) {
    heartbeat_ns_.store(Clock::now().time_since_epoch().count());
    std::deque<std::function<void(Engine&)>> tasks;
    bool stopping = false;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (!stopping_ && inbox_.empty() && !engine_->has_work()) {
        wake_.wait_for(lock, std::chrono::milliseconds(250));
      }
      tasks.swap(inbox_);
      stopping = stopping_;
    }
    for (auto& task : tasks) {
      try {
        task(*engine_);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "quantserve: engine task failed for model %s: %s\n", name_.c_str(), e.what());
      }
    }
    if (stopping) {
      cancel_everything_ = true;
      for (auto& [id, job] : active_) {
        job->cancelled_by_server = true;
        try {
          engine_->cancel(id);
        } catch (...) {
        }
      }
      // Let the engine retire the cancelled requests (it does so at its next step), bounded.
      for (int i = 0; i < 1000 && engine_->has_work(); ++i) {
        try {
          engine_->step();
        } catch (const std::exception& e) {
          break;
        }
      }
      for (auto& [id, job] : active_) {
        GenerationEvent event;
        event.finish = FinishReason::kCancelled;
        handle_event(job, event);
      }
      active_.clear();
      update_gauges(false);
      return;
    }
    if (engine_->has_work()) {
      try {
        engine_->step();
      } catch (const std::exception& e) {
        fail_all(e.what());
      }
    }
    for (uint64_t id : finished_) active_.erase(id);
    finished_.clear();
    Clock::time_point now = Clock::now();
    bool memory = now - last_memory >= std::chrono::seconds(1);
    if (memory) last_memory = now;
    update_gauges(memory);
    if (options_.step_delay_ms > 0 && engine_->has_work()) std::this_thread::sleep_for(step_delay);
  }
}

}  // namespace qs::server
