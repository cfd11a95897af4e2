#!/usr/bin/env python3
"""int4-weight-only against the int8 modes on the default model (issue 13): batch-1 decode tokens/s with the
precisions alternated round by round in one run (so machine load hits them alike; the load average is kept per
run), weight bytes, and GPL-3 perplexity of int4-weight-only against fp32 (`--perplexity`, or a saved
`quantserve perplexity --precision int4-weight-only --compare-to fp32 --json` output via --perplexity-json).
Writes bench/results/int4_weight_only.json.

Usage: python3 bench/int4_weight_only.py [--binary build/server/quantserve] [--rounds 5] [--perplexity]
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from bench_common import ROOT, find_binary, git_commit, load_average, machine_info, run, write_results  # noqa: E402

MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "bench", "results", "int4_weight_only.json")
TEXT = "/usr/share/common-licenses/GPL-3"
# (name, precision, environment, flags). The first runs' int8 modes were per row with fp16 tables (--group-size 0);
# "int8 (default)" is today's default int8: W8A8 by groups of 32 with the embedding table and LM head quantized too.
PER_ROW = ["--group-size", "0"]
VARIANTS = [("int4-weight-only", "int4-weight-only", {}, PER_ROW),
            ("int8-weight-only", "int8-weight-only", {}, PER_ROW), ("int8", "int8", {}, PER_ROW),
            ("int8 (default)", "int8", {}, [])]


def bench_once(binary, variant, args):
    name, precision, env, flags = variant
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        before = load_average()
        run([binary, "bench", "--model", MODEL, "--device", "cpu", "--threads", str(args.threads),
             "--precisions", precision, *flags, "--batch", "1", "--prompt-tokens", str(args.prompt_tokens),
             "--new-tokens", str(args.new_tokens), "--output", out.name], env=env)
        r = json.load(open(out.name))["results"][0]
    return {"variant": name, "precision": precision, "environment": env,
            "flags": flags, "decode_tokens_per_second": r["decode_tokens_per_second"],
            "prefill_tokens_per_second": r["prefill_tokens_per_second"], "weight_bytes": r["weight_bytes"],
            "peak_memory_bytes": r["peak_memory_bytes"], "load_average_before": before,
            "load_average_after": load_average()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--perplexity", action="store_true", help="also run the GPL-3 perplexity (minutes)")
    ap.add_argument("--perplexity-json", help="a saved perplexity --compare-to fp32 --json output to include")
    ap.add_argument("--output", default=OUT)
    args = ap.parse_args()
    binary = find_binary(args.binary)

    runs = []
    for rnd in range(args.rounds):
        order = VARIANTS if rnd % 2 == 0 else VARIANTS[::-1]   # alternate who goes first
        for variant in order:
            r = bench_once(binary, variant, args)
            r["round"] = rnd
            runs.append(r)
            print(f"round {rnd} {variant[0]:30s} decode {r['decode_tokens_per_second']:7.1f} tok/s  "
                  f"load {r['load_average_before'][0]:.1f}", flush=True)

    def per_round(name):
        return [r["decode_tokens_per_second"] for r in runs if r["variant"] == name]

    summary = {}
    for name, _, _, _ in VARIANTS:
        v = per_round(name)
        summary[name] = {"decode_tokens_per_second_median": statistics.median(v), "min": min(v), "max": max(v),
                         "weight_bytes": next(r["weight_bytes"] for r in runs if r["variant"] == name)}
    int4 = per_round("int4-weight-only")
    for peer in ("int8-weight-only", "int8", "int8 (default)"):
        ratios = [a / b for a, b in zip(int4, per_round(peer))]   # paired: the same round, back to back
        key = "int4_over_int8_default" if peer == "int8 (default)" else f"int4_over_{peer}"
        summary[key] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                                        "per_round": ratios}

    result = {"benchmark": "int4_weight_only", "date": datetime.datetime.utcnow().isoformat() + "Z",
              "commit": git_commit(), "machine": machine_info(args.threads), "model": os.path.relpath(MODEL, ROOT),
              "model_file_bytes": os.path.getsize(MODEL), "batch": 1, "prompt_tokens": args.prompt_tokens,
              "new_tokens": args.new_tokens, "rounds": args.rounds, "summary": summary, "runs": runs}
    if args.perplexity:
        out = run([binary, "perplexity", "--model", MODEL, "--device", "cpu", "--precision", "int4-weight-only",
                   "--compare-to", "fp32", "--file", TEXT, "--json"])
        result["perplexity"] = json.loads(out)
    elif args.perplexity_json:
        result["perplexity"] = json.load(open(args.perplexity_json))
    if "perplexity" in result:
        ppl = result["perplexity"]
        result["perplexity_delta_vs_fp32"] = ppl["perplexity"] / ppl["compare_to"]["perplexity"] - 1
    write_results(args.output, result)


if __name__ == "__main__":
    main()
