// TaskWorker: one thread draining a bounded queue (see task_worker.h).
#include "server/task_worker.h"

#include <cstdio>
#include <exception>
#include <utility>

#include "kernels/error.h"

namespace qs::server {

TaskWorker::TaskWorker(int64_t max_pending) : max_pending_(max_pending) {
  QS_CHECK(max_pending > 0, ErrorCode::kInvalidArgument, "a task worker needs room for at least one task, got ",
           max_pending);
  thread_ = std::thread([this] { loop(); });
}

TaskWorker::~TaskWorker() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

bool TaskWorker::try_post(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ || int64_t(queue_.size()) + running_ >= max_pending_) return false;
    queue_.push_back(std::move(task));
  }
  wake_.notify_one();
  return true;
}

int64_t TaskWorker::pending() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return int64_t(queue_.size()) + running_;
}

void TaskWorker::loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;   // stopping, and everything queued has run
    std::function<void()> task = std::move(queue_.front());
    queue_.pop_front();
    running_ = 1;
    lock.unlock();
    try {
      task();   // tasks catch their own errors (each one finishes an RPC); this is the last line of defence
    } catch (const std::exception& e) {
      std::fprintf(stderr, "quantserve: a task threw: %s\n", e.what());
    } catch (...) {
      std::fprintf(stderr, "quantserve: a task threw a non-standard exception\n");
    }
    task = nullptr;
    lock.lock();
    running_ = 0;
  }
}

}  // namespace qs::server
