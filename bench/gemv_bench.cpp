// qs_gemv_bench: the decode step's weight stream on the CPU backend, against the machine's read ceiling.
//
// A decode step at batch 1 is a bandwidth problem: every weight is read once. This program lays out the
// linears of a model shape (default: SmolLM2-135M, 30 layers of QKV, O, gate-up and down, and the LM head;
// every matrix its own memory), runs them in decode order through the CPU backend's own linear() for a number
// of steps, and after each step reads a buffer of each linear's size with a plain AVX-512 read loop on the same
// threads: the ceiling, with the same sizes, order and fork/joins (on a machine whose last-level cache holds
// the model that is the cache's bandwidth, not DRAM's; a 1 GB read is reported beside it). The machine is
// shared, so an op's time is its minimum over steps (the run nobody preempted), the same estimator for the
// GEMVs and for the read loop; the median step is reported too. It also times an empty OpenMP fork/join.
// JSON with --json.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/backend.h"

// GCC 12 reports its own intrinsics' undefined pass-through operands (in _mm512_reduce_add_ps) as uninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace {

using Clock = std::chrono::steady_clock;
double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// The 1-minute load average (the machine is shared: say how busy it was).
double load_average() {
  std::ifstream f("/proc/loadavg");
  double load = -1;
  f >> load;
  return load;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Sum of a buffer with AVX-512 loads on all OpenMP threads, each over its own contiguous part.
__attribute__((target("avx512f"))) double read_pass(const float* data, size_t n) {
  double total = 0;
#pragma omp parallel reduction(+ : total)
  {
    const size_t threads = size_t(omp_get_num_threads()), id = size_t(omp_get_thread_num());
    const size_t per = (n / threads) / 64 * 64;
    const float* p = data + id * per;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < per; i += 64) {
      a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
      a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
      a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
      a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
    }
    total += _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  }
  return total;
}

// GB/s of the best of `passes` reads of a buffer of `bytes`.
double read_ceiling_gbps(size_t bytes, int passes) {
  bytes = bytes / 4096 * 4096;
  const size_t n = bytes / 4;
  float* data = static_cast<float*>(std::aligned_alloc(64, bytes));
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) data[i] = 1.0f;
  double best = 1e30, sink = 0;
  for (int p = 0; p < passes; ++p) {
    const auto t0 = Clock::now();
    sink += read_pass(data, n);
    best = std::min(best, seconds(t0, Clock::now()));
  }
  std::free(data);
  if (sink == 0) std::printf("(read check failed)\n");
  return double(bytes) / best / 1e9;
}

// Microseconds per empty parallel region, best of several batches.
double fork_join_us() {
  double best = 1e30;
  volatile int sink = 0;
  for (int round = 0; round < 5; ++round) {
    const int iters = 2000;
    const auto t0 = Clock::now();
    for (int i = 0; i < iters; ++i) {
#pragma omp parallel
      { if (omp_get_thread_num() == 1) sink = sink + 1; }
    }
    best = std::min(best, seconds(t0, Clock::now()) / iters);
  }
  return best * 1e6;
}

struct Shape {
  std::string kind;
  int64_t N, K;
};

}  // namespace

