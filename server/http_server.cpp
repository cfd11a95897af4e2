// The libmicrohttpd server behind /metrics and the OpenAI-compatible API (see http_server.h).
//
// Life of a request: libmicrohttpd calls on_request() once with the headers, then with each piece of the body,
// then once more with nothing; that last call hands the request to the handler. A reply that is not ready then
// suspends the connection (no thread waits on it); respond() or send() from any thread resumes it, and
// libmicrohttpd calls on_request() (whole replies) or read_stream() (streams) again to take the data. A stream
// with nothing to send suspends itself from read_stream() the same way.
#include "server/http_server.h"

#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "kernels/error.h"

namespace qs::server {

using Clock = std::chrono::steady_clock;

std::string HttpRequest::header(const std::string& lower_name) const {
  auto it = headers.find(lower_name);
  return it == headers.end() ? std::string() : it->second;
}

std::string http_error_json(const std::string& message, const std::string& type, const std::string& param,
                            const std::string& code) {
  nlohmann::json error = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) error["param"] = param;
  if (!code.empty()) error["code"] = code;
  return nlohmann::json{{"error", error}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

// The reply side of one request, shared by the handler (any thread) and libmicrohttpd's thread.
struct HttpExchange::State {
  std::mutex mutex;
  MHD_Connection* connection = nullptr;   // null once the request has ended or the server stopped
  int fd = -1;
  bool suspended = false;                 // only the thread that flips it to false resumes the connection
  enum class Mode { kPending, kWhole, kStream } mode = Mode::kPending;
  int status = 0;
  std::string content_type;
  Headers headers;
  std::string data;                       // the whole body, or the stream's bytes not yet taken
  size_t taken = 0;                       // stream: bytes of `data` already handed to libmicrohttpd
  bool stream_ended = false;
  bool queued = false;                    // the response is with libmicrohttpd
  bool gone = false;
  bool stopping = false;                  // the server is stopping: answer 503 / cut the stream
  std::function<void()> on_gone;
  std::shared_ptr<std::atomic<int>> resumes_in_flight;   // the server waits for zero before it stops

  // Resumes a suspended connection; called with `lock` held, returns with it released.
  void wake(std::unique_lock<std::mutex>& lock) {
    if (!suspended || connection == nullptr) {
      lock.unlock();
      return;
    }
    suspended = false;
    MHD_Connection* c = connection;
    std::shared_ptr<std::atomic<int>> in_flight = resumes_in_flight;
    in_flight->fetch_add(1);
    lock.unlock();
    MHD_resume_connection(c);   // safe: a suspended connection is not touched by libmicrohttpd until resumed
    in_flight->fetch_sub(1);
  }
};

void HttpExchange::respond(int status, const std::string& content_type, std::string body, Headers headers) {
  std::unique_lock<std::mutex> lock(state_->mutex);
  if (state_->mode != State::Mode::kPending) return;   // answered already: the first answer stands
  state_->mode = State::Mode::kWhole;
  state_->status = status;
  state_->content_type = content_type;
  state_->headers = std::move(headers);
  state_->data = std::move(body);
  state_->wake(lock);
}

void HttpExchange::begin_stream(int status, const std::string& content_type, Headers headers) {
  std::unique_lock<std::mutex> lock(state_->mutex);
  if (state_->mode != State::Mode::kPending) return;
  state_->mode = State::Mode::kStream;
  state_->status = status;
  state_->content_type = content_type;
  state_->headers = std::move(headers);
  state_->wake(lock);
}

void HttpExchange::send(const std::string& data) {
  std::unique_lock<std::mutex> lock(state_->mutex);
  if (state_->mode != State::Mode::kStream || state_->stream_ended || state_->gone) return;
  state_->data += data;
  state_->wake(lock);
}

void HttpExchange::end_stream() {
  std::unique_lock<std::mutex> lock(state_->mutex);
  if (state_->mode != State::Mode::kStream) return;
  state_->stream_ended = true;
  state_->wake(lock);
}

bool HttpExchange::client_gone() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  if (state_->gone) return true;
  // Only while suspended: then libmicrohttpd neither watches nor closes the socket, so the fd is ours to peek.
  if (state_->suspended && state_->connection != nullptr && state_->fd >= 0) {
    char byte;
    const ssize_t n = recv(state_->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) state_->gone = true;
  }
  return state_->gone;
}

void HttpExchange::on_client_gone(std::function<void()> callback) {
  bool call_now = false;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    if (state_->gone && state_->connection == nullptr) call_now = true;
    else state_->on_gone = std::move(callback);
  }
  if (call_now && callback) callback();
}

