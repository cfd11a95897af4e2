// quantserve: one binary, subcommands serve, generate, inspect, bench, perplexity.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>

#include "kernels/error.h"
#include "server/commands.h"

// libgomp reads its wait policy when it is loaded, before main. Its default spins for a long time at every
// barrier, which on a shared CPU (containers with CPU limits, co-located jobs) turns each of the few hundred
// parallel regions of a decode step into a lost time slice: measured 10-25x slower decode on a contended
// 2-core machine. So unless the user chose a policy, re-execute once with a short spin before sleeping.
static void bound_openmp_spinning(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT")) return;
  setenv("GOMP_SPINCOUNT", "10000", 1);
  // The resolved path, not /proc/self/exe itself: the kernel names a process after the file it executes, and
  // ps, top, pgrep and kubectl debug should see "quantserve", not "exe".
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n > 0 && n < ssize_t(sizeof(self) - 1)) {
    self[n] = '\0';
    execv(self, argv);
  }
  execv("/proc/self/exe", argv);   // returns only on failure: carry on with the defaults
}

int main(int argc, char** argv) {
  bound_openmp_spinning(argv);
  CLI::App app{"quantserve: quantized transformer inference (gRPC server, generation, inspection, benchmarks)"};
  app.require_subcommand(1);
  qs::cli::add_serve_command(app);
  qs::cli::add_generate_command(app);
  qs::cli::add_inspect_command(app);
  qs::cli::add_bench_command(app);
  qs::cli::add_perplexity_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const qs::Error& e) {
    std::fprintf(stderr, "quantserve: error: %s\n", e.what());
    return e.code() == qs::ErrorCode::kInvalidArgument ? 2 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "quantserve: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
