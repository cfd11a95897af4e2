#!/usr/bin/env bash
# ThreadSanitizer run over the project's own HTTP server threads (tests/tsan/): compiles server/http_server.cpp
# and kernels/error.cpp with -fsanitize=thread beside the test (seconds, not a whole TSan build of the tree) and
# fails on any report. libmicrohttpd is Debian's, uninstrumented.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build-tsan}
mkdir -p "$out"
g++ -std=c++20 -O1 -g -fsanitize=thread -I. $(pkg-config --cflags libmicrohttpd) \
  tests/tsan/http_server_tsan_test.cpp server/http_server.cpp kernels/error.cpp \
  -o "$out/http_server_tsan_test" $(pkg-config --libs libmicrohttpd) -pthread
TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1" "$out/http_server_tsan_test"
echo "tsan: clean"