namespace {

// Per TCP connection, for the request deadline.
struct ConnectionInfo {
  int fd = -1;
  bool reading = true;                 // waiting for (the rest of) a request
  Clock::time_point read_start = Clock::now();
  bool cut = false;                    // the watchdog shut the socket down
};

// Per HTTP request (libmicrohttpd's con_cls).
struct RequestContext {
  HttpRequest request;
  bool too_large = false;
  bool dispatched = false;
  std::shared_ptr<HttpExchange::State> state;
};

// "HOST:PORT", "[V6]:PORT", ":PORT" or "PORT" -> an address to bind.
sockaddr_storage parse_listen(const std::string& listen, socklen_t* length, bool* ipv6) {
  std::string host, port;
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos) {
    port = listen;
  } else {
    host = listen.substr(0, colon);
    port = listen.substr(colon + 1);
  }
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  QS_CHECK(!port.empty() && port.size() <= 5 && port.find_first_not_of("0123456789") == std::string::npos &&
               std::stoi(port) <= 65535,
           ErrorCode::kInvalidArgument, "listen address '", listen.substr(0, 64),
           "' has no valid port: write HOST:PORT, [IPV6]:PORT or :PORT");
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found);
  QS_CHECK(rc == 0 && found != nullptr, ErrorCode::kInvalidArgument, "listen address '", listen.substr(0, 64),
           "': cannot resolve host '", host.substr(0, 64), "' (", gai_strerror(rc), ")");
  // With no host, getaddrinfo may list :: first; 0.0.0.0 is what ":PORT" has always meant here.
  addrinfo* chosen = found;
  for (addrinfo* a = found; host.empty() && a != nullptr; a = a->ai_next) {
    if (a->ai_family == AF_INET) chosen = a;
  }
  sockaddr_storage address{};
  std::memcpy(&address, chosen->ai_addr, chosen->ai_addrlen);
  *length = chosen->ai_addrlen;
  *ipv6 = chosen->ai_family == AF_INET6;
  freeaddrinfo(found);
  return address;
}

}  // namespace

struct HttpServer::Impl {
  HttpServerOptions options;
  HttpHandler handler;
  MHD_Daemon* daemon = nullptr;

  std::mutex mutex;                                   // guards the two sets and `stopping`
  std::set<ConnectionInfo*> connections;
  std::set<std::shared_ptr<HttpExchange::State>> exchanges;   // dispatched, not yet completed
  bool stopping = false;
  std::shared_ptr<std::atomic<int>> resumes_in_flight = std::make_shared<std::atomic<int>>(0);

  std::thread watchdog;
  std::mutex watchdog_mutex;
  std::condition_variable watchdog_wake;
  bool watchdog_stop = false;