int main(int argc, char** argv) {
  std::string precision_name = "int8", json_path;
  int64_t tokens = 1, steps = 30, layers = 30, hidden = 576, ffn = 1536, heads = 9, kv_heads = 3, vocab = 49152;
  bool quantize_head = false;
  int64_t group_size = 0;   // int8-weight-only, int8, int8-smooth: --group-size (the blocks' linears, not the head)
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--precision") precision_name = next();
    else if (a == "--tokens") tokens = std::atoll(next());
    else if (a == "--steps") steps = std::atoll(next());
    else if (a == "--layers") layers = std::atoll(next());
    else if (a == "--quantize-head") quantize_head = true;
    else if (a == "--group-size") group_size = std::atoll(next());
    else if (a == "--json") json_path = next();
    else {
      std::fprintf(stderr,
                   "usage: qs_gemv_bench [--precision int8|fp16|bf16|fp32|int8-weight-only] [--tokens T] "
                   "[--steps S] [--layers L] [--quantize-head] [--group-size 0|32] [--json FILE]\n");
      return 2;
    }
  }
  const auto precision = qs::parse_precision(precision_name);
  if (!precision || tokens < 1 || steps < 1 || layers < 1) {
    std::fprintf(stderr, "bad arguments: precision '%s', tokens %lld, steps %lld, layers %lld\n",
                 precision_name.c_str(), (long long)tokens, (long long)steps, (long long)layers);
    return 2;
  }
  const bool int8_family = *precision != qs::Precision::kFp32 && *precision != qs::Precision::kFp16 &&
                           *precision != qs::Precision::kBf16;
  const qs::Precision head_precision = int8_family && !quantize_head ? qs::Precision::kFp16 : *precision;

  auto backend = qs::make_cpu_backend();
  const int threads = omp_get_max_threads();
  const int64_t head_dim = hidden / heads;
  const std::vector<Shape> layer_shapes = {{"qkv", (heads + 2 * kv_heads) * head_dim, hidden},
                                           {"o_proj", hidden, heads * head_dim},
                                           {"gate_up", 2 * ffn, hidden},
                                           {"down", hidden, ffn}};
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  auto make = [&](const Shape& s, qs::Precision p) {
    std::vector<float> w(size_t(s.N * s.K));
    for (float& v : w) v = normal(rng);
    qs::LinearOptions lo;
    lo.compute_error = false;
    if (p == *precision && qs::has_weight_groups(p)) lo.group_size = group_size;
    return backend->make_linear(qs::HostTensor{w.data(), qs::DType::F32, s.N, s.K}, nullptr, p, lo);
  };
  struct Op {
    std::string kind;
    std::unique_ptr<qs::LinearWeight> weight;
  };
  std::vector<Op> ops;
  for (int64_t l = 0; l < layers; ++l) {
    for (const Shape& s : layer_shapes) ops.push_back({s.kind, make(s, *precision)});
  }
  ops.push_back({"lm_head", make({"lm_head", vocab, hidden}, head_precision)});

  std::unique_ptr<qs::DeviceBuffer> in_buf, out_buf;
  const int64_t widest = std::max<int64_t>(vocab, 2 * ffn);
  qs::Tensor in_all = backend->new_tensor(in_buf, tokens, std::max(hidden, ffn));
  qs::Tensor out_all = backend->new_tensor(out_buf, tokens, widest);
  for (int64_t i = 0; i < in_all.rows * in_all.cols; ++i) static_cast<float*>(in_all.data)[i] = normal(rng) * 50;

  // Each step runs the linears in decode order, then reads a buffer of each linear's size with the read loop
  // (the ceiling, in the same sizes, order and number of fork/joins, alternating with the GEMVs so both see the
  // same load). The estimate of an op's time is its minimum over steps.
  const double load_at_start = load_average();
  const size_t n_ops = ops.size();
  std::vector<float*> shadow(n_ops);
  for (size_t i = 0; i < n_ops; ++i) {
    const size_t b = (ops[i].weight->weight_bytes + 255) / 256 * 256;
    shadow[i] = static_cast<float*>(std::aligned_alloc(64, b));
    std::fill(shadow[i], shadow[i] + b / 4, 1.0f);
  }
  std::vector<double> best(n_ops, 1e30), best_read(n_ops, 1e30), step_total, read_total;
  double sink = 0;
  for (int64_t s = -3; s < steps; ++s) {   // three warm-up steps
    const auto step_start = Clock::now();
    std::vector<double> t(n_ops), r(n_ops);
    for (size_t i = 0; i < n_ops; ++i) {
      const int64_t N = ops[i].weight->out_features, K = ops[i].weight->in_features;
      const qs::Tensor in{in_all.data, tokens, K, qs::DType::F32};
      const qs::Tensor out{out_all.data, tokens, N, qs::DType::F32};
      const auto t0 = Clock::now();
      backend->linear(out, in, *ops[i].weight, qs::Activation::kNone);
      t[i] = seconds(t0, Clock::now());
    }
    const double total = seconds(step_start, Clock::now());
    const auto read_start = Clock::now();
    for (size_t i = 0; i < n_ops; ++i) {
      const auto t0 = Clock::now();
      sink += read_pass(shadow[i], (ops[i].weight->weight_bytes + 255) / 256 * 64);
      r[i] = seconds(t0, Clock::now());
    }
    const double read = seconds(read_start, Clock::now());
    if (s < 0) continue;
    step_total.push_back(total);
    read_total.push_back(read);
    for (size_t i = 0; i < n_ops; ++i) best[i] = std::min(best[i], t[i]), best_read[i] = std::min(best_read[i], r[i]);
  }
  for (float* p : shadow) std::free(p);
  if (sink == 0) std::printf("(read check failed)\n");

  std::map<std::string, size_t> bytes;
  std::map<std::string, double> op_seconds, read_seconds;
  size_t total_bytes = 0;
  double best_step = 0, best_read_step = 0;
  for (size_t i = 0; i < n_ops; ++i) {
    bytes[ops[i].kind] += ops[i].weight->weight_bytes;
    op_seconds[ops[i].kind] += best[i];
    read_seconds[ops[i].kind] += best_read[i];
    total_bytes += ops[i].weight->weight_bytes;
    best_step += best[i];
    best_read_step += best_read[i];
  }
  const double fj = fork_join_us();
  const double dram = read_ceiling_gbps(size_t(1) << 30, 5);
  nlohmann::json out = {{"tool", "qs_gemv_bench"},
                        {"precision", precision_name},
                        {"group_size", group_size},
                        {"lm_head_precision", qs::precision_name(head_precision)},
                        {"threads", threads},
                        {"tokens", tokens},
                        {"steps", steps},
                        {"layers", layers},
                        {"bytes_per_step", total_bytes},
                        {"read_1gb_gbps", dram},
                        {"fork_join_us", fj},
                        {"load_average_start", load_at_start},
                        {"load_average_end", load_average()},
                        {"median_step_seconds", median(step_total)},
                        {"median_read_step_seconds", median(read_total)},
                        {"ops", nlohmann::json::array()}};
  std::printf("precision %s (LM head %s), %d threads, %lld token(s), %lld steps; 1 GB read %.1f GB/s; empty "
              "fork/join %.2f us; median step %.3f ms (read loop %.3f ms)\n",
              precision_name.c_str(), qs::precision_name(head_precision), threads, (long long)tokens,
              (long long)steps, dram, fj, median(step_total) * 1e3, median(read_total) * 1e3);
  std::printf("%-8s %10s %12s %12s %10s %10s %9s\n", "op", "MB/step", "best ms", "read ms", "GB/s", "read GB/s",
              "fraction");
  auto row = [&](const std::string& kind, size_t b, double sec, double read_sec) {
    const double gbps = double(b) / sec / 1e9, read_gbps = double(b) / read_sec / 1e9;
    std::printf("%-8s %10.2f %12.3f %12.3f %10.1f %10.1f %8.0f%%\n", kind.c_str(), double(b) / 1e6, sec * 1e3,
                read_sec * 1e3, gbps, read_gbps, 100 * gbps / read_gbps);
    out["ops"].push_back({{"op", kind},
                          {"bytes_per_step", b},
                          {"best_seconds", sec},
                          {"read_loop_best_seconds", read_sec},
                          {"gbps", gbps},
                          {"read_loop_gbps", read_gbps},
                          {"fraction_of_read_loop", gbps / read_gbps}});
  };
  for (const auto& [kind, b] : bytes) row(kind, b, op_seconds[kind], read_seconds[kind]);
  row("all", total_bytes, best_step, best_read_step);
  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << out.dump(2) << "\n";
  }
  return 0;
}
