// ThreadSanitizer test of server/http_server.cpp's own threads: replies and streams written from other threads
// while libmicrohttpd suspends and resumes the connections, clients that leave mid-stream, and a server stopped
// with exchanges still open. Built and run by scripts/tsan.sh (libmicrohttpd itself is not instrumented; its
// pthread mutexes are, and every field of ours is behind our own mutex).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "server/http_server.h"

namespace {

using qs::server::HttpExchange;
using qs::server::HttpRequest;
using qs::server::HttpServer;
using qs::server::HttpServerOptions;

// GET path, then read (maybe only a little of) the reply.
size_t fetch(int port, const std::string& path, size_t read_at_most) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(uint16_t(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  size_t got = 0;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    const std::string request = "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    send(fd, request.data(), request.size(), MSG_NOSIGNAL);
    char buf[4096];
    ssize_t n;
    while (got < read_at_most && (n = recv(fd, buf, sizeof buf, 0)) > 0) got += size_t(n);
  }
  close(fd);
  return got;
}

}  // namespace

int main() {
  std::atomic<bool> stop{false};
  std::vector<std::thread> producers;
  std::mutex producers_mutex;
  HttpServerOptions options;
  options.listen = "127.0.0.1:0";
  options.threads = 2;
  auto server = std::make_unique<HttpServer>(options, [&](const HttpRequest& request, std::shared_ptr<HttpExchange> ex) {
    // Every reply comes from another thread, as the engine thread's do.
    std::lock_guard<std::mutex> lock(producers_mutex);
    producers.emplace_back([&stop, ex, path = request.path] {
      if (path == "/whole") {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        ex->respond(200, "text/plain", "done\n");
        return;
      }
      ex->begin_stream(200, "text/event-stream");
      for (int i = 0; i < 50 && !stop; ++i) {
        if (ex->client_gone()) break;
        ex->send("data: " + std::to_string(i) + "\n\n");
        std::this_thread::sleep_for(std::chrono::microseconds(300));
      }
      ex->end_stream();
    });
  });
  const int port = server->port();
  std::vector<std::thread> clients;
  std::atomic<size_t> bytes{0};
  for (int c = 0; c < 16; ++c) {
    clients.emplace_back([&, c] {
      std::mt19937 rng(c);
      for (int i = 0; i < 40; ++i) {
        const bool stream = rng() % 2;
        bytes += fetch(port, stream ? "/stream" : "/whole", rng() % 4 == 0 ? 64 : size_t(1) << 20);
      }
    });
  }
  for (auto& t : clients) t.join();
  // Streams still open when the server stops: it must end them and stop cleanly.
  std::thread late([&] { fetch(port, "/stream", size_t(1) << 20); });
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  server.reset();
  stop = true;
  late.join();
  std::lock_guard<std::mutex> lock(producers_mutex);
  for (auto& t : producers) t.join();
  std::printf("http_server_tsan_test: %zu replies, %zu bytes read\n", producers.size(), bytes.load());
  return bytes > 0 ? 0 : 1;
}