  // Shuts down the sockets of requests that did not arrive in time; libmicrohttpd then sees the connection end
  // and closes it itself (the fd stays valid until its close notification, which takes `mutex`).
  void watch() {
    const auto limit = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(options.request_timeout_seconds));
    std::unique_lock<std::mutex> wait_lock(watchdog_mutex);
    while (!watchdog_stop) {
      watchdog_wake.wait_for(wait_lock, std::chrono::milliseconds(250));
      const Clock::time_point now = Clock::now();
      std::lock_guard<std::mutex> lock(mutex);
      for (ConnectionInfo* c : connections) {
        if (c->reading && !c->cut && now - c->read_start > limit) {
          shutdown(c->fd, SHUT_RDWR);
          c->cut = true;
        }
      }
    }
  }

  static ConnectionInfo* info_of(MHD_Connection* connection) {
    const MHD_ConnectionInfo* info = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return info ? static_cast<ConnectionInfo*>(info->socket_context) : nullptr;
  }

  void set_reading(MHD_Connection* connection, bool reading) {
    std::lock_guard<std::mutex> lock(mutex);
    if (ConnectionInfo* c = info_of(connection)) {
      c->reading = reading;
      c->read_start = Clock::now();
    }
  }

  static MHD_Result queue_whole(MHD_Connection* connection, int status, const std::string& content_type,
                                const std::string& body, const HttpExchange::Headers& headers) {
    MHD_Response* response =
        MHD_create_response_from_buffer(body.size(), const_cast<char*>(body.data()), MHD_RESPMEM_MUST_COPY);
    if (response == nullptr) return MHD_NO;
    MHD_add_response_header(response, "Content-Type", content_type.c_str());
    for (const auto& [name, value] : headers) MHD_add_response_header(response, name.c_str(), value.c_str());
    const MHD_Result result = MHD_queue_response(connection, unsigned(status), response);
    MHD_destroy_response(response);
    return result;
  }

  static MHD_Result queue_error(MHD_Connection* connection, int status, const std::string& message,
                                const std::string& type, const std::string& code) {
    return queue_whole(connection, status, "application/json", http_error_json(message, type, "", code), {});
  }

  // The stream's content reader: what is buffered, the end, or nothing yet (then it suspends itself).
  static ssize_t read_stream(void* cls, uint64_t, char* buffer, size_t max) {
    HttpExchange::State& s = **static_cast<std::shared_ptr<HttpExchange::State>*>(cls);
    std::lock_guard<std::mutex> lock(s.mutex);
    if (s.taken < s.data.size()) {
      const size_t n = std::min(max, s.data.size() - s.taken);
      std::memcpy(buffer, s.data.data() + s.taken, n);
      s.taken += n;
      if (s.taken == s.data.size()) {
        s.data.clear();
        s.taken = 0;
      }
      return ssize_t(n);
    }
    if (s.stream_ended) return MHD_CONTENT_READER_END_OF_STREAM;
    if (s.stopping || s.connection == nullptr) return MHD_CONTENT_READER_END_WITH_ERROR;
    s.suspended = true;
    MHD_suspend_connection(s.connection);
    return 0;
  }

  static void free_stream(void* cls) { delete static_cast<std::shared_ptr<HttpExchange::State>*>(cls); }

  // Hands libmicrohttpd the reply if there is one, else suspends until there is.
  MHD_Result advance(MHD_Connection* connection, const std::shared_ptr<HttpExchange::State>& state) {
    std::unique_lock<std::mutex> lock(state->mutex);
    if (state->queued) return MHD_YES;
    switch (state->mode) {
      case HttpExchange::State::Mode::kWhole: {
        state->queued = true;
        const int status = state->status;
        const std::string content_type = state->content_type, body = std::move(state->data);
        const HttpExchange::Headers headers = state->headers;
        lock.unlock();
        return queue_whole(connection, status, content_type, body, headers);
      }
      case HttpExchange::State::Mode::kStream: {
        state->queued = true;
        MHD_Response* response = MHD_create_response_from_callback(
            MHD_SIZE_UNKNOWN, 16 * 1024, &Impl::read_stream, new std::shared_ptr<HttpExchange::State>(state),
            &Impl::free_stream);
        if (response == nullptr) return MHD_NO;
        MHD_add_response_header(response, "Content-Type", state->content_type.c_str());
        for (const auto& [name, value] : state->headers) {
          MHD_add_response_header(response, name.c_str(), value.c_str());
        }
        const unsigned status = unsigned(state->status);
        lock.unlock();
        const MHD_Result result = MHD_queue_response(connection, status, response);
        MHD_destroy_response(response);
        return result;
      }
      case HttpExchange::State::Mode::kPending:
        if (state->stopping) {
          state->queued = true;
          lock.unlock();
          return queue_error(connection, 503, "the server is shutting down", "server_error", "unavailable");
        }
        state->suspended = true;
        MHD_suspend_connection(connection);
        return MHD_YES;
    }
    return MHD_NO;
  }

  static MHD_Result collect_header(void* cls, MHD_ValueKind, const char* key, const char* value) {
    auto& headers = *static_cast<std::map<std::string, std::string>*>(cls);
    std::string name(key ? key : "");
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    headers[name] = value ? value : "";
    return MHD_YES;
  }

  static MHD_Result on_request(void* cls, MHD_Connection* connection, const char* url, const char* method,
                               const char*, const char* upload_data, size_t* upload_size, void** req_cls) {
    Impl& self = *static_cast<Impl*>(cls);
    auto* rc = static_cast<RequestContext*>(*req_cls);
    if (rc == nullptr) {   // the headers are in
      rc = new RequestContext;
      *req_cls = rc;
      rc->request.method = method ? method : "";
      rc->request.path = url ? url : "";
      MHD_get_connection_values(connection, MHD_HEADER_KIND, &Impl::collect_header, &rc->request.headers);
      const std::string length = rc->request.header("content-length");
      if (!length.empty()) {
        errno = 0;
        char* end = nullptr;
        const unsigned long long n = std::strtoull(length.c_str(), &end, 10);
        if (errno != 0 || end == length.c_str() || n > uint64_t(self.options.max_body_bytes)) {
          rc->too_large = true;
          rc->dispatched = true;
          self.set_reading(connection, false);
          // Answered before the body is read: libmicrohttpd then closes the connection rather than read it.
          return queue_error(connection, 413,
                             "the request body is over the server's limit of " +
                                 std::to_string(self.options.max_body_bytes) + " bytes (--max-message-bytes)",
                             "invalid_request_error", "request_too_large");
        }
      }
      return MHD_YES;
    }
    if (*upload_size > 0) {   // a piece of the body (chunked uploads have no Content-Length to check first)
      if (!rc->too_large && rc->request.body.size() + *upload_size <= size_t(self.options.max_body_bytes)) {
        rc->request.body.append(upload_data, *upload_size);
      } else {
        rc->too_large = true;
        rc->request.body.clear();
      }
      *upload_size = 0;
      return MHD_YES;
    }
    if (!rc->dispatched) {   // the whole request is in
      rc->dispatched = true;
      self.set_reading(connection, false);
      if (rc->too_large) {
        return queue_error(connection, 413,
                           "the request body is over the server's limit of " +
                               std::to_string(self.options.max_body_bytes) + " bytes (--max-message-bytes)",
                           "invalid_request_error", "request_too_large");
      }
      auto state = std::make_shared<HttpExchange::State>();
      state->connection = connection;
      const MHD_ConnectionInfo* fd = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
      state->fd = fd ? fd->connect_fd : -1;
      state->resumes_in_flight = self.resumes_in_flight;
      {
        std::lock_guard<std::mutex> lock(self.mutex);
        state->stopping = self.stopping;
        self.exchanges.insert(state);
      }
      rc->state = state;
      auto exchange = std::make_shared<HttpExchange>(state);
      try {
        self.handler(rc->request, exchange);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "quantserve: %s: handler error on %s: %s\n", self.options.name.c_str(),
                     rc->request.path.substr(0, 64).c_str(), e.what());
        exchange->respond(500, "application/json", http_error_json("internal error", "server_error"));
      }
      std::string().swap(rc->request.body);   // the handler has what it needs
    }
    if (!rc->state) return MHD_YES;   // answered already (413)
    return self.advance(connection, rc->state);
  }

  static void on_completed(void* cls, MHD_Connection* connection, void** req_cls, MHD_RequestTerminationCode toe) {
    Impl& self = *static_cast<Impl*>(cls);
    auto* rc = static_cast<RequestContext*>(*req_cls);
    *req_cls = nullptr;
    if (rc == nullptr) return;
    std::function<void()> gone;
    if (rc->state) {
      {
        std::lock_guard<std::mutex> lock(rc->state->mutex);
        rc->state->connection = nullptr;
        rc->state->suspended = false;
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) {
          rc->state->gone = true;
          gone = std::move(rc->state->on_gone);
        }
      }
      std::lock_guard<std::mutex> lock(self.mutex);
      self.exchanges.erase(rc->state);
    }
    delete rc;
    self.set_reading(connection, true);   // keep-alive: the next request's deadline starts now
    if (gone) gone();
  }

  static void on_connection(void* cls, MHD_Connection* connection, void** socket_context,
                            MHD_ConnectionNotificationCode code) {
    Impl& self = *static_cast<Impl*>(cls);
    std::lock_guard<std::mutex> lock(self.mutex);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
      auto* c = new ConnectionInfo;
      const MHD_ConnectionInfo* fd = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
      c->fd = fd ? fd->connect_fd : -1;
      *socket_context = c;
      self.connections.insert(c);
    } else {
      auto* c = static_cast<ConnectionInfo*>(*socket_context);
      self.connections.erase(c);
      delete c;
      *socket_context = nullptr;
    }
  }

  static void log(void* cls, const char* format, va_list args) {
    char line[512];
    std::vsnprintf(line, sizeof line, format, args);
    // A client that goes away mid-reply is normal traffic, not an error worth a line each (it is counted as a
    // cancelled request where it matters).
    if (std::strstr(line, "socket is no longer available") != nullptr) return;
    size_t n = std::strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
    std::fprintf(stderr, "quantserve: %s: %s\n", static_cast<Impl*>(cls)->options.name.c_str(), line);
  }
};

