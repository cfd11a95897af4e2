#!/usr/bin/env python3
"""Idle resident memory of `quantserve serve` on the default model, per precision, against its budget: weights
+ KV-cache byte budget + 150 MB (issue 12). Starts the server, waits for health, reads VmRSS from /proc and the
weight and KV-cache gauges from /metrics, stops it with SIGTERM. Writes bench/results/cpu_idle_memory.json.

Usage: python3 bench/idle_memory.py [--binary build/server/quantserve] [--precisions fp32,fp16,int8]
"""
import argparse
import datetime
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from bench_common import ROOT, find_binary, git_commit, load_average, machine_info, write_results  # noqa: E402

MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "bench", "results", "cpu_idle_memory.json")
SLACK = 150e6


def gauge(text, name):
    total = 0.0
    found = False
    for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M):
        total += float(m.group(1))
        found = True
    return total if found else None


def measure(binary, precision, port, metrics_port):
    cmd = [binary, "serve", "--model", MODEL, "--precision", precision, "--device", "cpu",
           "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics_port}",
           "--http-listen", ""]
    # The log to a file: a stderr pipe nobody reads fills after ~64 KB and then blocks the server.
    log = tempfile.NamedTemporaryFile(prefix=f"quantserve-idle-memory-{precision}-", suffix=".log", delete=False)
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    try:
        text = None
        for _ in range(600):
            if p.poll() is not None:
                with open(log.name, errors="replace") as f:
                    raise RuntimeError(f"serve exited {p.returncode} (log {log.name}): {f.read()[-2000:]}")
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).read().decode()
                if gauge(text, "quantserve_model_weight_bytes"):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        time.sleep(2)   # idle
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).read().decode()
        rss = None
        for line in open(f"/proc/{p.pid}/status"):
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        weights = gauge(text, "quantserve_model_weight_bytes")
        kv_budget = gauge(text, "quantserve_kv_cache_capacity_bytes")
        kv_committed = gauge(text, "quantserve_kv_cache_committed_bytes")
        limit = (weights or 0) + (kv_budget or 0) + SLACK
        return {"precision": precision, "rss_bytes": rss, "weight_bytes": weights, "kv_cache_capacity_bytes": kv_budget,
                "kv_cache_committed_bytes": kv_committed, "budget_bytes": limit,
                "within_budget": rss is not None and rss <= limit,
                "rss_over_weights_bytes": rss - (weights or 0) if rss else None}
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary")
    ap.add_argument("--precisions", default="fp32,fp16,int8")
    ap.add_argument("--port", type=int, default=50561)
    ap.add_argument("--metrics-port", type=int, default=9561)
    ap.add_argument("-o", "--output", default=OUT)
    args = ap.parse_args()
    binary = find_binary(args.binary)
    rows = []
    for prec in [p for p in args.precisions.split(",") if p]:
        r = measure(binary, prec, args.port, args.metrics_port)
        rows.append(r)
        print(f"{prec:6s} RSS {r['rss_bytes'] / 1e6:7.1f} MB  weights {r['weight_bytes'] / 1e6:6.1f} MB  KV budget "
              f"{(r['kv_cache_capacity_bytes'] or 0) / 1e6:7.1f} MB (committed {(r['kv_cache_committed_bytes'] or 0) / 1e6:.1f})"
              f"  limit {r['budget_bytes'] / 1e6:7.1f} MB  {'ok' if r['within_budget'] else 'OVER'}", flush=True)
    out = {"tool": "bench/idle_memory.py",
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "commit": git_commit(), "machine": machine_info(), "load_average": load_average(),
           "model": os.path.relpath(MODEL, ROOT), "rule": "idle RSS <= weights + KV-cache budget + 150 MB",
           "rows": rows}
    write_results(args.output, out, indent=1)


if __name__ == "__main__":
    main()
