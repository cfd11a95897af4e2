// The load generator behind `quantserve-client bench`: each of N threads sends streaming requests back to back
// and records time to first token, inter-token latencies and the final status.
#include "client/bench.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "quantserve/v1/inference.grpc.pb.h"

namespace qs::client {

namespace v1 = quantserve::v1;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  double rank = p / 100.0 * double(v.size() - 1);
  size_t lo = size_t(rank);
  size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - double(lo));
}

nlohmann::json percentiles(const std::vector<double>& v) {
  return {{"p50", percentile(v, 50)}, {"p90", percentile(v, 90)}, {"p99", percentile(v, 99)},
          {"mean", v.empty() ? 0.0 : [&] { double s = 0; for (double x : v) s += x; return s / double(v.size()); }()}};
}

// A prompt of exactly `n` tokens, from the server's own tokenizer (so it is valid for any model).
std::vector<int32_t> make_prompt(v1::Inference::Stub& stub, const std::string& model, int n, const std::string& token) {
  v1::TokenizeRequest request;
  request.set_model(model);
  std::string text;
  while (text.size() < size_t(n) * 8 + 64) {
    text += "The quick brown fox jumps over the lazy dog while the server batches many requests together. ";
  }
  request.set_text(text);
  v1::TokenizeResponse response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  grpc::Status status = stub.Tokenize(&context, request, &response);
  if (!status.ok() || response.token_ids().empty()) {
    throw std::runtime_error("bench: cannot tokenize the prompt: " + status.error_message());
  }
  std::vector<int32_t> ids;
  while (int(ids.size()) < n) {
    for (int32_t id : response.token_ids()) {
      if (int(ids.size()) == n) break;
      ids.push_back(id);
    }
  }
  return ids;
}

const char* code_name(grpc::StatusCode code) {
  static const char* names[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                                "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                                "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                                "UNAUTHENTICATED"};
  int i = int(code);
  return i >= 0 && i < 17 ? names[i] : "UNKNOWN";
}

}  // namespace

nlohmann::json run_bench(const std::shared_ptr<grpc::Channel>& channel, const BenchOptions& options) {
  if (options.concurrency < 1) throw std::runtime_error("bench: --concurrency must be >= 1");
  if (options.requests <= 0 && options.duration_seconds <= 0) {
    throw std::runtime_error("bench: give --requests N or --duration S");
  }
  auto stub = v1::Inference::NewStub(channel);
  const std::vector<int32_t> prompt = make_prompt(*stub, options.model, options.prompt_tokens, options.token);

  std::mutex mutex;
  std::vector<double> ttft, itl, latency;
  std::map<std::string, int64_t> statuses;
  int64_t generated = 0, ok_requests = 0;
  std::atomic<int64_t> started{0};
  // Bounded either way: a request budget, a time budget, or both (whichever ends first).
  const Clock::time_point begin = Clock::now();
  const Clock::time_point end =
      options.duration_seconds > 0
          ? begin + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.duration_seconds))
          : Clock::time_point::max();

  auto worker = [&] {
    for (;;) {
      if (Clock::now() >= end) return;
      if (options.requests > 0 && started.fetch_add(1) >= options.requests) return;
      v1::GenerateRequest request;
      request.set_model(options.model);
      for (int32_t id : prompt) request.add_prompt_token_ids(id);
      request.set_max_new_tokens(options.max_new_tokens);
      request.set_temperature(options.temperature);
      request.set_ignore_eos(true);
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() +
                           std::chrono::milliseconds(int64_t(options.timeout_seconds * 1000)));
      if (!options.token.empty()) context.AddMetadata("authorization", "Bearer " + options.token);
      const Clock::time_point t0 = Clock::now();
      auto reader = stub->GenerateStream(&context, request);
      v1::GenerateResponse chunk;
      std::vector<double> my_itl;
      double my_ttft = -1;
      Clock::time_point last = t0;
      int64_t tokens = 0;
      while (reader->Read(&chunk)) {
        const Clock::time_point now = Clock::now();
        const int n = chunk.token_ids_size();
        if (n == 0) continue;
        if (my_ttft < 0) {
          my_ttft = since(t0, now);
        } else {
          for (int i = 0; i < n; ++i) my_itl.push_back(since(last, now) / n);
        }
        last = now;
        tokens += n;
      }
      grpc::Status status = reader->Finish();
      const double total = since(t0, Clock::now());
      std::lock_guard<std::mutex> lock(mutex);
      statuses[code_name(status.error_code())]++;
      generated += tokens;
      if (status.ok()) {
        ok_requests++;
        latency.push_back(total);
        if (my_ttft >= 0) ttft.push_back(my_ttft);
        itl.insert(itl.end(), my_itl.begin(), my_itl.end());
      }
    }
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < options.concurrency; ++i) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  const double wall = since(begin, Clock::now());

  nlohmann::json errors = nlohmann::json::object();
  int64_t total_requests = 0;
  for (const auto& [name, count] : statuses) {
    total_requests += count;
    if (name != "OK") errors[name] = count;
  }
  return {{"address", options.address},
          {"model", options.model},
          {"concurrency", options.concurrency},
          {"prompt_tokens", options.prompt_tokens},
          {"max_new_tokens", options.max_new_tokens},
          {"requests", total_requests},
          {"requests_ok", ok_requests},
          {"duration_seconds", wall},
          {"requests_per_second", wall > 0 ? double(ok_requests) / wall : 0.0},
          {"generated_tokens", generated},
          {"tokens_per_second", wall > 0 ? double(generated) / wall : 0.0},
          {"ttft_seconds", percentiles(ttft)},
          {"inter_token_latency_seconds", percentiles(itl)},
          {"request_latency_seconds", percentiles(latency)},
          {"errors", errors}};
}

std::string format_bench(const nlohmann::json& s) {
  char buf[2048];
  std::ostringstream out;
  std::snprintf(buf, sizeof buf,
                "concurrency %d, prompt %d tokens, %d new tokens, %lld requests (%lld ok) in %.2fs\n",
                s["concurrency"].get<int>(), s["prompt_tokens"].get<int>(), s["max_new_tokens"].get<int>(),
                (long long)s["requests"].get<int64_t>(), (long long)s["requests_ok"].get<int64_t>(),
                s["duration_seconds"].get<double>());
  out << buf;
  std::snprintf(buf, sizeof buf, "  %-22s %10.2f\n  %-22s %10.1f\n", "requests/s", s["requests_per_second"].get<double>(),
                "tokens/s", s["tokens_per_second"].get<double>());
  out << buf;
  std::snprintf(buf, sizeof buf, "  %-22s %10s %10s %10s\n", "latency (ms)", "p50", "p90", "p99");
  out << buf;
  for (const char* key : {"ttft_seconds", "inter_token_latency_seconds", "request_latency_seconds"}) {
    const auto& p = s[key];
    std::snprintf(buf, sizeof buf, "  %-22s %10.2f %10.2f %10.2f\n",
                  std::string(key) == "ttft_seconds" ? "time to first token"
                  : std::string(key) == "request_latency_seconds" ? "request"
                                                                   : "inter-token",
                  p["p50"].get<double>() * 1e3, p["p90"].get<double>() * 1e3, p["p99"].get<double>() * 1e3);
    out << buf;
  }
  if (!s["errors"].empty()) {
    out << "  errors:";
    for (auto it = s["errors"].begin(); it != s["errors"].end(); ++it) out << " " << it.key() << "=" << it.value();
    out << "\n";
  }
  return out.str();
}

}  // namespace qs::client