HttpServer::HttpServer(const HttpServerOptions& options, HttpHandler handler) : impl_(std::make_unique<Impl>()) {
  impl_->options = options;
  impl_->handler = std::move(handler);
  socklen_t length = 0;
  bool ipv6 = false;
  sockaddr_storage address = parse_listen(options.listen, &length, &ipv6);
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
  if (ipv6) flags |= MHD_USE_IPv6;
  const uint16_t port = ntohs(ipv6 ? reinterpret_cast<sockaddr_in6*>(&address)->sin6_port
                                   : reinterpret_cast<sockaddr_in*>(&address)->sin_port);
  const unsigned timeout = unsigned(std::max(1.0, std::ceil(options.request_timeout_seconds)));
  // The logger first, so that libmicrohttpd's own start-up messages go through it too.
  std::vector<MHD_OptionItem> items = {
      {MHD_OPTION_EXTERNAL_LOGGER, intptr_t(&Impl::log), impl_.get()},
      {MHD_OPTION_SOCK_ADDR, 0, &address},
      {MHD_OPTION_CONNECTION_LIMIT, intptr_t(options.max_connections), nullptr},
      {MHD_OPTION_CONNECTION_TIMEOUT, intptr_t(timeout), nullptr},
      // Well above the static TLS every thread carries in a CUDA build (cuBLASLt's is ~94 KB).
      {MHD_OPTION_THREAD_STACK_SIZE, intptr_t(2) << 20, nullptr},
      {MHD_OPTION_LISTENING_ADDRESS_REUSE, 1, nullptr},
      {MHD_OPTION_NOTIFY_COMPLETED, intptr_t(&Impl::on_completed), impl_.get()},
      {MHD_OPTION_NOTIFY_CONNECTION, intptr_t(&Impl::on_connection), impl_.get()},
  };
  if (options.threads > 1) items.push_back({MHD_OPTION_THREAD_POOL_SIZE, intptr_t(options.threads), nullptr});
  if (!options.tls_cert_pem.empty()) {
    QS_CHECK(MHD_is_feature_supported(MHD_FEATURE_TLS) == MHD_YES, ErrorCode::kUnsupported,
             "this libmicrohttpd has no TLS: cannot serve ", options.name, " over HTTPS");
    flags |= MHD_USE_TLS;
    items.push_back({MHD_OPTION_HTTPS_MEM_CERT, 0, const_cast<char*>(options.tls_cert_pem.c_str())});
    items.push_back({MHD_OPTION_HTTPS_MEM_KEY, 0, const_cast<char*>(options.tls_key_pem.c_str())});
  }
  items.push_back({MHD_OPTION_END, 0, nullptr});
  impl_->daemon = MHD_start_daemon(flags, port, nullptr, nullptr, &Impl::on_request, impl_.get(), MHD_OPTION_ARRAY,
                                   items.data(), MHD_OPTION_END);
  QS_CHECK(impl_->daemon != nullptr, ErrorCode::kUnavailable, "cannot listen on ", options.listen.substr(0, 64),
           " for ", options.name, ": the port is in use or the address is not this host's");
  const MHD_DaemonInfo* info = MHD_get_daemon_info(impl_->daemon, MHD_DAEMON_INFO_BIND_PORT);
  port_ = info ? int(info->port) : int(port);
  impl_->watchdog = std::thread([impl = impl_.get()] { impl->watch(); });
}

