#!/usr/bin/env python3
"""What the OpenAI-compatible HTTP API costs against gRPC: tokens/s of the same load through each door.

One `quantserve serve` (default model, int8, prefix cache off so that no door reuses the other's prompts); at each
concurrency the same requests (64-token prompts, 32 new tokens, greedy, ignore_eos) go through gRPC (unary
Generate, grpcio) and the HTTP API (POST /v1/completions through the official `openai` client, and streamed), in
alternating order, several repetitions; tokens/s = generated tokens / wall time of the round. Medians and the
paired HTTP/gRPC ratios go to bench/results/http_vs_grpc.json.

    python3 bench/http_vs_grpc.py [--binary build/server/quantserve] [--reps 5] [--concurrency 1,16]
"""
import argparse
import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import time

import grpc
import openai

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
from bench_common import ROOT, find_binary, git_commit, load_average, machine_info, write_results  # noqa: E402
from quantserve_grpc import DEFAULT_MODEL, free_port, load_stubs  # noqa: E402

WORDS = ("river stone cloud lantern maple orbit velvet harbor signal meadow copper winter garden "
         "thunder pebble silver candle forest engine marble").split()


def prompt_for(i):
    """A 64-token-ish prompt of its own per request index (same for both doors)."""
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(60))


class Server:
    def __init__(self, binary, threads):
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        cmd = [binary, "serve", "--model", f"smollm2={DEFAULT_MODEL}", "--precision", "int8", "--device", "cpu",
               "--threads", str(threads), "--prefix-cache", "off", "--max-batch-size", "32", "--max-queued", "128",
               "--listen", f"127.0.0.1:{self.grpc_port}", "--http-listen", f"127.0.0.1:{self.http_port}",
               "--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
        # The log to a file: a pipe nobody reads fills after ~64 KB of request lines and then blocks the server.
        self.log = tempfile.NamedTemporaryFile(prefix="quantserve-http-vs-grpc-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log)
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.http_port}/v1", api_key="unused",
                                    max_retries=0, timeout=600)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"quantserve exited: {open(self.log.name).read()[-2000:]}")
            try:
                self.client.models.list()
                break
            except openai.APIError:
                time.sleep(0.5)
        pb2, pb2_grpc = load_stubs()
        self.pb2 = pb2
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self.stub = pb2_grpc.InferenceStub(self.channel)

    def grpc_one(self, i, new_tokens):
        r = self.stub.Generate(self.pb2.GenerateRequest(prompt=prompt_for(i), max_new_tokens=new_tokens,
                                                        temperature=0, ignore_eos=True), timeout=600)
        return r.usage.generated_tokens

    def http_one(self, i, new_tokens):
        r = self.client.completions.create(model="smollm2", prompt=prompt_for(i), max_tokens=new_tokens,
                                           temperature=0, extra_body={"ignore_eos": True})
        return r.usage.completion_tokens

    def http_stream_one(self, i, new_tokens):
        usage = None
        for chunk in self.client.completions.create(model="smollm2", prompt=prompt_for(i), max_tokens=new_tokens,
                                                    temperature=0, stream=True, stream_options={"include_usage": True},
                                                    extra_body={"ignore_eos": True}):
            if chunk.usage:
                usage = chunk.usage.completion_tokens
        return usage

    def stop(self):
        self.channel.close()
        self.proc.terminate()
        self.proc.wait(60)


def one_round(server, door, concurrency, requests, new_tokens, first_index):
    call = {"grpc": server.grpc_one, "http": server.http_one, "http_stream": server.http_stream_one}[door]
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(lambda i: call(first_index + i, new_tokens), range(requests)))
    return tokens / (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "http_vs_grpc.json"))
    args = parser.parse_args()
    binary = find_binary(args.binary)
    server = Server(binary, args.threads)
    doors = ["grpc", "http", "http_stream"]
    results = {"benchmark": "http_vs_grpc", "commit": git_commit(), "machine": machine_info(args.threads),
               "model": os.path.basename(DEFAULT_MODEL), "precision": "int8", "prompt_words": 60,
               "new_tokens": args.new_tokens, "reps": args.reps, "load_average_before": load_average(),
               "method": "same requests through each door, doors alternating within every repetition (order rotated "
                         "each time), tokens/s = generated tokens / round wall time; ratio = http / grpc of the "
                         "same repetition", "concurrency": {}}
    try:
        server.grpc_one(0, 4)   # warm-up: first-call costs on neither door's account
        server.http_one(0, 4)
        index = 1000
        for c in [int(x) for x in args.concurrency.split(",")]:
            requests = max(8, 2 * c)
            runs = {d: [] for d in doors}
            for rep in range(args.reps):
                order = doors[rep % len(doors):] + doors[:rep % len(doors)]
                for door in order:
                    runs[door].append(one_round(server, door, c, requests, args.new_tokens, index))
                index += requests   # every repetition its own prompts, the same for every door
                print(f"c={c} rep {rep + 1}: " + ", ".join(f"{d} {runs[d][-1]:.1f}" for d in doors), flush=True)
            entry = {"requests_per_round": requests}
            for d in doors:
                entry[f"{d}_tokens_per_second"] = runs[d]
                entry[f"{d}_median"] = statistics.median(runs[d])
            for d in ("http", "http_stream"):
                ratios = [h / g for h, g in zip(runs[d], runs["grpc"])]
                entry[f"{d}_over_grpc_ratios"] = ratios
                entry[f"{d}_over_grpc_median"] = statistics.median(ratios)
            results["concurrency"][str(c)] = entry
            print(f"c={c}: grpc {entry['grpc_median']:.1f} tok/s, http {entry['http_median']:.1f} "
                  f"({entry['http_over_grpc_median']:.3f}x), http stream {entry['http_stream_median']:.1f} "
                  f"({entry['http_stream_over_grpc_median']:.3f}x)", flush=True)
    finally:
        server.stop()
    results["load_average_after"] = load_average()
    write_results(args.out, results)


if __name__ == "__main__":
    main()
