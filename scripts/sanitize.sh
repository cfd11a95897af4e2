#!/usr/bin/env bash
# The sanitizer runs (what CI's "sanitizers" step runs), each in a build directory of its own:
#   asan: ASan + UBSan over the unit and integration suites (C++, and the Python ones that drive the server and
#         client: the OpenAI HTTP API with its hostile clients, constrained decoding, client bench), then a short
#         run of every fuzz target,
#         from one clang build directory (QUANTSERVE_SANITIZE=ON, build-sanitize) so the libraries compile once;
#   tsan: ThreadSanitizer over the project's own threads: the server unit tests (the engine thread of
#         server/scheduler.h driven by client, cancel, task and scrape threads; the Tokenize worker) in build-tsan
#         (QUANTSERVE_TSAN=ON, GCC), and the HTTP server's threads (scripts/tsan.sh). Without gRPC: Debian's
#         libgrpc is not instrumented, and a TSan run of the gRPC integration tests drowns in its frames.
# Fails on a failing test, any sanitizer report (UBSan aborts too, leaks fail) or a fuzz finding.
#   scripts/sanitize.sh [asan|tsan|all] [fuzz-seconds]   default all; fuzz-seconds per target, default 20, 0 = none
# SANITIZE_BUILD_DIR / TSAN_BUILD_DIR move the build directories; JOBS=n compile jobs (default: all cores).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-all}
case "$mode" in
  asan|tsan|all) ;;
  *) echo "usage: scripts/sanitize.sh [asan|tsan|all] [fuzz-seconds]" >&2; exit 2 ;;
esac
fuzz_seconds=${2:-20}
build=${SANITIZE_BUILD_DIR:-build-sanitize}
tsan_build=${TSAN_BUILD_DIR:-build-tsan}
start=$SECONDS

launcher=()
if command -v ccache >/dev/null && [ -z "${CCACHE_DISABLE:-}" ]; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
fi
run_asan() {
  # Build type "Sanitize": no per-type flags, the -O1 -g1 and sanitizers come from QUANTSERVE_SANITIZE.
  cmake -S . -B "$build" -DQUANTSERVE_SANITIZE=ON -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
    -DCMAKE_BUILD_TYPE=Sanitize "${launcher[@]}" >/dev/null
  local tests fuzzers f
  # quantserve and its client too: the Python integration tests below drive them (the HTTP door, hostile clients).
  tests=(qs_kernels_tests qs_tokenizer_tests qs_loader_tests qs_engine_tests qs_server_tests qs_integration_tests
         quantserve quantserve-client)
  fuzzers=()
  for f in tests/fuzz/*_fuzzer.cpp; do fuzzers+=("$(basename "$f" .cpp)"); done
  cmake --build "$build" -j"${JOBS:-$(nproc)}" --target "${tests[@]}" "${fuzzers[@]}"
  echo "sanitize: asan built in $((SECONDS - start)) s"

  # Every finding fails: UBSan aborts (-fno-sanitize-recover), ASan exits non-zero, leaks included. The servers the
  # integration tests start inherit these.
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  # Leaks in libraries not ours (LLVM's OpenMP runtime keeps its pool to exit): tests/sanitizers/lsan.supp.
  export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/sanitizers/lsan.supp:print_suppressions=0}
  local tests_start=$SECONDS fuzz_start
  # Left out: of the Python tests, the soak (its RSS bound means nothing with ASan's quarantine) and the two CLI
  # checks of perplexity (the engine paths they take are in the unit suites); timed tests (a speed bound means
  # nothing 2-3x slower under ASan); the attention sweep
  # over long contexts (108 cases of 80-110 s each under ASan at load 18); and of the fast attention's other
  # sweeps, the larger head shapes (NH9/NH8, head dim 128: 6 of each ISA's 9 shapes, ~1,600 s of the ~1,630 s
  # the first 114 tests took): each ISA and KV dtype still runs with MHA (NH4) and GQA with an odd block (NH6, BS12).
  ctest --test-dir "$build" -L 'unit|integration' -LE gpu \
    -E '^sanitizers\.|^integration\.(soak_short|group_size_cli|perplexity_method_cli)$|\.Speed|FastAttention\.MatchesReferenceAtContexts|FastAttention\..*_(NH9|NH8|NH4_NKV4_HD128)_' \
    --output-on-failure --timeout 900 -j"${CTEST_JOBS:-2}"
  echo "sanitize: tests clean in $((SECONDS - tests_start)) s"

  if [ "$fuzz_seconds" != 0 ]; then
    fuzz_start=$SECONDS
    FUZZ_BUILD_DIR="$build" FUZZ_NO_BUILD=1 bash scripts/fuzz.sh "$fuzz_seconds"
    echo "sanitize: fuzz targets clean in $((SECONDS - fuzz_start)) s"
  fi
}

run_tsan() {
  local tsan_start=$SECONDS
  # Build type "Tsan": no per-type flags, the -O1 and -fsanitize=thread come from QUANTSERVE_TSAN.
  cmake -S . -B "$tsan_build" -DQUANTSERVE_TSAN=ON -DCMAKE_BUILD_TYPE=Tsan "${launcher[@]}" >/dev/null
  cmake --build "$tsan_build" -j"${JOBS:-$(nproc)}" --target qs_server_tests
  echo "sanitize: tsan built in $((SECONDS - tsan_start)) s"
  # One OpenMP thread: libgomp is not instrumented, so its barriers would read as races; the threads under test
  # are the server's own. A report fails the run (exit 66).
  TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 ${TSAN_OPTIONS:-}" OMP_NUM_THREADS=1 \
    "$tsan_build/tests/qs_server_tests" --gtest_brief=1
  bash scripts/tsan.sh "$tsan_build/http"
  echo "sanitize: tsan clean in $((SECONDS - tsan_start)) s"
}

[ "$mode" = tsan ] || run_asan
[ "$mode" = asan ] || run_tsan
echo "sanitize: $mode clean in $((SECONDS - start)) s"
