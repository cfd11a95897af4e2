#!/usr/bin/env bash
# Serving concurrency sweep: starts `quantserve serve` on the default model (CPU), runs `quantserve-client bench` at
# concurrency 1, 2, 4, 8, 16, 32 and writes bench/results/cpu_serve_concurrency.json.
#   bench/client_bench.sh [BUILD_DIR]      (default: build)
# Environment: MODEL (default models/SmolLM2-135M-Instruct.Q4_1.gguf), PRECISION (fp32), PROMPT_TOKENS (32),
# MAX_NEW_TOKENS (64), NOTE (free text stored in the JSON), LEVELS ("1 2 4 8 16 32"), PORT (50551), METRICS_PORT (9551), OUT (the JSON path).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
SERVER=$BUILD/server/quantserve
CLIENT=$BUILD/client/quantserve-client
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
PRECISION=${PRECISION:-fp32}
PROMPT_TOKENS=${PROMPT_TOKENS:-32}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-64}
LEVELS=${LEVELS:-"1 2 4 8 16 32"}
PORT=${PORT:-50551}
METRICS_PORT=${METRICS_PORT:-9551}
OUT=${OUT:-bench/results/cpu_serve_concurrency.json}

for f in "$SERVER" "$CLIENT"; do
  [ -x "$f" ] || { echo "client_bench: $f not built (cmake --build $BUILD --target quantserve quantserve-client)" >&2; exit 2; }
done
[ -s "$MODEL" ] || { echo "client_bench: $MODEL missing; run scripts/setup.sh" >&2; exit 2; }

tmp=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

"$SERVER" serve --model "bench=$MODEL" --precision "$PRECISION" --device cpu \
  --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" --http-listen "" \
  --max-batch-size 32 --max-queued 64 >"$tmp/server.log" 2>&1 &
server_pid=$!
ready=0
for _ in $(seq 1 600); do   # up to 120 s to load
  if "$CLIENT" --address "127.0.0.1:$PORT" --timeout 1 health >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.2
done
if [ "$ready" != 1 ]; then
  echo "client_bench: the server did not come up:" >&2
  cat "$tmp/server.log" >&2
  exit 1
fi

# Warm-up (first-touch allocations, oneDNN primitive creation), not recorded.
"$CLIENT" --address "127.0.0.1:$PORT" bench --concurrency 2 --requests 2 --prompt-tokens "$PROMPT_TOKENS" \
  --max-new-tokens 8 >/dev/null

for c in $LEVELS; do
  requests=$(( c * 2 > 4 ? c * 2 : 4 ))
  echo "client_bench: concurrency $c, $requests requests" >&2
  "$CLIENT" --address "127.0.0.1:$PORT" --timeout 600 bench --concurrency "$c" --requests "$requests" \
    --prompt-tokens "$PROMPT_TOKENS" --max-new-tokens "$MAX_NEW_TOKENS" --json --output "$tmp/c$c.json" >/dev/null
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('  %6.1f tokens/s, ttft p50 %.0f ms, itl p50 %.1f ms' % (d['tokens_per_second'], d['ttft_seconds']['p50']*1e3, d['inter_token_latency_seconds']['p50']*1e3))" "$tmp/c$c.json" >&2
done

"$CLIENT" --address "127.0.0.1:$PORT" info --json >"$tmp/info.json"
python3 - "$tmp" "$OUT" "$LEVELS" <<'PY'
import json, os, platform, subprocess, sys
tmp, out, levels = sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3].split()]
runs = [json.load(open(os.path.join(tmp, f"c{c}.json"))) for c in levels]
info = json.load(open(os.path.join(tmp, "info.json")))
def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
by_c = {r["concurrency"]: r["tokens_per_second"] for r in runs}
result = {
    "benchmark": "serve_concurrency",
    "device": "cpu",
    "cpu": cpu_name(),
    "cores": os.cpu_count(),
    "commit": commit,
    "model": info.get("path"),
    "architecture": info.get("architecture"),
    "precision": info.get("precision"),
    "prompt_tokens": runs[0]["prompt_tokens"],
    "max_new_tokens": runs[0]["max_new_tokens"],
    "client": "quantserve-client bench (closed loop, GenerateStream, ignore_eos, greedy)",
    "speedup_tokens_per_second_vs_concurrency_1": {str(c): round(t / by_c[levels[0]], 2) for c, t in by_c.items()},
    "notes": os.environ.get("NOTE", ""),
    "runs": runs,
}
os.makedirs(os.path.dirname(out), exist_ok=True)
with open(out, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
print(f"client_bench: wrote {out}", file=sys.stderr)
for c in levels:
    print(f"  concurrency {c:3d}: {by_c[c]:8.1f} tokens/s ({by_c[c] / by_c[levels[0]]:.2f}x)", file=sys.stderr)
PY
