// A minimal HTTP endpoint that serves a prometheus-cpp registry at /metrics in the text exposition format.
//
// Why not prometheus-cpp's Exposer: it serves through civetweb, which starts its threads with a fixed small
// stack; glibc places every DT_NEEDED library's static TLS on each thread's stack, and cuBLASLt's is ~94 KB,
// so in a CUDA build civetweb's pthread_create fails ("Cannot create threads") and /metrics never comes up.
// One std::thread (default stack) answering one short scrape at a time is all Prometheus needs.
#pragma once
#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include <prometheus/registry.h>

namespace qs::server {

class MetricsHttpServer {
 public:
  // Binds HOST:PORT (":PORT" or "PORT" means all interfaces) and starts serving; throws qs::Error
  // kUnavailable naming the address when it cannot listen.
  MetricsHttpServer(const std::string& listen, std::shared_ptr<prometheus::Registry> registry);
  ~MetricsHttpServer();   // stops the thread and closes the socket
  int port() const;       // the bound port (useful with port 0)

 private:
  void serve();
  void answer(int client);

  std::shared_ptr<prometheus::Registry> registry_;
  int listen_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace qs::server
