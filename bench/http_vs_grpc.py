#!/usr/bin/env python3
"""What the OpenAI-compatible HTTP API costs against gRPC: tokens/s of the same load through each door, driven by
the project's own compiled load generator (`quantserve-client bench --api grpc|http`), so that no Python client's
cost on the same cores lands on one door's account.

One `quantserve serve` (default model, int8, one engine thread unless --threads: on this shared 2-core machine two
threads' barrier waits made rounds 4x slower and tied each figure to the neighbours' load). At each concurrency
(1 and 16) and each mode (unary and streamed), rounds alternate doors — grpc then http, then http then grpc, and so
on — for --reps repetitions; one round is one client run of --requests-per-client x c requests (at least 2;
64-token prompts, 32 new tokens, greedy, ignore_eos), tokens/s = generated tokens / the client's wall time of its
requests (its connection setup and prompt probes excluded). Medians, the paired HTTP/gRPC ratio of each repetition
(the two rounds next to each other in time, so slow drifts of the machine's load cancel) with its spread, the
1-minute load average before every round, server and client CPU per token, and TTFT / inter-token medians of the
streamed rounds go to bench/results/http_vs_grpc.json.

Prefix caching is off: the load generator sends the same prompt in every request, so with the cache on every
request but the first would skip its prefill and the comparison would measure cache hits rather than serving,
and which door came first would decide which one paid for the prefills.

    python3 bench/http_vs_grpc.py [--binary build/server/quantserve] [--client build/client/quantserve-client]
                                  [--reps 10] [--concurrency 1,16]
"""
import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
from bench_common import ROOT, find_binary, git_commit, load_average, machine_info, write_results  # noqa: E402
from quantserve_grpc import DEFAULT_MODEL, cpu_seconds, free_port  # noqa: E402

DOORS = ("grpc", "http")
MODES = ("unary", "stream")


class HealthyProcess:
    """A server process, its log in a file (a pipe nobody reads fills after ~64 KB of request lines and then blocks
    the server), ready once `health_url` answers 200; if it exits first, or is not ready within 300 s, this script
    exits with the end of its log. `merge_stdout`: the server logs to stdout too."""

    def __init__(self, name, cmd, health_url, merge_stdout=False):
        self.command = cmd
        self.log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=self.log if merge_stdout else subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT if merge_stdout else self.log)
        deadline = time.time() + 300
        while True:
            if self.proc.poll() is not None:
                with open(self.log.name, errors="replace") as f:
                    sys.exit(f"{name} exited: {f.read()[-3000:]}")
            try:
                with urllib.request.urlopen(health_url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass   # refused before it listens, 503 while it loads
            if time.time() > deadline:
                sys.exit(f"{name} did not become healthy within 300 s")
            time.sleep(0.5)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Server(HealthyProcess):
    def __init__(self, binary, threads):
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        cmd = [binary, "serve", "--model", f"smollm2={DEFAULT_MODEL}", "--precision", "int8", "--device", "cpu",
               "--threads", str(threads), "--prefix-cache", "off", "--max-batch-size", "32", "--max-queued", "128",
               "--listen", f"127.0.0.1:{self.grpc_port}", "--http-listen", f"127.0.0.1:{self.http_port}",
               "--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
        super().__init__("quantserve", cmd, f"http://127.0.0.1:{self.http_port}/health")
        self.address = {"grpc": f"127.0.0.1:{self.grpc_port}", "http": f"127.0.0.1:{self.http_port}"}


def one_round(client, server, door, mode, concurrency, requests, prompt_tokens, new_tokens):
    """One run of the compiled load generator; its JSON summary (errors are fatal: a round with errors is no
    measurement of the door), with the CPU time the server and the client used in it (user + system: less
    sensitive to the machine's load than wall time, though the server's includes its idle workers' spinning)."""
    cmd = [client, "--address", server.address[door], "--timeout", "600", "bench", "--api", door, "--json",
           "--concurrency", str(concurrency), "--requests", str(requests), "--prompt-tokens", str(prompt_tokens),
           "--max-new-tokens", str(new_tokens)] + (["--unary"] if mode == "unary" else [])
    server_cpu = cpu_seconds(server.proc.pid)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    server_cpu = cpu_seconds(server.proc.pid) - server_cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-2000:]}")
    s = json.loads(p.stdout)
    if s["errors"] or s["requests_ok"] != requests or s["generated_tokens"] != requests * new_tokens:
        sys.exit(f"round {door} {mode} c={concurrency} not clean: {json.dumps(s)[:2000]}")
    s["server_cpu_seconds"], s["client_cpu_seconds"] = server_cpu, client_cpu
    return s


