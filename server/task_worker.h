// A thread with a bounded queue for the small RPCs (Tokenize) that must neither wait behind nor delay an engine
// thread's decode steps; past its bound a task is refused at once, as Generate is past --max-queued.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace qs::server {

class TaskWorker {
 public:
  // At most `max_pending` tasks queued or running at once (> 0).
  explicit TaskWorker(int64_t max_pending);
  // Runs every task still queued (each finishes its RPC), then joins the thread.
  ~TaskWorker();
  TaskWorker(const TaskWorker&) = delete;
  TaskWorker& operator=(const TaskWorker&) = delete;

  // Queues `task`; false (and `task` is dropped unrun) when `max_pending` tasks are already queued or running.
  bool try_post(std::function<void()> task);
  // Tasks queued or running now.
  int64_t pending() const;
  int64_t max_pending() const { return max_pending_; }

 private:
  void loop();

  const int64_t max_pending_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
  int64_t running_ = 0;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace qs::server
