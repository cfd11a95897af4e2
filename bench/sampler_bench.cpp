// qs_sampler_bench: the cost of sampling one token at a vocabulary's size (default 49,152, SmolLM2's), per
// sampling mode, on one thread: the engine samples every running sequence's token after each forward pass, so
// at batch 16 this runs 16 times a step. Logits are random normal (std 3) with a fixed seed; each figure is the
// minimum over repetitions (the machine is shared: the fastest run is the one nobody preempted) and the median.
// JSON with --json.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/sampler.h"

int main(int argc, char** argv) {
  int64_t vocab = 49152, reps = 300;
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--vocab" && i + 1 < argc) vocab = std::atoll(argv[++i]);
    else if (a == "--reps" && i + 1 < argc) reps = std::atoll(argv[++i]);
    else if (a == "--json" && i + 1 < argc) json_path = argv[++i];
    else {
      std::fprintf(stderr, "usage: qs_sampler_bench [--vocab V] [--reps N] [--json FILE]\n");
      return 2;
    }
  }
  if (vocab < 1 || reps < 1) {
    std::fprintf(stderr, "--vocab and --reps must be positive\n");
    return 2;
  }
  std::mt19937_64 rng(1);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(static_cast<size_t>(vocab));
  for (float& v : logits) v = normal(rng);
  struct Mode {
    const char* name;
    qs::SamplingParams params;
  };
  std::vector<Mode> modes(4);
  modes[0].name = "greedy";
  modes[0].params.temperature = 0;
  modes[1].name = "greedy+logprobs5";
  modes[1].params.temperature = 0;
  modes[1].params.logprobs = 5;
  modes[2].name = "temperature1";
  modes[2].params.temperature = 1.0f;
  modes[3].name = "temperature0.8_top_p0.9";
  modes[3].params.temperature = 0.8f;
  modes[3].params.top_p = 0.9f;
  nlohmann::json out = {{"tool", "qs_sampler_bench"}, {"vocab", vocab}, {"reps", reps}, {"modes", nlohmann::json::array()}};
  std::vector<float> work;
  int64_t checksum = 0;
  for (const Mode& m : modes) {
    std::vector<double> t;
    for (int64_t r = 0; r < reps; ++r) {
      work = logits;   // the sampler may modify its row (penalties)
      const auto t0 = std::chrono::steady_clock::now();
      checksum += qs::sample_token(work.data(), vocab, m.params, {}, rng).token;
      t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    std::printf("%-26s best %9.1f us   median %9.1f us\n", m.name, t[0] * 1e6, t[t.size() / 2] * 1e6);
    out["modes"].push_back({{"mode", m.name}, {"best_us", t[0] * 1e6}, {"median_us", t[t.size() / 2] * 1e6}});
  }
  out["checksum"] = checksum;
  if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
  return 0;
}
