// quantserve-client bench: a closed-loop load generator (N concurrent clients) through either front door of the
// server: gRPC (Generate / GenerateStream) or the OpenAI HTTP API (POST /v1/completions, optionally streamed).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

namespace qs::client {

struct BenchOptions {
  std::string api = "grpc";            // "grpc" or "http": the door the load goes through
  bool stream = true;                  // streamed (TTFT and inter-token latency seen) or unary requests
  std::string address;                 // gRPC HOST:PORT, or the HTTP API's HOST:PORT / http(s)://HOST:PORT
  std::string token;                   // bearer token, if the server asks for one
  std::string tls_ca, tls_cert, tls_key;   // HTTP over TLS: CA bundle, client certificate and key (PEM files)
  std::string model;                   // empty: the server's default
  int concurrency = 1;
  int64_t requests = 0;           // total; 0 = until duration
  double duration_seconds = 0;    // 0 = until requests
  int prompt_tokens = 64;
  int max_new_tokens = 64;
  float temperature = 0;
  double timeout_seconds = 300;   // per request
};

// What one request came to, as one door saw it.
struct RequestOutcome {
  std::string status = "OK";      // "OK", or the error's name: a gRPC code, "HTTP 429", "curl: Timeout was reached"
  std::string message;            // the server's or the transport's words, when status is not OK
  int64_t prompt_tokens = 0;      // as the server counted them (its usage), 0 when it did not say
  int64_t generated_tokens = 0;   // streamed gRPC: token ids received; otherwise the server's usage
  int64_t content_chunks = 0;     // streamed: chunks that carried text or token ids
  double ttft_seconds = -1;       // streamed: request sent -> first content chunk; -1 when not seen
  std::vector<double> inter_token_seconds;   // streamed: gap between content chunks, per token where known
};

// One worker's connection to the server through one door. Each worker thread owns its own.
class BenchDoor {
 public:
  virtual ~BenchDoor() = default;
  // Sends one completion request of `prompt` (text) and waits for all of it.
  virtual RequestOutcome generate(const std::string& prompt, int max_new_tokens, bool stream) = 0;
};
using BenchDoorFactory = std::function<std::unique_ptr<BenchDoor>()>;

// The doors: gRPC over `channel` (one channel shared by all workers, as a gRPC client does), and the OpenAI HTTP
// API through libcurl (one connection per worker, kept alive, as an HTTP client pool does).
BenchDoorFactory grpc_door(std::shared_ptr<grpc::Channel> channel, const BenchOptions& options);
BenchDoorFactory http_door(const BenchOptions& options);

// Runs the load and returns the summary (requests/s, tokens_per_second, TTFT and ITL percentiles, errors).
// The prompt is the same text through either door: the longest run of words of a fixed filler whose token count,
// as the server reports it, is at most options.prompt_tokens (found with one-token probe requests first).
nlohmann::json run_bench(const BenchDoorFactory& door, const BenchOptions& options);
// The human table for a summary.
std::string format_bench(const nlohmann::json& summary);

}  // namespace qs::client
