// The load generator behind `quantserve-client bench`: each of N threads sends requests back to back through one
// door (the gRPC one here; client/http_door.cpp has the HTTP one) and records time to first token, inter-token
// latencies and the final status.
#include "client/bench.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
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

// The filler the prompt is cut from: plain words, so that a prefix of k words is a valid prompt for any model.
std::vector<std::string> filler_words(size_t count) {
  static const char* sentence[] = {"The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while",
                                   "the", "server", "batches", "many", "requests", "together."};
  std::vector<std::string> words;
  for (size_t i = 0; i < count; ++i) words.push_back(sentence[i % (sizeof sentence / sizeof *sentence)]);
  return words;
}

std::string join_words(const std::vector<std::string>& words, size_t k) {
  std::string text;
  for (size_t i = 0; i < k; ++i) text += (i ? " " : "") + words[i];
  return text;
}

// The longest word prefix of the filler with at most `n` prompt tokens, as the server counts them (one-token
// requests through the door under test: the same text whichever door asks, chat template or BOS included).
// Every word is at least one token, so the answer has at most n words; token counts grow with k, so bisect.
std::pair<std::string, int64_t> calibrate_prompt(BenchDoor& door, int n) {
  const std::vector<std::string> words = filler_words(size_t(std::max(n, 1)));
  auto count = [&](size_t k) {
    RequestOutcome probe = door.generate(join_words(words, k), 1, false);
    if (probe.status != "OK") {
      throw std::runtime_error("bench: the prompt probe failed: " + probe.status + ": " + probe.message);
    }
    if (probe.prompt_tokens <= 0) throw std::runtime_error("bench: the server's reply carries no prompt token count");
    return probe.prompt_tokens;
  };
  size_t lo = 1, hi = words.size();   // answer in [lo, hi]; count(lo) <= n is checked, else 1 word is all we can do
  int64_t lo_tokens = count(lo);
  if (lo_tokens >= n) return {join_words(words, lo), lo_tokens};
  while (lo < hi) {
    const size_t mid = (lo + hi + 1) / 2;
    const int64_t tokens = count(mid);
    if (tokens <= n) {
      lo = mid;
      lo_tokens = tokens;
    } else {
      hi = mid - 1;
    }
  }
  return {join_words(words, lo), lo_tokens};
}

const char* code_name(grpc::StatusCode code) {
  static const char* names[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                                "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                                "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                                "UNAUTHENTICATED"};
  int i = int(code);
  return i >= 0 && i < 17 ? names[i] : "UNKNOWN";
}

// The gRPC door: Generate or GenerateStream on a stub over the shared channel.
class GrpcDoor : public BenchDoor {
 public:
  GrpcDoor(std::shared_ptr<grpc::Channel> channel, const BenchOptions& options)
      : stub_(v1::Inference::NewStub(std::move(channel))), options_(options) {}

  RequestOutcome generate(const std::string& prompt, int max_new_tokens, bool stream) override {
    v1::GenerateRequest request;
    request.set_model(options_.model);
    request.set_prompt(prompt);
    request.set_max_new_tokens(max_new_tokens);
    request.set_temperature(options_.temperature);
    request.set_ignore_eos(true);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(int64_t(options_.timeout_seconds * 1000)));
    if (!options_.token.empty()) context.AddMetadata("authorization", "Bearer " + options_.token);
    RequestOutcome outcome;
    grpc::Status status;
    if (stream) {
      const Clock::time_point t0 = Clock::now();
      Clock::time_point last = t0;
      auto reader = stub_->GenerateStream(&context, request);
      v1::GenerateResponse chunk;
      while (reader->Read(&chunk)) {
        if (chunk.has_usage()) outcome.prompt_tokens = chunk.usage().prompt_tokens();
        const int n = chunk.token_ids_size();
        if (n == 0) continue;
        const Clock::time_point now = Clock::now();
        if (outcome.ttft_seconds < 0) {
          outcome.ttft_seconds = since(t0, now);
        } else {
          for (int i = 0; i < n; ++i) outcome.inter_token_seconds.push_back(since(last, now) / n);
        }
        last = now;
        outcome.content_chunks++;
        outcome.generated_tokens += n;
      }
      status = reader->Finish();
    } else {
      v1::GenerateResponse response;
      status = stub_->Generate(&context, request, &response);
      outcome.prompt_tokens = response.usage().prompt_tokens();
      outcome.generated_tokens = response.usage().generated_tokens();
    }
    if (!status.ok()) {
      outcome.status = code_name(status.error_code());
      outcome.message = status.error_message();
    }
    return outcome;
  }

 private:
  std::unique_ptr<v1::Inference::Stub> stub_;
  const BenchOptions& options_;
};

}  // namespace

BenchDoorFactory grpc_door(std::shared_ptr<grpc::Channel> channel, const BenchOptions& options) {
  return [channel, &options] { return std::make_unique<GrpcDoor>(channel, options); };
}

