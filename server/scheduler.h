// One engine thread per model: it owns the Engine (not thread-safe) and runs step() in a loop. RPC threads only
// post work to its inbox (submit, cancel, small tasks) and receive events through the callbacks they passed.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/engine.h"
#include "kernels/backend.h"
#include "kernels/error.h"
#include "server/config.h"
#include "server/metrics.h"

namespace qs::server {

using Clock = std::chrono::steady_clock;

// One generation request as the engine thread sees it. The callbacks run on the engine thread; after the
// final event (finish != kNone) or on_error, neither is called again.
struct GenerationJob {
  std::string request_id;              // "req-17", for logs and error messages
  std::string prompt;                  // text, or empty with prompt_ids
  std::vector<int32_t> prompt_ids;
  bool chat = false;
  std::string system_prompt;
  std::vector<ChatMessage> messages;   // a conversation (chat); when set, prompt and system_prompt are empty
  SamplingParams params;
  // OpenAI's "no max_tokens": params.max_new_tokens is lowered to what the context has room for after the prompt.
  bool max_new_tokens_to_context = false;
  Clock::time_point arrival = Clock::now();

  // Timings the server measures (arrival-based), filled by the worker before on_event is called.
  double queue_seconds = 0;
  double first_token_seconds = 0;
  double total_seconds = 0;

  std::function<void(const GenerationEvent&)> on_event;
  std::function<void(const Error&)> on_error;   // refused at submit: nothing else follows

  std::atomic<bool> cancel_requested{false};
  std::atomic<bool> cancelled_by_server{false};  // shutdown past its grace period

  // Engine thread only.
  uint64_t engine_id = 0;
  Clock::time_point submitted;
  Clock::time_point last_token;
  bool got_first_token = false;
  bool queue_observed = false;
  bool started = false;                // counted in the worker's started_
  bool done = false;                   // the final event or the error has been delivered
};

// The limits and timings the worker needs.
struct WorkerOptions {
  ServerLimits limits;
  double step_delay_ms = 0;
};

// What a loader hands the engine thread: the backend (outlives the engine) and the engine.
struct LoadedEngine {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Engine> engine;
};

class ModelWorker {
 public:
  // Starts the engine thread and runs `load` on it, so that the backend's per-thread state (OpenMP thread count,
  // oneDNN primitives) belongs to the thread that will run every step; waits for the load and rethrows its
  // error. `make_metrics` (also called there, before anything is served) gives the model's metric children.
  ModelWorker(std::string name, std::function<LoadedEngine()> load,
              std::function<ModelMetrics&(const Model&)> make_metrics, Metrics& all_metrics,
              const WorkerOptions& options);
  ~ModelWorker();
  ModelWorker(const ModelWorker&) = delete;
  ModelWorker& operator=(const ModelWorker&) = delete;

  const std::string& name() const { return name_; }
  // Read-only after construction; safe from any thread (the engine never changes its model or tokenizer).
  const Model& model() const { return *model_; }
  // Likewise read-only after construction (token_bytes, ids): safe from any thread.
  const Tokenizer& tokenizer() const { return engine_->tokenizer(); }
  int64_t vocab_size() const { return vocab_size_; }
  int64_t kv_blocks_total() const { return kv_blocks_total_; }
  // The options the engine resolved at load (KV dtype and capacity among them); read-only after construction.
  const EngineOptions& engine_options() const { return engine_->options(); }
  // Whether the engine caches prefixes: the flag, unless the model cannot (KV layer groups turn it off).
  bool prefix_cache() const { return prefix_cache_; }
  ModelMetrics& metrics() { return *metrics_; }

  // Cancels whatever is left, stops the engine thread and joins it.
  void stop();

  // Admission against --max-queued (requests posted but not yet running). Call release() if the request is
  // not submitted after all; submitted requests release themselves when they finish.
  bool try_reserve();
  void release();
  int64_t outstanding() const { return outstanding_.load(); }
  // Seconds the engine thread has gone without finishing a loop iteration while requests wait for it; 0 when it
  // has nothing to do. The serve loop's watchdog reports NOT_SERVING past --engine-stall-seconds.
  double stalled_seconds() const;

  void submit(std::shared_ptr<GenerationJob> job);
  void cancel(std::shared_ptr<GenerationJob> job);
  // Server shutdown past the grace period: every request finishes now with kCancelled.
  void cancel_all();
  // Runs `task` on the engine thread (tokenization, chat templates: anything that touches the Engine).
  void post(std::function<void(Engine&)> task);

 private:
  void run(const std::function<LoadedEngine()>& load, const std::function<ModelMetrics&(const Model&)>& make_metrics);
  void loop();
  void do_submit(const std::shared_ptr<GenerationJob>& job);
  void handle_event(const std::shared_ptr<GenerationJob>& job, const GenerationEvent& event);
  void update_gauges(bool memory);
  void fail_all(const std::string& why);

  std::string name_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Engine> engine_;
  const Model* model_ = nullptr;
  int64_t vocab_size_ = 0;
  int64_t kv_blocks_total_ = 0;
  bool prefix_cache_ = false;
  int64_t prefix_queried_seen_ = 0;   // EngineStats' prefix-cache counts already added to the metrics
  int64_t prefix_hits_seen_ = 0;
  ModelMetrics* metrics_ = nullptr;
  Metrics& all_metrics_;
  WorkerOptions options_;
  std::string device_;
  bool loaded_ = false;
  std::exception_ptr load_error_;

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void(Engine&)>> inbox_;
  bool stopping_ = false;

  std::atomic<int64_t> outstanding_{0};   // reserved, not yet finished
  std::atomic<int64_t> heartbeat_ns_{0};  // steady-clock time of the engine thread's last loop iteration
  std::atomic<int64_t> started_{0};       // reserved and admitted (an event seen), not yet finished
  // Engine thread only.
  std::unordered_map<uint64_t, std::shared_ptr<GenerationJob>> active_;
  std::vector<uint64_t> finished_;     // retired during this iteration, erased from active_ after it
  bool cancel_everything_ = false;     // shutdown: requests still arriving are cancelled at once
  std::thread thread_;
};

}  // namespace qs::server
