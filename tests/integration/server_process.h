// Runs the real quantserve binary as a child process on free loopback ports, and small HTTP helpers for /metrics.
#pragma once
#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

namespace qs::test {

int free_port();

class ServerProcess {
 public:
  // `args` go after `quantserve serve` (the model, limits); --listen, --metrics-listen and --http-listen are added
  // here.
  explicit ServerProcess(std::vector<std::string> args);
  ~ServerProcess();   // SIGKILL if still running

  // Starts the server and waits (bounded) until its health check says SERVING. False with the log on failure.
  bool start(double timeout_seconds = 120);
  // Sends `signal`, waits up to `timeout_seconds`; returns the exit code, or -1 if it did not exit (then killed).
  int signal_and_wait(int signal, double timeout_seconds);
  bool running();
  std::string log() const;

  std::string address;          // 127.0.0.1:PORT (gRPC)
  std::string metrics_address;  // 127.0.0.1:PORT
  int metrics_port = 0;
  int http_port = 0;            // the OpenAI-compatible API, on 127.0.0.1

 private:
  std::vector<std::string> args_;
  std::string log_path_;
  pid_t pid_ = -1;
};

// GET http://127.0.0.1:port/path over a raw socket; empty on failure.
std::string http_get(int port, const std::string& path, double timeout_seconds = 5);

// Prometheus text format -> {"name{labels}" -> value} for samples, plus the set of "# TYPE" family names.
struct Scrape {
  std::map<std::string, double> samples;
  std::map<std::string, std::string> types;   // family -> counter/gauge/histogram
  // The value of a sample whose name is `name` and whose label set contains every label in `labels`
  // (e.g. {"model=\"gpt2\""}); -1 when none.
  double value(const std::string& name, const std::vector<std::string>& labels = {}) const;
};
Scrape parse_metrics(const std::string& text);

}  // namespace qs::test
