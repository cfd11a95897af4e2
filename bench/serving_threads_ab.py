#!/usr/bin/env python3
"""Serving throughput by OpenMP thread setting: int8 tokens/s at c=1 and c=16 and the batching gain c16/c1 (issue 12's
target: >= 4x), for each of several thread variants of `quantserve serve`, alternating variants in the same run so
that the machine's load drifts cancel in the paired ratios.

Variants (one server each, started once, kept for all rounds; the same binary unless --binary-b is given):
  spin10k  : the default (quantserve re-execs itself with GOMP_SPINCOUNT=10000), 2 engine threads
  passive  : OMP_WAIT_POLICY=passive (workers sleep at once at every barrier), 2 engine threads
  one      : 1 engine thread (no barriers at all)
  b        : --binary-b with the default settings, 2 threads (an old-vs-new build A/B)
  per-row  : the default with int8 per row and token (QUANTSERVE_GROUP_SIZE=0) instead of by groups of 32
  fp16-tables: the default with the embedding table and LM head in fp16 (QUANTSERVE_QUANTIZE_EMBEDDINGS=off)
Each repetition runs every variant's c=1 and c=16 rounds, in an order rotated each repetition; one round is one
`quantserve-client bench` run (64-token prompts, 32 new, greedy, prefix cache off). Medians, each repetition's
ratios against spin10k, and the 1-minute load average before every round go to bench/results/serving_threads_ab.json.

    python3 bench/serving_threads_ab.py [--reps 5] [--variants spin10k,passive,one] [--binary-b OLD/quantserve]
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import ROOT, find_binary, git_commit, load_average, machine_info, write_results  # noqa: E402
import http_vs_grpc  # noqa: E402  (its Server and one_round: the same server flags and load generator)

VARIANTS = {"spin10k": ({}, 2), "passive": ({"OMP_WAIT_POLICY": "passive"}, 2), "one": ({}, 1), "b": ({}, 2),
            "per-row": ({"QUANTSERVE_GROUP_SIZE": "0"}, 2),
            "fp16-tables": ({"QUANTSERVE_QUANTIZE_EMBEDDINGS": "off"}, 2)}


def start(binary, env, threads):
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return http_vs_grpc.Server(binary, threads)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary")
    parser.add_argument("--binary-b", help="a second build, run as variant 'b' (default settings, 2 threads)")
    parser.add_argument("--client", default=os.path.join(ROOT, "build", "client", "quantserve-client"))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--variants", default="spin10k,passive,one")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "serving_threads_ab.json"))
    args = parser.parse_args()
    names = args.variants.split(",") + (["b"] if args.binary_b and "b" not in args.variants.split(",") else [])
    for n in names:
        if n not in VARIANTS or (n == "b" and not args.binary_b):
            sys.exit(f"unknown variant {n!r} (known: {', '.join(VARIANTS)}; 'b' needs --binary-b)")
    if not os.access(args.client, os.X_OK):
        sys.exit(f"{args.client} not built (cmake --build build --target quantserve-client)")
    binary = find_binary(args.binary)
    servers = {}
    results = {"benchmark": "serving_threads_ab", "commit": git_commit(), "machine": machine_info(2),
               "model": os.path.basename(http_vs_grpc.DEFAULT_MODEL), "precision": "int8", "prefix_cache": "off",
               "api": "grpc streamed", "prompt_tokens_requested": args.prompt_tokens, "new_tokens": args.new_tokens,
               "reps": args.reps, "load_average_start": load_average(), "variants": {}}
    try:
        for n in names:
            env, threads = VARIANTS[n]
            servers[n] = start(args.binary_b if n == "b" else binary, env, threads)
            http_vs_grpc.one_round(args.client, servers[n], "grpc", "stream", 2, 2, args.prompt_tokens, 4)  # warm-up
        tps = {n: {1: [], 16: []} for n in names}
        loads = []
        for rep in range(args.reps):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for n in order:
                for c in (1, 16):
                    loads.append(load_average()[0])
                    requests = max(2, c)
                    s = http_vs_grpc.one_round(args.client, servers[n], "grpc", "stream", c, requests,
                                               args.prompt_tokens, args.new_tokens)
                    tps[n][c].append(s["tokens_per_second"])
            print(f"rep {rep + 1}: " + "; ".join(f"{n} c1 {tps[n][1][-1]:.1f} c16 {tps[n][16][-1]:.1f}"
                                                 for n in names) + f" tok/s (load {loads[-1]:.2f})", flush=True)
        for n in names:
            gains = [b / a for a, b in zip(tps[n][1], tps[n][16])]
            entry = {"env": VARIANTS[n][0], "threads": VARIANTS[n][1], "c1_tokens_per_second": tps[n][1],
                     "c16_tokens_per_second": tps[n][16], "c1_median": statistics.median(tps[n][1]),
                     "c16_median": statistics.median(tps[n][16]), "c16_over_c1_per_rep": gains,
                     "c16_over_c1_median": statistics.median(gains)}
            if n != names[0]:
                for c in (1, 16):
                    r = [x / y for x, y in zip(tps[n][c], tps[names[0]][c])]
                    entry[f"c{c}_over_{names[0]}_per_rep"] = r
                    entry[f"c{c}_over_{names[0]}_median"] = statistics.median(r)
            results["variants"][n] = entry
            print(f"{n}: c1 {entry['c1_median']:.1f}, c16 {entry['c16_median']:.1f} tok/s, "
                  f"c16/c1 {entry['c16_over_c1_median']:.2f} (per rep {', '.join(f'{g:.2f}' for g in gains)})")
        results["load_average_1m_per_round"] = loads
    finally:
        for s in servers.values():
            s.stop()
    results["load_average_end"] = load_average()
    write_results(args.out, results)


if __name__ == "__main__":
    main()
