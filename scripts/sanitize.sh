#!/usr/bin/env bash
# ASan + UBSan over the unit and integration suites (the C++ ones), then a short run of every fuzz target, all from
# one clang build directory (QUANTSERVE_SANITIZE=ON) so the libraries compile once; fails on a failing test, any
# sanitizer report (UBSan aborts too) or a fuzz finding. What CI's "sanitizers" step runs.
#   scripts/sanitize.sh [fuzz-seconds]     fuzz-seconds per target, default 20; 0 skips the fuzz run
# SANITIZE_BUILD_DIR=dir builds in another directory (default build-sanitize); JOBS=n compile jobs (default: all
# cores). The Python integration tests (HTTP API, soak, constrained decoding) are not run here: see README.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SANITIZE_BUILD_DIR:-build-sanitize}
fuzz_seconds=${1:-20}
start=$SECONDS

launcher=()
if command -v ccache >/dev/null && [ -z "${CCACHE_DISABLE:-}" ]; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
fi
# Build type "Sanitize": no per-type flags, the -O1 -g1 and sanitizers come from QUANTSERVE_SANITIZE.
cmake -S . -B "$build" -DQUANTSERVE_SANITIZE=ON -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
  -DCMAKE_BUILD_TYPE=Sanitize "${launcher[@]}" >/dev/null
tests=(qs_kernels_tests qs_tokenizer_tests qs_loader_tests qs_engine_tests qs_server_tests qs_integration_tests)
fuzzers=()
for f in tests/fuzz/*_fuzzer.cpp; do fuzzers+=("$(basename "$f" .cpp)"); done
cmake --build "$build" -j"${JOBS:-$(nproc)}" --target "${tests[@]}" "${fuzzers[@]}"
echo "sanitize: built in $((SECONDS - start)) s"

# Every finding fails: UBSan aborts (-fno-sanitize-recover), ASan exits non-zero, leaks included. The servers the
# integration tests start inherit these.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
tests_start=$SECONDS
# Left out: the Python tests; timed tests (a speed bound means nothing 2-3x slower under ASan); the attention sweep
# over long contexts (108 cases of 80-110 s each under ASan at load 18; the short-context attention tests stay).
ctest --test-dir "$build" -L 'unit|integration' -LE gpu \
  -E '^(integration|sanitizers)\.|\.Speed|FastAttention\.MatchesReferenceAtContexts' --output-on-failure \
  --timeout 900 -j"${CTEST_JOBS:-2}"
echo "sanitize: tests clean in $((SECONDS - tests_start)) s"

if [ "$fuzz_seconds" != 0 ]; then
  fuzz_start=$SECONDS
  FUZZ_BUILD_DIR="$build" FUZZ_NO_BUILD=1 bash scripts/fuzz.sh "$fuzz_seconds"
  echo "sanitize: fuzz targets clean in $((SECONDS - fuzz_start)) s"
fi
echo "sanitize: clean in $((SECONDS - start)) s"
