// The load generator's HTTP door: POST /v1/completions of the OpenAI API through libcurl, unary or streamed
// (server-sent events; the first chunk with text is the first token), one kept-alive connection per worker.
#include <curl/curl.h>

#include <chrono>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>

#include "client/bench.h"

namespace qs::client {

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

double since(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// "HOST:PORT" -> "http://HOST:PORT" (https with a CA bundle); a URL is kept as it is, less a trailing "/" or "/v1".
std::string base_url(const BenchOptions& options) {
  std::string url = options.address;
  if (url.rfind("http://", 0) != 0 && url.rfind("https://", 0) != 0) {
    url = (options.tls_ca.empty() && options.tls_cert.empty() ? "http://" : "https://") + url;
  }
  while (!url.empty() && url.back() == '/') url.pop_back();
  if (url.size() >= 3 && url.compare(url.size() - 3, 3, "/v1") == 0) url.resize(url.size() - 3);
  return url;
}

// The error's message in OpenAI's shape {"error": {"message": ...}}, else the body itself (cut short).
std::string error_message(const std::string& body) {
  json parsed = json::parse(body, nullptr, false);
  if (parsed.is_object() && parsed.contains("error") && parsed["error"].is_object() &&
      parsed["error"].contains("message") && parsed["error"]["message"].is_string()) {
    return parsed["error"]["message"].get<std::string>();
  }
  return body.substr(0, 200);
}

// A streamed reply, read as it arrives: server-sent events split on their blank line, each `data:` payload
// either [DONE] or one completion chunk (or an error object when the stream fails after it began).
struct EventStream {
  Clock::time_point sent;
  Clock::time_point last;
  RequestOutcome* outcome = nullptr;
  std::string pending;        // bytes of an event not yet complete
  bool done = false;          // data: [DONE] seen
  std::string stream_error;   // an error event's message

  void feed(const char* data, size_t size) {
    pending.append(data, size);
    for (;;) {
      size_t end = pending.find("\n\n");
      size_t skip = 2;
      const size_t crlf = pending.find("\r\n\r\n");
      if (crlf != std::string::npos && (end == std::string::npos || crlf < end)) end = crlf, skip = 4;
      if (end == std::string::npos) return;
      event(pending.substr(0, end));
      pending.erase(0, end + skip);
    }
  }

  void event(const std::string& text) {
    std::string payload;
    size_t at = 0;
    while (at < text.size()) {   // the data: lines of the event, joined by newlines as the SSE format says
      size_t eol = text.find('\n', at);
      if (eol == std::string::npos) eol = text.size();
      std::string line = text.substr(at, eol - at);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.rfind("data:", 0) == 0) {
        line.erase(0, line.size() > 5 && line[5] == ' ' ? 6 : 5);
        if (!payload.empty()) payload += '\n';
        payload += line;
      }
      at = eol + 1;
    }
    if (payload.empty()) return;   // a comment or a keep-alive
    if (payload == "[DONE]") {
      done = true;
      return;
    }
    json chunk = json::parse(payload, nullptr, false);
    if (!chunk.is_object()) {
      stream_error = "a chunk that is not JSON: " + payload.substr(0, 200);
      return;
    }
    if (chunk.contains("error")) {
      stream_error = error_message(payload);
      return;
    }
    if (chunk.contains("usage") && chunk["usage"].is_object()) {
      outcome->prompt_tokens = chunk["usage"].value("prompt_tokens", int64_t(0));
      outcome->generated_tokens = chunk["usage"].value("completion_tokens", int64_t(0));
    }
    const json* choices = chunk.contains("choices") ? &chunk["choices"] : nullptr;
    if (!choices || !choices->is_array() || choices->empty()) return;
    const json& choice = (*choices)[0];
    // (json::empty() is false for every string: the string's own emptiness is what counts.)
    const bool has_text = choice.contains("text") && choice["text"].is_string() &&
                          !choice["text"].get_ref<const std::string&>().empty();
    if (!has_text) return;   // the final chunk (finish_reason only), or a token that ends mid-character
    const Clock::time_point now = Clock::now();
    if (outcome->ttft_seconds < 0) {
      outcome->ttft_seconds = since(sent, now);
    } else {
      outcome->inter_token_seconds.push_back(since(last, now));   // the API says no token count per chunk
    }
    last = now;
    outcome->content_chunks++;
  }
};

size_t collect_body(char* data, size_t size, size_t count, void* user) {
  static_cast<std::string*>(user)->append(data, size * count);
  return size * count;
}

size_t feed_events(char* data, size_t size, size_t count, void* user) {
  static_cast<EventStream*>(user)->feed(data, size * count);
  return size * count;
}

class HttpDoor : public BenchDoor {
 public:
  explicit HttpDoor(const BenchOptions& options) : options_(options), url_(base_url(options) + "/v1/completions") {
    curl_ = curl_easy_init();
    if (!curl_) throw std::runtime_error("bench: libcurl could not make a handle");
    headers_ = curl_slist_append(headers_, "Content-Type: application/json");
    headers_ = curl_slist_append(headers_, "Expect:");   // no 100-continue round trip before a POST body
    if (!options.token.empty()) {
      headers_ = curl_slist_append(headers_, ("Authorization: Bearer " + options.token).c_str());
    }
  }
  ~HttpDoor() override {
    curl_easy_cleanup(curl_);
    curl_slist_free_all(headers_);
  }
  HttpDoor(const HttpDoor&) = delete;
  HttpDoor& operator=(const HttpDoor&) = delete;

