#!/usr/bin/env bash
# Live check of the observability stack: a real quantserve under load, a real
# Prometheus scraping it every second, then every dashboard query and every
# alert rule evaluated through Prometheus's HTTP API (tests/deploy/live_queries.py).
#
#   tests/deploy/test_prometheus_live.sh QUANTSERVE_BIN QUANTSERVE_CLIENT_BIN [DASHBOARD_PNG_DIR]
#
# Needs: the two binaries, tests/fixtures/models/gpt2, `prometheus` (Debian
# package), python3. Renders the dashboard to PNGs (tools/render_dashboard.py)
# when matplotlib is importable, into DASHBOARD_PNG_DIR (default: a temp dir
# removed at exit; pass bench/results/dashboard to keep them).
# Exit 0 pass, 1 fail, 77 skip (a prerequisite is genuinely missing).
# Every wait is bounded; everything started here is killed on exit.
set -uo pipefail

SKIP=77
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
QS="${1:-${QUANTSERVE_BIN:-$REPO/build/server/quantserve}}"
QSC="${2:-${QUANTSERVE_CLIENT_BIN:-$REPO/build/client/quantserve-client}}"
PNG_DIR="${3:-${QS_DASHBOARD_OUT:-}}"
MODEL="${QS_LIVE_MODEL:-$REPO/tests/fixtures/models/gpt2}"
PROMETHEUS="${PROMETHEUS:-$(command -v prometheus || true)}"
PY="${PYTHON:-python3}"

skip() { echo "SKIP: $*"; exit "$SKIP"; }
[ -x "$QS" ] || skip "quantserve binary not built ($QS)"
[ -x "$QSC" ] || skip "quantserve-client binary not built ($QSC)"
[ -n "$PROMETHEUS" ] && [ -x "$PROMETHEUS" ] || skip "prometheus not installed (Debian package prometheus; scripts/setup.sh)"
[ -e "$MODEL" ] || skip "fixture model $MODEL missing"
"$PY" -c 'import yaml' 2>/dev/null || skip "python3 with PyYAML not found"
"$QS" serve --help >/dev/null 2>&1 || skip "this quantserve has no 'serve' subcommand yet"
"$QSC" bench --help >/dev/null 2>&1 || skip "this quantserve-client has no 'bench' subcommand yet"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/qs-prom-live.XXXXXX")"
PIDS=()
STATUS=1
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [ "$STATUS" != 0 ]; then
    echo "---- server log (tail) ----"; tail -n 40 "$TMP/server.log" 2>/dev/null
    echo "---- prometheus log (tail) ----"; tail -n 20 "$TMP/prometheus.log" 2>/dev/null
    echo "---- bench log (tail) ----"; tail -n 20 "$TMP/bench.log" 2>/dev/null
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

fail() { echo "FAIL: $*"; exit 1; }

# Three free loopback ports (bound and released; a race is possible but rare).
read -r GRPC_PORT METRICS_PORT PROM_PORT < <("$PY" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
)
PROM_URL="http://127.0.0.1:$PROM_PORT"
echo "ports: grpc $GRPC_PORT, metrics $METRICS_PORT, prometheus $PROM_PORT; tmp $TMP"

http_ok() { "$PY" -c "import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)" "$1" >/dev/null 2>&1; }
promq() {  # first sample value of an instant query, or empty
  "$PY" - "$PROM_URL" "$1" <<'EOF'
import json, sys, urllib.parse, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1] + "/api/v1/query?" + urllib.parse.urlencode({"query": sys.argv[2]}), timeout=5) as r:
        res = json.load(r)["data"]["result"]
    print(res[0]["value"][1] if res else "")
except Exception:
    print("")
EOF
}

# ---- 1. the server
"$QS" serve --model "$MODEL" --listen "127.0.0.1:$GRPC_PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" \
  --http-listen "" >"$TMP/server.log" 2>&1 &
