#!/usr/bin/env python3
"""A bounded soak of `quantserve serve`: many clients, both front doors, random cancels and deadlines.

16 client threads send --requests requests in all (mixed prompt and output lengths) to one server on the tiny
GPT-2 fixture, half through gRPC (unary and streaming) and half through the OpenAI-compatible HTTP API (whole
and streamed). About one in ten is cancelled mid-stream (the client closes it after a few chunks) and one in ten
has a deadline too short to finish. At the end, with no request left: every status must be an expected one
(OK, CANCELLED, DEADLINE_EXCEEDED, or RESOURCE_EXHAUSTED / 429 from a full queue), no KV-cache block may still be
held, and the resident memory may have grown by less than 5% since the warm-up (the first tenth of the requests).
Writes bench/results/soak.json.

    python3 tools/soak.py [--binary build/server/quantserve] [--requests 10000] [--clients 16]
"""
import argparse
import collections
import os
import random
import sys
import threading
import time
import urllib.request

import grpc
import openai

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import ROOT, find_binary, git_commit, load_average, machine_info, write_results  # noqa: E402
from quantserve_grpc import free_port, load_stubs  # noqa: E402

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "models", "gpt2")
EXPECTED = {"OK", "CANCELLED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "HTTP_429", "CLIENT_CLOSED",
            "CLIENT_TIMEOUT"}
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


def metric(port, name, *labels):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    total, found = 0.0, False
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and all(x in line for x in labels):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary")
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-rss-growth", type=float, default=0.05,
                        help="allowed RSS growth after warm-up (CI's short run, too short to judge it, passes 1)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "soak.json"))
    args = parser.parse_args()
    binary = find_binary(args.binary)
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    log_path = os.path.join("/tmp", f"quantserve-soak-{os.getpid()}.log")
    log = open(log_path, "w")
    import subprocess
    proc = subprocess.Popen([binary, "serve", "--model", f"gpt2={FIXTURE}", "--device", "cpu", "--threads", "1",
                             "--max-queued", "32", "--max-batch-size", "16", "--listen", f"127.0.0.1:{grpc_port}",
                             "--http-listen", f"127.0.0.1:{http_port}", "--metrics-listen", f"127.0.0.1:{metrics_port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    pb2, pb2_grpc = load_stubs()
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=2)
            break
        except OSError:
            time.sleep(0.2)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = pb2_grpc.InferenceStub(channel)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="unused", max_retries=0, timeout=60)

    statuses = collections.Counter()
    lock = threading.Lock()
    counter = iter(range(args.requests))
    rss = {}
    warm_up = args.requests // 10

    def one(rng, i):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 20)))
        max_tokens = rng.randint(1, 40)
        mode = rng.random()   # < 0.1 cancel mid-stream, < 0.2 a deadline too short, else run to the end
        door = rng.choice(["grpc", "grpc_stream", "http", "http_stream"])
        timeout = 0.02 if 0.1 <= mode < 0.2 else 60
        try:
            if door.startswith("grpc"):
                request = pb2.GenerateRequest(model="gpt2", prompt=prompt, max_new_tokens=max_tokens, temperature=0.8,
                                              seed=i, ignore_eos=True)
                if door == "grpc":
                    stub.Generate(request, timeout=timeout)
                else:
                    stream = stub.GenerateStream(request, timeout=timeout)
                    for k, _ in enumerate(stream):
                        if mode < 0.1 and k == 2:
                            stream.cancel()
                            return "CLIENT_CLOSED"
                return "OK"
            kwargs = dict(model="gpt2", prompt=prompt, max_tokens=max_tokens, temperature=0.8, seed=i,
                          extra_body={"ignore_eos": True}, timeout=timeout)
            if door == "http":
                client.completions.create(**kwargs)
            else:
                stream = client.completions.create(stream=True, **kwargs)
                for k, _ in enumerate(stream):
                    if mode < 0.1 and k == 2:
                        stream.response.close()
                        return "CLIENT_CLOSED"
            return "OK"
        except grpc.RpcError as e:
            return e.code().name
        except openai.APITimeoutError:
            return "CLIENT_TIMEOUT"
        except openai.APIStatusError as e:
            return f"HTTP_{e.status_code}"
        except openai.APIConnectionError:
            return "CLIENT_TIMEOUT" if timeout < 1 else "HTTP_CONNECTION_ERROR"

    def worker(seed):
        rng = random.Random(seed)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            status = one(rng, i)
            with lock:
                statuses[status] += 1
                if i == warm_up and "warm" not in rss:
                    rss["warm"] = metric(metrics_port, "process_resident_memory_bytes")

    t0 = time.time()
    threads = [threading.Thread(target=worker, args=(args.seed * 1000 + c,)) for c in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.time() - t0
    # Let the server retire what clients abandoned, then look.
    end = time.time() + 30
    while time.time() < end and (metric(metrics_port, "quantserve_requests_running") or
                                 metric(metrics_port, "quantserve_requests_waiting")):
        time.sleep(0.2)
    time.sleep(1)
    blocks_used = metric(metrics_port, "quantserve_kv_cache_blocks_used")
    rss["end"] = metric(metrics_port, "process_resident_memory_bytes")
    server_counts = {}
    for status in ("OK", "CANCELLED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "UNAVAILABLE",
                   "INVALID_ARGUMENT"):
        server_counts[status] = metric(metrics_port, "quantserve_requests_total", f'status="{status}"')
    channel.close()
    proc.terminate()
    exit_code = proc.wait(60)
    unexpected = {k: v for k, v in statuses.items() if k not in EXPECTED}
    growth = (rss["end"] - rss["warm"]) / rss["warm"] if rss.get("warm") else None
    result = {"benchmark": "soak", "commit": git_commit(), "machine": machine_info(1), "load_average": load_average(),
              "requests": args.requests, "clients": args.clients, "seconds": elapsed,
              "client_statuses": dict(statuses), "server_requests_total": server_counts,
              "unexpected_statuses": unexpected, "kv_blocks_used_at_end": blocks_used,
              "rss_after_warm_up_bytes": rss.get("warm"), "rss_end_bytes": rss["end"], "rss_growth": growth,
              "server_exit_code_after_sigterm": exit_code,
              "passed": not unexpected and blocks_used == 0 and growth is not None and growth < args.max_rss_growth and exit_code == 0}
    write_results(args.out, result)
    print(f"{args.requests} requests in {elapsed:.0f}s: {dict(statuses)}; unexpected {unexpected}; KV blocks held at "
          f"the end {blocks_used}; RSS {rss.get('warm', 0) / 1e6:.1f} -> {rss['end'] / 1e6:.1f} MB "
          f"({100 * (growth or 0):+.2f}%); exit {exit_code}; {'PASSED' if result['passed'] else 'FAILED'} "
          f"(server log: {log_path})")
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