HttpServer::~HttpServer() {
  {
    std::lock_guard<std::mutex> lock(impl_->watchdog_mutex);
    impl_->watchdog_stop = true;
  }
  impl_->watchdog_wake.notify_all();
  if (impl_->watchdog.joinable()) impl_->watchdog.join();
  // libmicrohttpd must not be stopped with suspended connections: resume each with "stopping" set, so that what
  // still waits gets a 503 and open streams end; and detach every exchange so late replies touch nothing.
  std::vector<std::shared_ptr<HttpExchange::State>> exchanges;
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->stopping = true;
    exchanges.assign(impl_->exchanges.begin(), impl_->exchanges.end());
  }
  for (const auto& state : exchanges) {
    std::unique_lock<std::mutex> lock(state->mutex);
    state->stopping = true;
    state->wake(lock);
  }
  // Give the resumed connections a moment to take their 503 or end of stream.
  const auto end = Clock::now() + std::chrono::milliseconds(500);
  while (Clock::now() < end) {
    {
      std::lock_guard<std::mutex> lock(impl_->mutex);
      if (impl_->exchanges.empty()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  for (const auto& state : exchanges) {
    std::unique_lock<std::mutex> lock(state->mutex);
    state->wake(lock);   // one that suspended itself again meanwhile
  }
  while (impl_->resumes_in_flight->load() > 0) std::this_thread::yield();
  MHD_stop_daemon(impl_->daemon);
  for (const auto& state : exchanges) {
    std::lock_guard<std::mutex> lock(state->mutex);
    state->connection = nullptr;
  }
}

}  // namespace qs::server
