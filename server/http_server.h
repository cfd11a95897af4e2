// An HTTP/1.1 server on libmicrohttpd for /metrics and the OpenAI-compatible API: bounded connections, a
// whole-request deadline, explicit bind address, and responses that may come later from another thread (a
// generation finishing on the engine thread) or as a stream (server-sent events).
//
// Why libmicrohttpd (Debian's libmicrohttpd-dev): one epoll thread serves thousands of idle or slow connections
// without a thread each, suspend/resume lets a response wait for the engine without holding a thread, it sets its
// threads' stack size (civetweb's fixed small stack cannot hold cuBLASLt's ~94 KB of static TLS in CUDA builds),
// and it parses HTTP itself. What it lacks, a deadline for reading a whole request (its timeout restarts with
// every byte, so a client trickling a byte a second holds a connection for ever), is added here: a watchdog shuts
// down sockets whose request is not in after --http-request-timeout.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

struct MHD_Daemon;
struct MHD_Connection;

namespace qs::server {

struct HttpRequest {
  std::string method;                          // "GET", "POST", ...
  std::string path;                            // "/v1/models" (no query string)
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
  std::string header(const std::string& lower_name) const;   // "" when absent
};

struct HttpServerOptions {
  std::string listen;                  // "HOST:PORT", "[::1]:PORT" or ":PORT" (all interfaces); port 0 = any
  int64_t max_body_bytes = 4 << 20;    // larger bodies get 413 before they are read
  int64_t max_connections = 1024;      // beyond it new connections are closed at once
  double request_timeout_seconds = 10; // a request (headers and body) must be in within this; also the idle limit
  int threads = 1;                     // epoll threads answering connections
  std::string name = "http";           // for log lines: "metrics", "openai"
  std::string tls_cert_pem;            // HTTPS when both are set (read once at start)
  std::string tls_key_pem;
};

// One request's reply. The handler may answer at once or keep the exchange and answer later from any thread;
// exactly one of respond() or begin_stream() ... end_stream() must eventually be called (the server answers 503
// itself for exchanges still open when it stops). Thread-safe.
class HttpExchange {
 public:
  using Headers = std::vector<std::pair<std::string, std::string>>;

  void respond(int status, const std::string& content_type, std::string body, Headers headers = {});
  // A streamed reply (chunked): the status and headers now, then data as it comes, then the end.
  void begin_stream(int status, const std::string& content_type, Headers headers = {});
  void send(const std::string& data);
  void end_stream();

  // True once the client has gone (closed its end, or the connection failed). Cheap: a non-blocking peek at the
  // socket while the reply is waiting, which is when the server itself does not watch it.
  bool client_gone();
  // Called once (from the server's thread) if the connection ends before the reply was fully sent.
  void on_client_gone(std::function<void()> callback);

  // Implementation (http_server.cpp).
  struct State;
  explicit HttpExchange(std::shared_ptr<State> state) : state_(std::move(state)) {}

 private:
  std::shared_ptr<State> state_;
};

using HttpHandler = std::function<void(const HttpRequest&, std::shared_ptr<HttpExchange>)>;

class HttpServer {
 public:
  // Binds and starts serving; throws qs::Error kUnavailable naming the address when it cannot listen and
  // kInvalidArgument for an address it cannot parse.
  HttpServer(const HttpServerOptions& options, HttpHandler handler);
  ~HttpServer();   // answers what is still waiting with 503, then stops
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }

  // Implementation (http_server.cpp).
  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

// The JSON of an HTTP error in OpenAI's shape, {"error": {"message", "type", "param", "code"}}; for every error
// this server sends, so clients have one shape to parse.
std::string http_error_json(const std::string& message, const std::string& type, const std::string& param = "",
                            const std::string& code = "");

}  // namespace qs::server