# What of the server's CPU is each door's own: its threads (anything not named like the engine's), and, in the
# engine's threads, the door's code (the symbols below; kernel time for their writes is not separable here).
DOOR_SYMBOLS = {"grpc": ("grpc", "protobuf", "absl", "GrpcGeneration", "Reactor"),
                "http": ("Http", "OpenAi", "nlohmann", "MHD_", "microhttpd")}


def profile_round(client, server, door, concurrency, requests, prompt_tokens, new_tokens, workdir):
    """One streamed round with `perf record` (Debian linux-perf; cpu-clock samples at 999 Hz) on the server: the
    share of its samples in the door's threads and code, and that CPU time per generated token."""
    data = os.path.join(workdir, f"perf-{door}.data")
    perf = subprocess.Popen(["perf", "record", "-q", "-F", "999", "-o", data, "-p", str(server.proc.pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)   # perf attached before the first request
    s = one_round(client, server, door, "stream", concurrency, requests, prompt_tokens, new_tokens)
    perf.send_signal(signal.SIGINT)
    perf.wait(60)
    report = subprocess.run(["perf", "report", "-i", data, "--no-children", "-g", "none", "-n", "--stdio",
                             "--sort", "comm,dso,sym", "-t", "\t"], capture_output=True, text=True, timeout=300)
    total = door_threads = door_code = 0
    for line in report.stdout.splitlines():
        fields = [f.strip() for f in line.split("\t")]
        if line.startswith("#") or len(fields) < 5 or not fields[1].isdigit():
            continue
        samples, comm, sym = int(fields[1]), fields[2], fields[4]
        total += samples
        if not comm.startswith("quantserve"):
            door_threads += samples
        elif any(k in sym for k in DOOR_SYMBOLS[door]):
            door_code += samples
    if total == 0:
        sys.exit(f"perf recorded no samples of the server: {report.stderr[-1000:]}")
    per_token_ms = 1e3 / 999 / s["generated_tokens"]
    return {"samples": total, "door_threads_share": door_threads / total, "door_code_in_engine_threads_share":
            door_code / total, "door_cpu_ms_per_token": (door_threads + door_code) * per_token_ms,
            "server_cpu_ms_per_token": total * per_token_ms, "tokens_per_second": s["tokens_per_second"]}


def spread(values):
    """min, max and the interquartile range of a list, for how noisy its median is."""
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return {"min": min(values), "max": max(values), "q1": q[0], "q3": q[2]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary")
    parser.add_argument("--client", default=os.path.join(ROOT, "build", "client", "quantserve-client"))
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--requests-per-client", type=int, default=1,
                        help="a round's requests = this x concurrency (at least 2)")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    # One engine thread by default: on a shared 2-core machine (this one, with other jobs' load of 10-20) two threads'
    # barrier waits made a round 4x slower and its figure hang on the neighbours' load (c=1: 1.7-2.1 tok/s with 2
    # threads, 6.4-9.1 with 1, same minute); the doors' own threads still share the cores with it.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true",
                        help="after the rounds, one streamed round per door at the last concurrency under perf")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "http_vs_grpc.json"))
    args = parser.parse_args()
    binary = find_binary(args.binary)
    if not os.access(args.client, os.X_OK):
        sys.exit(f"{args.client} not built (cmake --build build --target quantserve-client)")
    server = Server(binary, args.threads)
    results = {"benchmark": "http_vs_grpc", "commit": git_commit(), "machine": machine_info(args.threads),
               "model": os.path.basename(DEFAULT_MODEL), "precision": "int8", "prefix_cache": "off",
               "client": "quantserve-client bench (C++; gRPC: one channel; HTTP: libcurl, one kept-alive "
                         "connection per concurrent client)",
               "prompt_tokens_requested": args.prompt_tokens, "new_tokens": args.new_tokens, "reps": args.reps,
               "load_average_start": load_average(),
               "method": "per concurrency and mode, --reps repetitions of two rounds, one per door, the order "
                         "alternating (grpc first in even repetitions); tokens/s = generated tokens / the client's "
                         "wall time of its requests; ratio = http / grpc of the same repetition",
               "concurrency": {}}
    try:
        for door in DOORS:   # first-call costs (page faults, allocator growth) on neither door's account
            one_round(args.client, server, door, "stream", 2, 2, args.prompt_tokens, 4)
        for c in [int(x) for x in args.concurrency.split(",")]:
            requests = max(2, args.requests_per_client * c)
            results["concurrency"][str(c)] = {"requests_per_round": requests}
            for mode in MODES:
                rounds = {d: [] for d in DOORS}
                loads = []
                for rep in range(args.reps):
                    for door in (DOORS if rep % 2 == 0 else DOORS[::-1]):
                        loads.append(load_average()[0])
                        rounds[door].append(one_round(args.client, server, door, mode, c, requests,
                                                      args.prompt_tokens, args.new_tokens))
                    print(f"c={c} {mode} rep {rep + 1}: " + ", ".join(
                        f"{d} {rounds[d][-1]['tokens_per_second']:.1f}" for d in DOORS) +
                        f" tok/s (load {loads[-1]:.2f})", flush=True)
                entry = {"load_average_1m_per_round": loads,
                         "prompt_tokens": sorted({r["prompt_tokens"] for d in DOORS for r in rounds[d]})}
                for d in DOORS:
                    tps = [r["tokens_per_second"] for r in rounds[d]]
                    entry[f"{d}_tokens_per_second"] = tps
                    entry[f"{d}_median"] = statistics.median(tps)
                    entry[f"{d}_spread"] = spread(tps)
                    if mode == "stream":
                        entry[f"{d}_ttft_p50_seconds_median"] = statistics.median(
                            r["ttft_seconds"]["p50"] for r in rounds[d])
                        entry[f"{d}_inter_token_p50_seconds_median"] = statistics.median(
                            r["inter_token_latency_seconds"]["p50"] for r in rounds[d])
                    for side in ("server", "client"):   # the client's includes its prompt probes and setup
                        entry[f"{d}_{side}_cpu_ms_per_token_median"] = statistics.median(
                            1e3 * r[f"{side}_cpu_seconds"] / r["generated_tokens"] for r in rounds[d])
                    entry[f"{d}_request_latency_p50_seconds_median"] = statistics.median(
                        r["request_latency_seconds"]["p50"] for r in rounds[d])
                ratios = [h["tokens_per_second"] / g["tokens_per_second"]
                          for h, g in zip(rounds["http"], rounds["grpc"])]
                entry["http_over_grpc_ratios"] = ratios
                entry["http_over_grpc_median"] = statistics.median(ratios)
                entry["http_over_grpc_spread"] = spread(ratios)
                entry["http_median_within_5_percent"] = entry["http_over_grpc_median"] >= 0.95
                results["concurrency"][str(c)][mode] = entry
                print(f"c={c} {mode}: grpc {entry['grpc_median']:.1f} tok/s, http {entry['http_median']:.1f}, "
                      f"http/grpc median {entry['http_over_grpc_median']:.3f} "
                      f"(IQR {entry['http_over_grpc_spread']['q1']:.3f}-{entry['http_over_grpc_spread']['q3']:.3f}, "
                      f"range {entry['http_over_grpc_spread']['min']:.3f}-{entry['http_over_grpc_spread']['max']:.3f})",
                      flush=True)
        if args.profile:
            c = int(args.concurrency.split(",")[-1])
            with tempfile.TemporaryDirectory(prefix="http-vs-grpc-perf-") as workdir:
                results["profile"] = {"concurrency": c, "door_symbols": DOOR_SYMBOLS, **{
                    door: profile_round(args.client, server, door, c, max(2, args.requests_per_client * c),
                                        args.prompt_tokens, args.new_tokens, workdir) for door in DOORS}}
            print("profile: " + json.dumps(results["profile"]), flush=True)
    finally:
        server.stop()
    results["load_average_end"] = load_average()
    write_results(args.out, results)


if __name__ == "__main__":
    main()
