#!/usr/bin/env python3
"""int8-weight-only with one scale per row (--group-size 0) against one per 32 inputs (--group-size 32, Q8_0
blocks) on the default model (issue 13 item 1): perplexity change against fp32 on GPL-3 and two more OS-shipped
texts int8-smooth does not calibrate on (the windows bench/quality_report.py uses: 2048 tokens, context 512, stride
256), then batch-1 decode tokens/s of the two alternated round by round in one run (machine load hits them alike;
the load average is kept per run). Writes bench/results/int8_group_size.json.

Usage: python3 bench/int8_group_size.py [--binary build/server/quantserve] [--rounds 5] [--no-perplexity]
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
OUT = os.path.join(ROOT, "bench", "results", "int8_group_size.json")
TEXTS = ["/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/LGPL-2.1",
         "/usr/share/common-licenses/MPL-2.0"]
GROUPS = [0, 32]


def perplexity(binary, text, precision, group, args):
    before = load_average()
    out = run([binary, "perplexity", "--model", MODEL, "--device", "cpu", "--threads", str(args.threads),
               "--precision", precision, "--group-size", str(group), "--file", text, "--max-tokens", "2048",
               "--context", "512", "--stride", "256", "--json"])
    r = json.loads(out)
    return {"perplexity": r["perplexity"], "mean_nll": r["mean_nll"], "predicted_tokens": r["predicted_tokens"],
            "load_average_before": before, "load_average_after": load_average()}


def bench_once(binary, group, args):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        before = load_average()
        run([binary, "bench", "--model", MODEL, "--device", "cpu", "--threads", str(args.threads),
             "--precisions", "int8-weight-only", "--group-size", str(group), "--batch", "1", "--prompt-tokens",
             str(args.prompt_tokens), "--new-tokens", str(args.new_tokens), "--output", out.name])
        r = json.load(open(out.name))["results"][0]
    return {"group_size": group, "decode_tokens_per_second": r["decode_tokens_per_second"],
            "prefill_tokens_per_second": r["prefill_tokens_per_second"], "weight_bytes": r["weight_bytes"],
            "load_average_before": before, "load_average_after": load_average()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--no-perplexity", action="store_true")
    ap.add_argument("--output", default=OUT)
    args = ap.parse_args()
    binary = find_binary(args.binary)
    result = {"benchmark": "int8_group_size", "date": datetime.datetime.utcnow().isoformat() + "Z",
              "commit": git_commit(), "machine": machine_info(args.threads), "model": os.path.relpath(MODEL, ROOT),
              "perplexity_windows": {"max_tokens": 2048, "context": 512, "stride": 256}}

    if not args.no_perplexity:
        texts = {}
        for text in TEXTS:
            t = {"fp32": perplexity(binary, text, "fp32", 0, args)}
            for g in GROUPS:
                e = perplexity(binary, text, "int8-weight-only", g, args)
                e["change_vs_fp32"] = e["perplexity"] / t["fp32"]["perplexity"] - 1
                t[f"int8-weight-only group {g}"] = e
                print(f"{os.path.basename(text):10s} group {g:3d}: perplexity {e['perplexity']:.5f} "
                      f"({100 * e['change_vs_fp32']:+.3f} % vs fp32 {t['fp32']['perplexity']:.5f})", flush=True)
            texts[text] = t
        result["perplexity"] = texts

    runs = []
    for rnd in range(args.rounds):
        for g in (GROUPS if rnd % 2 == 0 else GROUPS[::-1]):   # alternate who goes first
            r = bench_once(binary, g, args)
            r["round"] = rnd
            runs.append(r)
            print(f"round {rnd} group {g:3d} decode {r['decode_tokens_per_second']:7.1f} tok/s  "
                  f"load {r['load_average_before'][0]:.1f}", flush=True)
    if runs:
        def per_round(g):
            return [r["decode_tokens_per_second"] for r in runs if r["group_size"] == g]
        summary = {}
        for g in GROUPS:
            v = per_round(g)
            summary[f"group {g}"] = {"decode_tokens_per_second_median": statistics.median(v), "min": min(v),
                                     "max": max(v),
                                     "weight_bytes": next(r["weight_bytes"] for r in runs if r["group_size"] == g)}
        ratios = [a / b for a, b in zip(per_round(32), per_round(0))]   # paired: the same round, back to back
        summary["group_32_over_group_0"] = {"median": statistics.median(ratios), "min": min(ratios),
                                            "max": max(ratios), "per_round": ratios}
        result.update({"batch": 1, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
                       "rounds": args.rounds, "decode_summary": summary, "runs": runs})
    write_results(args.output, result)


if __name__ == "__main__":
    main()
