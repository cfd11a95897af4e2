#!/usr/bin/env bash
# Sets up, builds, fetches the default model (SmolLM2-135M-Instruct) and serves it: gRPC on :50051,
# Prometheus metrics on :9090. Extra arguments go to `quantserve serve` (e.g. --precision int8).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
exec build/server/quantserve serve "$@"
