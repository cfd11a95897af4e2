// quantserve: one binary, subcommands serve, generate, inspect, bench, perplexity.
#include <cstdio>
#include <exception>

#include "kernels/error.h"
#include "server/commands.h"

int main(int argc, char** argv) {
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
