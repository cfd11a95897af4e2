// ModelWorker (server/scheduler.h) driven from many threads without gRPC: clients submitting, cancelling and
// leaving, tasks posted to the engine thread, /metrics serialized and the watchdog's reads meanwhile, then
// cancel_all and stop with work in flight. Every request gets exactly one final event, every KV block comes
// back, and nothing is left counted. Built in the normal suite and, under ThreadSanitizer, by
// scripts/sanitize.sh --tsan: these are the project's own threads, so TSan sees every access of ours (the gRPC
// door is left out on purpose: Debian's libgrpc is not instrumented and drowns a TSan run in its own reports).
#include <gtest/gtest.h>
#include <omp.h>
#include <prometheus/text_serializer.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/load_engine.h"
#include "kernels/error.h"
#include "server/metrics.h"
#include "server/scheduler.h"

namespace qs::server {
namespace {

const std::string kLlama = std::string(QS_SOURCE_DIR) + "/tests/fixtures/models/llama";

// What one request saw, written on the engine thread and read by the client after `finished`.
struct Outcome {
  std::mutex mutex;
  std::condition_variable changed;
  int tokens = 0;
  int finals = 0;
  int errors = 0;
  FinishReason finish = FinishReason::kNone;
  bool by_server = false;
};

class ModelWorkerThreads : public ::testing::Test {
 protected:
  // step_delay_ms slows each step (the fixture's take ~0.1 ms) so that requests overlap and cancels land mid-way.
  std::unique_ptr<ModelWorker> start(int64_t max_batch_size, int64_t max_queued, double step_delay_ms) {
    WorkerOptions options;
    options.limits.max_batch_size = max_batch_size;
    options.limits.max_queued = max_queued;
    options.step_delay_ms = step_delay_ms;
    auto load = [max_batch_size]() -> LoadedEngine {
      // One OpenMP thread (set on the engine thread, whose ICV it is): libgomp is not instrumented, so its
      // barriers would look like races to TSan; the threads under test are the worker's own.
      omp_set_num_threads(1);
      LoadEngineOptions o;
      o.model_path = kLlama;
      o.engine.max_batch_size = max_batch_size;
      o.engine.max_batch_tokens = 64;
      o.engine.prefill_chunk = 16;   // long prompts take several steps: cancels land mid-prefill too
      qs::LoadedEngine loaded = load_engine(o);
      return {std::move(loaded.backend), std::move(loaded.engine)};
    };
    auto make_metrics = [this](const Model& model) -> ModelMetrics& {
      return metrics_.add_model("llama", precision_name(model.report().precision), "fp16");
    };
    return std::make_unique<ModelWorker>("llama", load, make_metrics, metrics_, options);
  }

  // A job whose events land in `outcome`.
  static std::shared_ptr<GenerationJob> job(const std::string& id, int prompt_tokens, int max_new_tokens,
                                            const std::shared_ptr<Outcome>& outcome) {
    auto j = std::make_shared<GenerationJob>();
    j->request_id = id;
    for (int i = 0; i < prompt_tokens; ++i) j->prompt_ids.push_back(int32_t(20 + (i * 37) % 900));
    j->params.temperature = 0;
    j->params.max_new_tokens = max_new_tokens;
    j->params.ignore_eos = true;
    std::weak_ptr<GenerationJob> weak = j;
    j->on_event = [outcome, weak](const GenerationEvent& event) {
      std::lock_guard<std::mutex> lock(outcome->mutex);
      outcome->tokens += int(event.token_ids.size());
      if (event.finish != FinishReason::kNone) {
        ++outcome->finals;
        outcome->finish = event.finish;
        if (auto self = weak.lock()) outcome->by_server = self->cancelled_by_server;
      }
      outcome->changed.notify_all();
    };
    j->on_error = [outcome](const Error&) {
      std::lock_guard<std::mutex> lock(outcome->mutex);
      ++outcome->errors;
      outcome->changed.notify_all();
    };
    return j;
  }

  static bool wait_final(Outcome& o, std::chrono::seconds limit) {
    std::unique_lock<std::mutex> lock(o.mutex);
    return o.changed.wait_for(lock, limit, [&] { return o.finals + o.errors > 0; });
  }

