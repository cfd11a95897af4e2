// The quantserve binary's subcommands; each file registers one on the CLI11 app.
#pragma once
#include <CLI/CLI.hpp>

namespace qs::cli {

void add_serve_command(CLI::App& app);        // server/serve_command.cpp
void add_generate_command(CLI::App& app);     // server/generate_command.cpp
void add_inspect_command(CLI::App& app);      // server/inspect_command.cpp
void add_bench_command(CLI::App& app);        // server/bench_command.cpp
void add_perplexity_command(CLI::App& app);   // server/perplexity_command.cpp

}  // namespace qs::cli
