#!/usr/bin/env bash
# Sets up, builds, fetches the default model (SmolLM2-135M-Instruct) and serves it: gRPC on :50051, the
# OpenAI-compatible HTTP API on :8000, Prometheus metrics on :9090. Extra arguments go to `quantserve serve`
# (e.g. --precision int8, or --model models/gemma-3-270m-q4_k_m.gguf, which setup.sh --extra-models fetches first).
set -euo pipefail
cd "$(dirname "$0")/.."
setup_args=()
prev=""
for arg in "$@"; do
  model=""
  case "$arg" in
    --model=*) model="${arg#--model=}" ;;
    *) if [ "$prev" = "--model" ] || [ "$prev" = "-m" ]; then model="$arg"; fi ;;
  esac
  case "$model" in
    *gemma-3-270m-q4_k_m.gguf) setup_args=(--extra-models) ;;
  esac
  prev="$arg"
done
bash scripts/setup.sh "${setup_args[@]}"
bash scripts/build.sh
exec build/server/quantserve serve "$@"
