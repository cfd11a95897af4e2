#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite (what CI runs). GPU tests skip themselves without a device.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# CI builds the CUDA backend for one architecture to save time; a release build covers sm_80..sm_90.
cuda_args=()
if [ "${CI:-}" = "true" ] && command -v nvcc >/dev/null 2>&1; then cuda_args=(-DCMAKE_CUDA_ARCHITECTURES=90); fi
bash scripts/build.sh "${cuda_args[@]}"
ctest --test-dir build --output-on-failure --timeout 600 -j2
