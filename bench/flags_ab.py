#!/usr/bin/env python3
"""Two `quantserve bench` flag sets (or two builds: --binary-b) against each other, alternated round by round on one
machine: batch-1 prefill and decode tok/s of each, and the paired ratios B / A (this VM's speed drifts ±20% between
runs, so only a paired ratio decides a few-percent question).

    python3 bench/flags_ab.py --a "--precision int8 --quantize-embeddings=off" --b "--precision int8" \\
        [--rounds 7] [--prompt-tokens 128] [--new-tokens 128] [--threads 2] -o bench/results/NAME.json
    python3 bench/flags_ab.py --binary OLD/quantserve --binary-b build/server/quantserve \\
        --a "--precision int8-weight-only" --b "--precision int8-weight-only" -o bench/results/NAME.json
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from bench_common import find_binary, git_commit, load_average, machine_info, write_results  # noqa: E402


def one_run(binary, flags, args):
    """One `quantserve bench` process: its first result row."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    try:
        # --precisions is bench's spelling; --precision in the flag sets reads better, so it is translated.
        words = ["--precisions" if w == "--precision" else w for w in shlex.split(flags)]
        cmd = [binary, "bench", "--batch", "1", "--prompt-tokens", str(args.prompt_tokens), "--new-tokens",
               str(args.new_tokens), "--threads", str(args.threads), "-o", path] + words
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-2000:]}")
        r = json.load(open(path))["results"][0]
    finally:
        os.unlink(path)
    return {k: r[k] for k in ("prefill_tokens_per_second", "decode_tokens_per_second", "weight_bytes")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", help="the build A runs (default: build/server/quantserve)")
    ap.add_argument("--binary-b", help="the build B runs (default: A's)")
    ap.add_argument("--a", required=True, help="flag set A (the baseline)")
    ap.add_argument("--b", required=True, help="flag set B")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    binary = find_binary(args.binary)
    binaries = {"a": binary, "b": os.path.abspath(args.binary_b) if args.binary_b else binary}
    start_load = load_average()
    rounds = []
    for i in range(args.rounds):
        order = ("a", "b") if i % 2 == 0 else ("b", "a")   # who goes first alternates
        got = {side: one_run(binaries[side], getattr(args, side), args) for side in order}
        rounds.append({"round": i, "first": order[0], **got, "load_average": load_average()})
        print(f"round {i}: A decode {got['a']['decode_tokens_per_second']:.1f}, B decode "
              f"{got['b']['decode_tokens_per_second']:.1f} tok/s", flush=True)

    def median(side, key):
        return statistics.median(r[side][key] for r in rounds)

    def paired(key):
        ratios = [r["b"][key] / r["a"][key] for r in rounds]
        return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                "rounds": [round(x, 4) for x in ratios]}

    result = {
        "tool": "bench/flags_ab.py", "commit": git_commit(), "machine": machine_info(args.threads),
        "a": args.a, "b": args.b, "binaries": binaries, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
        "rounds": args.rounds, "load_average_start": start_load, "load_average_end": load_average(),
        "median": {side: {k: median(side, k) for k in ("prefill_tokens_per_second", "decode_tokens_per_second")}
                   for side in ("a", "b")},
        "weight_bytes": {side: rounds[0][side]["weight_bytes"] for side in ("a", "b")},
        "b_over_a": {"prefill": paired("prefill_tokens_per_second"), "decode": paired("decode_tokens_per_second")},
        "samples": rounds,
    }
    write_results(args.output, result)
    print(f"B / A decode {result['b_over_a']['decode']['median']:.3f} (paired median), prefill "
          f"{result['b_over_a']['prefill']['median']:.3f}; wrote {args.output}")


if __name__ == "__main__":
    main()
