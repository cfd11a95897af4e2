#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, QUANTSERVE_FUZZ=ON: clang, ASan + UBSan) in build-fuzz and runs each
# over its committed seed corpus for SECONDS (default 30); fails on the first crash, leak, timeout or sanitizer report.
#   scripts/fuzz.sh [seconds] [target...]     targets by name (gguf, safetensors, ...); all of tests/fuzz by default
# New inputs a run finds go to build-fuzz/fuzz-corpus/<target>, crashing ones to build-fuzz/fuzz-artifacts/.
# FUZZ_BUILD_DIR=dir builds and runs in another directory; JOBS=n compiles with n jobs (default: all cores);
# FUZZ_NO_BUILD=1 runs the targets already built there, without configuring or building.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${FUZZ_BUILD_DIR:-build-fuzz}

seconds=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in tests/fuzz/*_fuzzer.cpp; do n=$(basename "$f" _fuzzer.cpp); targets+=("$n"); done
fi

if [ -z "${FUZZ_NO_BUILD:-}" ]; then
  launcher=()
  if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache); fi
  cmake -S . -B "$build" -DQUANTSERVE_FUZZ=ON -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo "${launcher[@]}" >/dev/null
  cmake --build "$build" -j"${JOBS:-$(nproc)}" --target "${targets[@]/%/_fuzzer}"
fi

mkdir -p "$build/fuzz-artifacts" "$build/fuzz-logs"
status=0
for t in "${targets[@]}"; do
  work=$build/fuzz-corpus/$t
  log=$build/fuzz-logs/$t.log
  mkdir -p "$work"
  # The first directory receives new inputs; the committed seeds are only read. An input taking over 25 s is a
  # hang (the readers are linear in their input), and one over 2 GB of memory a failure.
  if "$build/tests/fuzz/${t}_fuzzer" -max_total_time="$seconds" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 \
       -artifact_prefix="$build/fuzz-artifacts/$t-" "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1; then
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+' || true)
    echo "fuzz: $t clean: ${seconds} s, ${execs:-?} executions, ${last:-no coverage line}"
  else
    echo "fuzz: $t FAILED (log $log):" >&2
    grep -E 'ERROR|SUMMARY|runtime error|Test unit written|deadly signal' "$log" | head -20 >&2 || tail -30 "$log" >&2
    status=1
  fi
done
exit $status