QS_PID=$!
PIDS+=("$QS_PID")
ready=0
for _ in $(seq 240); do  # 120 s
  kill -0 "$QS_PID" 2>/dev/null || fail "quantserve exited early"
  if timeout 5 "$QSC" --address "127.0.0.1:$GRPC_PORT" health >/dev/null 2>&1 \
     && http_ok "http://127.0.0.1:$METRICS_PORT/metrics"; then ready=1; break; fi
  sleep 0.5
done
[ "$ready" = 1 ] || fail "quantserve not healthy (gRPC health + /metrics) within 120 s"
echo "quantserve healthy"

# ---- 2. Prometheus, scraping every second, with our alert rules loaded
mkdir -p "$TMP/rules" "$TMP/data"
cp "$REPO"/deploy/prometheus/rules/*.yml "$TMP/rules/"
cat >"$TMP/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - rules/*.yml
scrape_configs:
  - job_name: quantserve
    static_configs:
      - targets: ["127.0.0.1:$METRICS_PORT"]
EOF
"$PROMETHEUS" --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/data" \
  --web.listen-address="127.0.0.1:$PROM_PORT" --storage.tsdb.retention.time=1h \
  --log.level=warn >"$TMP/prometheus.log" 2>&1 &
PIDS+=("$!")
PROM_PID=$!
ready=0
for _ in $(seq 120); do  # 60 s
  kill -0 "$PROM_PID" 2>/dev/null || fail "prometheus exited early"
  http_ok "$PROM_URL/-/ready" && { ready=1; break; }
  sleep 0.5
done
[ "$ready" = 1 ] || fail "prometheus not ready within 60 s"
up=""
for _ in $(seq 60); do  # 30 s
  up="$(promq 'up{job="quantserve"}')"
  [ "$up" = 1 ] && break
  sleep 0.5
done
[ "$up" = 1 ] || fail "prometheus never scraped quantserve successfully (up=$up)"
echo "prometheus scraping"
START=$(date +%s)

# ---- 3. load
timeout 300 "$QSC" --address "127.0.0.1:$GRPC_PORT" bench --concurrency 4 --requests 40 \
  --prompt-tokens 16 --max-new-tokens 16 >"$TMP/bench.log" 2>&1 || fail "bench failed (rc $?)"
tail -n 5 "$TMP/bench.log"

# ---- 4. wait until the finished requests are scraped (and a few scrapes more)
n=""
for _ in $(seq 60); do  # 30 s
  n="$(promq 'sum(quantserve_requests_total{job="quantserve"})')"
  [ -n "$n" ] && "$PY" -c "import sys; sys.exit(0 if float(sys.argv[1]) >= 40 else 1)" "$n" && break
  sleep 0.5
done
"$PY" -c "import sys; sys.exit(0 if sys.argv[1] and float(sys.argv[1]) >= 40 else 1)" "$n" \
  || fail "quantserve_requests_total reached only '${n}' (expected >= 40)"
sleep 3
WINDOW="$(( $(date +%s) - START + 10 ))s"
echo "requests scraped: $n; rate window $WINDOW"

# ---- 5. every dashboard query and every alert rule
"$PY" "$HERE/live_queries.py" --prom "$PROM_URL" --window "$WINDOW" --report "$TMP/live_queries.json" \
  || fail "dashboard/alert queries without data (see above)"

# ---- 6. PNGs of the dashboard panels, when matplotlib is there
if "$PY" -c 'import matplotlib' 2>/dev/null; then
  out="${PNG_DIR:-$TMP/dashboard}"
  "$PY" "$REPO/tools/render_dashboard.py" --prom "$PROM_URL" --out "$out" \
    --start "$((START - 5))" --end "$(date +%s)" --step 1 --window "$WINDOW" \
    || fail "render_dashboard.py failed"
  echo "dashboard PNGs: $out"
else
  echo "note: matplotlib not installed; dashboard PNGs not rendered (scripts/setup.sh --tools installs it)"
fi

STATUS=0
echo "PASS: live Prometheus check"
exit 0