  RequestOutcome generate(const std::string& prompt, int max_new_tokens, bool stream) override {
    json body = {{"prompt", prompt}, {"max_tokens", max_new_tokens}, {"temperature", options_.temperature},
                 {"ignore_eos", true}, {"stream", stream}};
    if (!options_.model.empty()) body["model"] = options_.model;
    if (stream) body["stream_options"] = {{"include_usage", true}};
    const std::string payload = body.dump();

    // The handle keeps its connection between requests; only the per-request options are set again.
    curl_easy_setopt(curl_, CURLOPT_URL, url_.c_str());
    curl_easy_setopt(curl_, CURLOPT_HTTPHEADER, headers_);
    curl_easy_setopt(curl_, CURLOPT_POSTFIELDS, payload.c_str());
    curl_easy_setopt(curl_, CURLOPT_POSTFIELDSIZE, long(payload.size()));
    curl_easy_setopt(curl_, CURLOPT_NOSIGNAL, 1L);   // worker threads: no SIGALRM for timeouts
    curl_easy_setopt(curl_, CURLOPT_TIMEOUT_MS, long(options_.timeout_seconds * 1000));
    if (!options_.tls_ca.empty()) curl_easy_setopt(curl_, CURLOPT_CAINFO, options_.tls_ca.c_str());
    if (!options_.tls_cert.empty()) curl_easy_setopt(curl_, CURLOPT_SSLCERT, options_.tls_cert.c_str());
    if (!options_.tls_key.empty()) curl_easy_setopt(curl_, CURLOPT_SSLKEY, options_.tls_key.c_str());

    RequestOutcome outcome;
    std::string reply;
    EventStream events;
    events.outcome = &outcome;
    // Streamed replies are parsed as they arrive, unless the server answers with an error (then the body is JSON).
    struct Router {
      CURL* curl;
      std::string* reply;
      EventStream* events;
    } router{curl_, &reply, &events};
    curl_easy_setopt(curl_, CURLOPT_WRITEDATA, &router);
    curl_easy_setopt(curl_, CURLOPT_WRITEFUNCTION, +[](char* data, size_t size, size_t count, void* user) -> size_t {
      auto* r = static_cast<Router*>(user);
      long code = 0;
      curl_easy_getinfo(r->curl, CURLINFO_RESPONSE_CODE, &code);
      return code == 200 && r->events ? feed_events(data, size, count, r->events)
                                      : collect_body(data, size, count, r->reply);
    });
    if (!stream) router.events = nullptr;

    char transport_error[CURL_ERROR_SIZE] = "";   // libcurl's own words: which host and port, what failed
    curl_easy_setopt(curl_, CURLOPT_ERRORBUFFER, transport_error);
    events.sent = events.last = Clock::now();
    const CURLcode rc = curl_easy_perform(curl_);
    curl_easy_setopt(curl_, CURLOPT_ERRORBUFFER, nullptr);
    long code = 0;
    curl_easy_getinfo(curl_, CURLINFO_RESPONSE_CODE, &code);
    if (rc != CURLE_OK) {
      outcome.status = std::string("curl: ") + curl_easy_strerror(rc);
      outcome.message = transport_error[0] ? transport_error : curl_easy_strerror(rc);
      return outcome;
    }
    if (code != 200) {
      outcome.status = "HTTP " + std::to_string(code);
      outcome.message = error_message(reply);
      return outcome;
    }
    if (stream) {
      if (!events.stream_error.empty()) {
        outcome.status = "stream error";
        outcome.message = events.stream_error;
      } else if (!events.done) {
        outcome.status = "stream cut short";
        outcome.message = "the stream ended without data: [DONE]";
      } else if (outcome.generated_tokens == 0 && outcome.content_chunks > 0) {
        outcome.status = "no usage";
        outcome.message = "the stream carried no usage chunk (stream_options.include_usage)";
      }
      return outcome;
    }
    json parsed = json::parse(reply, nullptr, false);
    if (!parsed.is_object() || !parsed.contains("usage") || !parsed["usage"].is_object()) {
      outcome.status = "bad reply";
      outcome.message = "a 200 reply without usage: " + reply.substr(0, 200);
      return outcome;
    }
    outcome.prompt_tokens = parsed["usage"].value("prompt_tokens", int64_t(0));
    outcome.generated_tokens = parsed["usage"].value("completion_tokens", int64_t(0));
    return outcome;
  }

 private:
  const BenchOptions& options_;
  std::string url_;
  CURL* curl_ = nullptr;
  curl_slist* headers_ = nullptr;
};

}  // namespace

BenchDoorFactory http_door(const BenchOptions& options) {
  // libcurl's global state, once, before any worker thread makes a handle.
  static std::once_flag global;
  std::call_once(global, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) throw std::runtime_error("bench: libcurl failed to start");
  });
  return [&options] { return std::make_unique<HttpDoor>(options); };
}

}  // namespace qs::client
