// TaskWorker (server/task_worker.h): tasks run off the caller's thread, in order; past the bound they are refused;
// destruction runs what is queued.
#include "server/task_worker.h"

#include <gtest/gtest.h>

#include <future>
#include <stdexcept>
#include <thread>
#include <vector>

#include "kernels/error.h"

namespace qs::server {
namespace {

TEST(TaskWorker, RunsTasksInOrderOffTheCallersThread) {
  std::vector<int> order;
  std::thread::id ran_on;
  std::promise<void> done;
  {
    TaskWorker worker(8);
    for (int i = 0; i < 5; ++i) {
      ASSERT_TRUE(worker.try_post([&order, &ran_on, i] {
        order.push_back(i);
        ran_on = std::this_thread::get_id();
      }));
    }
    ASSERT_TRUE(worker.try_post([&done] { done.set_value(); }));
    done.get_future().wait();
  }
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_NE(ran_on, std::this_thread::get_id());
}

TEST(TaskWorker, RefusesPastItsBoundUntilTasksFinish) {
  TaskWorker worker(3);
  std::promise<void> started, release;
  std::shared_future<void> released = release.get_future().share();
  ASSERT_TRUE(worker.try_post([&started, released] {
    started.set_value();
    released.wait();
  }));
  started.get_future().wait();   // one running
  ASSERT_TRUE(worker.try_post([] {}));
  ASSERT_TRUE(worker.try_post([] {}));   // two queued: the bound of 3
  EXPECT_EQ(worker.pending(), 3);
  bool ran = false;
  EXPECT_FALSE(worker.try_post([&ran] { ran = true; }));
  release.set_value();
  while (worker.pending() > 0) std::this_thread::yield();
  std::promise<void> done;
  EXPECT_TRUE(worker.try_post([&done] { done.set_value(); }));
  done.get_future().wait();
  EXPECT_FALSE(ran);   // the refused task was dropped, never run
}

TEST(TaskWorker, DestructionRunsWhatIsQueued) {
  int ran = 0;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  {
    TaskWorker worker(10);
    ASSERT_TRUE(worker.try_post([released] { released.wait(); }));
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(worker.try_post([&ran] { ++ran; }));
    release.set_value();
  }
  EXPECT_EQ(ran, 5);
}

TEST(TaskWorker, ATaskThatThrowsDoesNotStopTheWorker) {
  TaskWorker worker(4);
  ASSERT_TRUE(worker.try_post([] { throw std::runtime_error("boom"); }));
  std::promise<void> done;
  ASSERT_TRUE(worker.try_post([&done] { done.set_value(); }));
  done.get_future().wait();
}

TEST(TaskWorker, NeedsRoomForOneTask) { EXPECT_THROW(TaskWorker(0), Error); }

}  // namespace
}  // namespace qs::server
