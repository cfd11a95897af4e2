// quantserve-client bench: a closed-loop load generator over GenerateStream (N concurrent clients).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

namespace qs::client {

struct BenchOptions {
  std::string address;
  std::string token;                   // bearer token, if the server asks for one
  std::string model;
  int concurrency = 1;
  int64_t requests = 0;           // total; 0 = until duration
  double duration_seconds = 0;    // 0 = until requests
  int prompt_tokens = 64;
  int max_new_tokens = 64;
  float temperature = 0;
  double timeout_seconds = 300;   // per request
};

// Runs the load and returns the summary (requests/s, tokens_per_second, TTFT and ITL percentiles, errors).
nlohmann::json run_bench(const std::shared_ptr<grpc::Channel>& channel, const BenchOptions& options);
// The human table for a summary.
std::string format_bench(const nlohmann::json& summary);

}  // namespace qs::client