  // The engine's KV blocks in use, read on the engine thread.
  static int64_t kv_blocks_used(ModelWorker& worker) {
    std::promise<int64_t> used;
    worker.post([&used](Engine& engine) { used.set_value(engine.stats().kv_blocks_used); });
    return used.get_future().get();
  }

  // Checks each request ended once, cancelled by the server or whole (`max_new` tokens); returns how many the
  // server cancelled.
  static int finished_by_server(const std::vector<std::shared_ptr<Outcome>>& outcomes, int max_new) {
    int by_server = 0;
    for (const auto& o : outcomes) {
      std::lock_guard<std::mutex> lock(o->mutex);
      EXPECT_EQ(o->finals, 1);
      EXPECT_EQ(o->errors, 0);
      if (o->finish == FinishReason::kCancelled) {
        EXPECT_TRUE(o->by_server);
        ++by_server;
      } else {
        EXPECT_EQ(o->finish, FinishReason::kLength);
        EXPECT_EQ(o->tokens, max_new);
      }
    }
    return by_server;
  }

  Metrics metrics_{""};
};

TEST_F(ModelWorkerThreads, ClientsCancelsTasksAndScrapesAtOnce) {
  auto worker = start(/*max_batch_size=*/4, /*max_queued=*/256, /*step_delay_ms=*/1);
  std::atomic<bool> done{false};
  // Meanwhile: a scraper serializing every family, the watchdog's reads, tasks on the engine thread.
  std::thread scraper([&] {
    prometheus::TextSerializer serializer;
    while (!done) {
      const std::string text = serializer.Serialize(metrics_.registry()->Collect());
      EXPECT_NE(text.find("quantserve_"), std::string::npos);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  std::thread watcher([&] {
    while (!done) {
      EXPECT_GE(worker->stalled_seconds(), 0.0);
      EXPECT_GE(worker->outstanding(), 0);
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  std::thread poster([&] {
    while (!done) {
      std::promise<size_t> encoded;
      worker->post([&encoded](Engine& engine) { encoded.set_value(engine.tokenizer().encode("hello there").size()); });
      EXPECT_GT(encoded.get_future().get(), 0u);
    }
  });

  constexpr int kClients = 6, kPerClient = 8;
  std::atomic<int> completed{0}, cancelled{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      std::mt19937 rng(uint32_t(c + 1));
      for (int r = 0; r < kPerClient; ++r) {
        auto outcome = std::make_shared<Outcome>();
        const int max_new = 4 + int(rng() % 12);
        auto j = job("req-" + std::to_string(c) + "-" + std::to_string(r), 4 + int(rng() % 40), max_new, outcome);
        ASSERT_TRUE(worker->try_reserve());
        worker->submit(j);
        const int how = int(rng() % 4);   // 0, 1: run to the end; 2: cancel at once; 3: cancel after a token
        if (how == 2) {
          worker->cancel(j);
        } else if (how == 3) {
          std::unique_lock<std::mutex> lock(outcome->mutex);
          outcome->changed.wait_for(lock, std::chrono::seconds(30),
                                    [&] { return outcome->tokens > 0 || outcome->finals > 0; });
          lock.unlock();
          worker->cancel(j);
        }
        ASSERT_TRUE(wait_final(*outcome, std::chrono::seconds(60))) << j->request_id;
        std::lock_guard<std::mutex> lock(outcome->mutex);
        EXPECT_EQ(outcome->finals, 1) << j->request_id;
        EXPECT_EQ(outcome->errors, 0) << j->request_id;
        if (outcome->finish == FinishReason::kCancelled) {
          EXPECT_GE(how, 2) << j->request_id;
          EXPECT_FALSE(outcome->by_server) << j->request_id;
          ++cancelled;
        } else {
          // A cancel may come after the last token: the request then ends as it would have.
          EXPECT_EQ(outcome->finish, FinishReason::kLength) << j->request_id;
          EXPECT_EQ(outcome->tokens, max_new) << j->request_id;
          ++completed;
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  done = true;
  scraper.join();
  watcher.join();
  poster.join();

  RecordProperty("completed", completed.load());
  RecordProperty("cancelled", cancelled.load());
  EXPECT_EQ(completed + cancelled, kClients * kPerClient);
  EXPECT_GT(completed.load(), 0);
  EXPECT_EQ(worker->outstanding(), 0);
  EXPECT_EQ(kv_blocks_used(*worker), 0);
  worker->stop();
}

TEST_F(ModelWorkerThreads, CancelAllAndStopFinishEveryRequestInFlight) {
  auto worker = start(/*max_batch_size=*/2, /*max_queued=*/64, /*step_delay_ms=*/10);
  std::vector<std::shared_ptr<Outcome>> outcomes;
  std::vector<std::thread> submitters;
  std::mutex outcomes_mutex;
  for (int c = 0; c < 4; ++c) {
    submitters.emplace_back([&, c] {
      for (int r = 0; r < 4; ++r) {
        auto outcome = std::make_shared<Outcome>();
        {
          std::lock_guard<std::mutex> lock(outcomes_mutex);
          outcomes.push_back(outcome);
        }
        ASSERT_TRUE(worker->try_reserve());
        worker->submit(job("long-" + std::to_string(c) + "-" + std::to_string(r), 20, 100, outcome));
      }
    });
  }
  for (auto& t : submitters) t.join();
  // Two run while fourteen wait: cancel_all comes while both kinds exist.
  {
    std::unique_lock<std::mutex> lock(outcomes[0]->mutex);
    outcomes[0]->changed.wait_for(lock, std::chrono::seconds(30), [&] { return outcomes[0]->tokens > 0; });
  }
  std::thread cancel_all([&] { worker->cancel_all(); });
  // A late request after cancel_all is finished at once as cancelled by the server, never left waiting.
  auto late = std::make_shared<Outcome>();
  ASSERT_TRUE(worker->try_reserve());
  worker->submit(job("late", 5, 5, late));
  cancel_all.join();
  for (const auto& o : outcomes) ASSERT_TRUE(wait_final(*o, std::chrono::seconds(60)));
  ASSERT_TRUE(wait_final(*late, std::chrono::seconds(60)));
  // Two run at a time for ~1 s each (100 steps of 10 ms): cancel_all, posted within a step of the first token,
  // finds at least the fourteen waiting. One that did finish first finished whole.
  EXPECT_GE(finished_by_server(outcomes, 100), 14);
  EXPECT_EQ(worker->outstanding(), 0);
  EXPECT_EQ(kv_blocks_used(*worker), 0);

  // After cancel_all (it holds for the worker's lifetime, as it does for a draining server) new requests end at
  // once, cancelled by the server, however many threads submit them and while stop() runs.
  std::vector<std::shared_ptr<Outcome>> after;
  for (int i = 0; i < 3; ++i) {
    after.push_back(std::make_shared<Outcome>());
    ASSERT_TRUE(worker->try_reserve());
    worker->submit(job("after-" + std::to_string(i), 10, 90, after.back()));
  }
  for (const auto& o : after) ASSERT_TRUE(wait_final(*o, std::chrono::seconds(60)));
  EXPECT_EQ(finished_by_server(after, 90), 3);
  std::thread stopper([&] { worker->stop(); });
  stopper.join();
  EXPECT_EQ(worker->outstanding(), 0);
}

TEST_F(ModelWorkerThreads, StopWithoutCancelAllEndsRunningAndWaitingRequests) {
  auto worker = start(/*max_batch_size=*/1, /*max_queued=*/8, /*step_delay_ms=*/10);
  std::vector<std::shared_ptr<Outcome>> outcomes;
  for (int i = 0; i < 4; ++i) {
    outcomes.push_back(std::make_shared<Outcome>());
    ASSERT_TRUE(worker->try_reserve());
    worker->submit(job("s-" + std::to_string(i), 20, 100, outcomes.back()));
  }
  {
    std::unique_lock<std::mutex> lock(outcomes[0]->mutex);
    outcomes[0]->changed.wait_for(lock, std::chrono::seconds(30), [&] { return outcomes[0]->tokens > 0; });
  }
  std::thread stopper([&] { worker->stop(); });
  stopper.join();
  EXPECT_GE(finished_by_server(outcomes, 100), 3);
  EXPECT_EQ(worker->outstanding(), 0);
}

}  // namespace
}  // namespace qs::server