nlohmann::json run_bench(const BenchDoorFactory& make_door, const BenchOptions& options) {
  if (options.concurrency < 1) throw std::runtime_error("bench: --concurrency must be >= 1");
  if (options.requests <= 0 && options.duration_seconds <= 0) {
    throw std::runtime_error("bench: give --requests N or --duration S");
  }
  if (options.prompt_tokens < 1) throw std::runtime_error("bench: --prompt-tokens must be >= 1");
  if (options.max_new_tokens < 1) throw std::runtime_error("bench: --max-new-tokens must be >= 1");
  // Not a structured binding: clang 14 (the sanitizer build's compiler) cannot capture one in the worker lambda.
  const std::pair<std::string, int64_t> calibrated = [&] {
    auto door = make_door();
    return calibrate_prompt(*door, options.prompt_tokens);
  }();
  const std::string& prompt = calibrated.first;
  const int64_t prompt_tokens = calibrated.second;

  std::mutex mutex;
  std::vector<double> ttft, itl, latency;
  std::map<std::string, int64_t> statuses;
  std::map<std::string, std::string> messages;   // one sample message per kind of error
  int64_t generated = 0, ok_requests = 0, chunks = 0;
  std::atomic<int64_t> started{0};
  // Every worker's connection is made before the clock starts: its setup is no request's cost.
  std::vector<std::unique_ptr<BenchDoor>> doors;
  for (int i = 0; i < options.concurrency; ++i) doors.push_back(make_door());
  // Bounded either way: a request budget, a time budget, or both (whichever ends first).
  const Clock::time_point begin = Clock::now();
  const Clock::time_point end =
      options.duration_seconds > 0
          ? begin + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.duration_seconds))
          : Clock::time_point::max();

  auto worker = [&](BenchDoor& door) {
    for (;;) {
      if (Clock::now() >= end) return;
      if (options.requests > 0 && started.fetch_add(1) >= options.requests) return;
      const Clock::time_point t0 = Clock::now();
      RequestOutcome outcome = door.generate(prompt, options.max_new_tokens, options.stream);
      const double total = since(t0, Clock::now());
      std::lock_guard<std::mutex> lock(mutex);
      statuses[outcome.status]++;
      generated += outcome.generated_tokens;
      chunks += outcome.content_chunks;
      if (outcome.status == "OK") {
        ok_requests++;
        latency.push_back(total);
        if (outcome.ttft_seconds >= 0) ttft.push_back(outcome.ttft_seconds);
        itl.insert(itl.end(), outcome.inter_token_seconds.begin(), outcome.inter_token_seconds.end());
      } else if (!messages.count(outcome.status)) {
        messages[outcome.status] = outcome.message;
      }
    }
  };
  std::vector<std::thread> threads;
  for (auto& door : doors) threads.emplace_back(worker, std::ref(*door));
  for (auto& t : threads) t.join();
  const double wall = since(begin, Clock::now());

  nlohmann::json errors = nlohmann::json::object();
  int64_t total_requests = 0;
  for (const auto& [name, count] : statuses) {
    total_requests += count;
    if (name != "OK") errors[name] = count;
  }
  // Unary requests show neither the first token nor the gaps between tokens: null, not a zero that looks measured.
  auto seen = [&](const std::vector<double>& v) { return options.stream ? percentiles(v) : nlohmann::json(nullptr); };
  return {{"api", options.api},
          {"stream", options.stream},
          {"address", options.address},
          {"model", options.model},
          {"concurrency", options.concurrency},
          {"prompt_tokens", prompt_tokens},
          {"prompt_tokens_requested", options.prompt_tokens},
          {"max_new_tokens", options.max_new_tokens},
          {"requests", total_requests},
          {"requests_ok", ok_requests},
          {"duration_seconds", wall},
          {"requests_per_second", wall > 0 ? double(ok_requests) / wall : 0.0},
          {"generated_tokens", generated},
          {"content_chunks", chunks},
          {"tokens_per_second", wall > 0 ? double(generated) / wall : 0.0},
          {"ttft_seconds", seen(ttft)},
          {"inter_token_latency_seconds", seen(itl)},
          {"request_latency_seconds", percentiles(latency)},
          {"errors", errors},
          {"error_messages", messages}};
}

std::string format_bench(const nlohmann::json& s) {
  char buf[2048];
  std::ostringstream out;
  std::snprintf(buf, sizeof buf,
                "%s %s, concurrency %d, prompt %d tokens, %d new tokens, %lld requests (%lld ok) in %.2fs\n",
                s["api"].get<std::string>().c_str(), s["stream"].get<bool>() ? "streamed" : "unary",
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
    if (p.is_null()) continue;   // unary: not seen
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
    for (auto it = s["error_messages"].begin(); it != s["error_messages"].end(); ++it) {
      out << "    " << it.key() << ": " << it.value().get<std::string>() << "\n";
    }
  }
  return out.str();
}

}  // namespace qs::client
