#!/usr/bin/env python3
"""Serving against llama.cpp's own server, same weights, same machine, same run: tokens/s at concurrency 1 and 16,
the batching gain c16/c1, and quantserve / llama-server per concurrency (issue 12's targets: c16/c1 >= 4x and
>= 1.5x llama-server at c=16).

quantserve serves the default GGUF in its default int8 (`serve --precision int8`: W8A8 by groups of 32, the tables
quantized too); llama-server (built by `scripts/setup.sh --tools` from the llama.cpp source that llama-cpp-python
0.3.36 ships, GGML_NATIVE) serves the same file requantized by llama.cpp's own quantize to Q8_0, with 16 parallel
slots of continuous batching. Both get 2 threads, no prefix / prompt cache (every request carries the same prompt,
which a cache would turn into a prefill-free test), and the same load generator through the same door:
`quantserve-client bench --api http`, POST /v1/completions streamed (server-sent events), 64-token prompts (as each
server counts them), 32 new tokens, greedy, ignore_eos. quantserve's gRPC door is measured beside it.

Each repetition runs every (engine, door) at c=1 and c=16, in an order rotated each repetition, so the load of
this shared VM drifts into both sides of each paired ratio. Medians and the per-repetition ratios go to
bench/results/serving_peers.json.

    python3 bench/serving_peers.py [--reps 5] [--llama-server build-peers/llama.cpp/bin/llama-server]
"""
import argparse
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import (ROOT, find_binary, git_commit, llama_cpp_quantize, load_average,  # noqa: E402
                          machine_info, write_results)
import http_vs_grpc  # noqa: E402  (its Server, free_port and one_round: the same server flags and load generator)

CONCURRENCIES = (1, 16)


class LlamaServer(http_vs_grpc.HealthyProcess):
    """llama-server on one GGUF: `slots` parallel sequences of `slot_tokens` each (continuous batching is its
    default), 2 threads for decode and for batches, no prompt cache, no web UI."""

    def __init__(self, binary, gguf, threads, slots, slot_tokens):
        self.port = http_vs_grpc.free_port()
        cmd = [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(self.port), "-t", str(threads),
               "-tb", str(threads), "-np", str(slots), "-c", str(slots * slot_tokens), "-b", "2048", "-ub", "512",
               "--no-cache-prompt", "--cache-ram", "0", "--no-webui", "--metrics"]
        super().__init__("llama-server", cmd, f"http://127.0.0.1:{self.port}/health", merge_stdout=True)
        self.address = {"http": f"127.0.0.1:{self.port}"}


def version_of(binary):
    p = subprocess.run([binary, "--version"], capture_output=True, text=True)
    return (p.stdout + p.stderr).strip().splitlines()[:2]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary")
    parser.add_argument("--client", default=os.path.join(ROOT, "build", "client", "quantserve-client"))
    parser.add_argument("--llama-server", default=os.path.join(ROOT, "build-peers", "llama.cpp", "bin", "llama-server"))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "serving_peers.json"))
    args = parser.parse_args()
    for path, how in ((args.client, "cmake --build build --target quantserve-client"),
                      (args.llama_server, "bash scripts/setup.sh --tools")):
        if not os.access(path, os.X_OK):
            sys.exit(f"{path} not built ({how})")
    binary = find_binary(args.binary)
    q8 = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.llamacpp-Q8_0.gguf")
    llama_cpp_quantize(http_vs_grpc.DEFAULT_MODEL, q8, "Q8_0", args.threads)

    # (engine, door) pairs; quantserve's HTTP door is the like-for-like one, its gRPC door its own best.
    runs = [("quantserve", "http"), ("llama-server", "http"), ("quantserve", "grpc")]
    results = {"benchmark": "serving_peers", "commit": git_commit(), "machine": machine_info(args.threads),
               "model": os.path.basename(http_vs_grpc.DEFAULT_MODEL), "prompt_tokens_requested": args.prompt_tokens,
               "new_tokens": args.new_tokens, "reps": args.reps, "streamed": True, "greedy": True,
               "load_average_start": load_average(),
               "engines": {"quantserve": "serve --precision int8 --prefix-cache off --max-batch-size 32 (defaults: "
                                         "groups of 32, tables quantized), --threads %d" % args.threads,
                           "llama-server": {"file": os.path.basename(q8), "version": version_of(args.llama_server)}},
               "runs": {}}
    servers = {}
    try:
        servers["quantserve"] = http_vs_grpc.Server(binary, args.threads)
        slot_tokens = 2 * (args.prompt_tokens + args.new_tokens) + 64   # room for the prompt as llama.cpp counts it
        servers["llama-server"] = LlamaServer(args.llama_server, q8, args.threads, 16, slot_tokens)
        results["engines"]["llama-server"]["command"] = " ".join(servers["llama-server"].command[1:])
        for engine, door in runs:   # warm-up: first-touch of weights and KV, the prompt calibration's probe
            http_vs_grpc.one_round(args.client, servers[engine], door, "stream", 2, 2, args.prompt_tokens, 4)
        tps = {f"{e} {d}": {c: [] for c in CONCURRENCIES} for e, d in runs}
        prompt_tokens = {}
        loads = []
        for rep in range(args.reps):
            order = runs[rep % len(runs):] + runs[:rep % len(runs)]
            for engine, door in order:
                for c in CONCURRENCIES:
                    loads.append(load_average()[0])
                    s = http_vs_grpc.one_round(args.client, servers[engine], door, "stream", c, max(2, c),
                                               args.prompt_tokens, args.new_tokens)
                    tps[f"{engine} {door}"][c].append(s["tokens_per_second"])
                    prompt_tokens[f"{engine} {door}"] = s["prompt_tokens"]
            print(f"rep {rep + 1}: " + "; ".join(f"{k} c1 {v[1][-1]:.1f} c16 {v[16][-1]:.1f}" for k, v in tps.items())
                  + f" tok/s (load {loads[-1]:.2f})", flush=True)
        base = tps["llama-server http"]
        for key, v in tps.items():
            gains = [b / a for a, b in zip(v[1], v[16])]
            entry = {"prompt_tokens": prompt_tokens[key], "c16_over_c1_per_rep": gains,
                     "c16_over_c1_median": statistics.median(gains)}
            for c in CONCURRENCIES:
                entry[f"c{c}_tokens_per_second"] = v[c]
                entry[f"c{c}_median"] = statistics.median(v[c])
                if key != "llama-server http":
                    r = [x / y for x, y in zip(v[c], base[c])]
                    entry[f"c{c}_over_llama_server_per_rep"] = r
                    entry[f"c{c}_over_llama_server_median"] = statistics.median(r)
            results["runs"][key] = entry
            print(f"{key}: c1 {entry['c1_median']:.1f}, c16 {entry['c16_median']:.1f} tok/s, c16/c1 "
                  f"{entry['c16_over_c1_median']:.2f}" + (
                      f", over llama-server c1 {entry['c1_over_llama_server_median']:.2f}x c16 "
                      f"{entry['c16_over_llama_server_median']:.2f}x" if key != "llama-server http" else ""))
        results["load_average_1m_per_round"] = loads
    finally:
        for s in servers.values():
            s.stop()
    results["load_average_end"] = load_average()
    write_results(args.out, results)


if __name__ == "__main__":
    main()
