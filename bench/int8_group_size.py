#!/usr/bin/env python3
"""int8-weight-only (or --precision int8 / int8-smooth: W8A8, whose activations then take groups too) with one scale
per row (--group-size 0) against one per 32 inputs (--group-size 32, Q8_0 blocks) on the default model (issue 13
items 1 and 2): perplexity change against fp32 on GPL-3 and two more OS-shipped
texts int8-smooth does not calibrate on (the windows bench/quality_report.py uses: 2048 tokens, context 512, stride
256), then batch-1 decode tokens/s of the two alternated round by round in one run (machine load hits them alike;
the load average is kept per run), and the decode weight stream alone through qs_gemv_bench (each op's best of 30
steps, the estimator that survives a shared machine), group sizes alternated. Writes
bench/results/int8_group_size.json (--output for another precision's).

Usage: python3 bench/int8_group_size.py [--binary build/server/quantserve] [--precision int8-weight-only]
                                        [--rounds 5] [--batch 1] [--no-perplexity] [--output OUT.json]
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


def perplexity(binary, text, group, args):
    """args.precision at `group` against fp32 on the same positions: perplexities, top-1 agreement, KL."""
    before = load_average()
    out = run([binary, "perplexity", "--model", MODEL, "--device", "cpu", "--threads", str(args.threads),
               "--precision", args.precision, "--group-size", str(group), "--compare-to", "fp32", "--file", text,
               "--max-tokens", "2048", "--context", "512", "--stride", "256", "--json"])
    r = json.loads(out)
    c = r["compare_to"]
    return {"perplexity": r["perplexity"], "fp32_perplexity": c["perplexity"],
            "change_vs_fp32": r["perplexity"] / c["perplexity"] - 1, "top1_agreement_with_fp32": c["top1_agreement"],
            "mean_kl_from_fp32": c["mean_kl"], "max_kl_from_fp32": c["max_kl"], "weight_bytes": r.get("weight_bytes"),
            "predicted_tokens": r["predicted_tokens"], "load_average_before": before,
            "load_average_after": load_average()}


def bench_once(binary, group, args):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        before = load_average()
        run([binary, "bench", "--model", MODEL, "--device", "cpu", "--threads", str(args.threads),
             "--precisions", args.precision, "--group-size", str(group), "--batch", str(args.batch), "--prompt-tokens",
             str(args.prompt_tokens), "--new-tokens", str(args.new_tokens), "--output", out.name])
        r = json.load(open(out.name))["results"][0]
    return {"group_size": group, "decode_tokens_per_second": r["decode_tokens_per_second"],
            "prefill_tokens_per_second": r["prefill_tokens_per_second"], "weight_bytes": r["weight_bytes"],
            "load_average_before": before, "load_average_after": load_average()}


def gemv_once(gemv_binary, group, precision):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        run([gemv_binary, "--precision", precision, "--group-size", str(group), "--steps", "30",
             "--json", out.name])
        r = json.load(open(out.name))
    step = sum(op["best_seconds"] for op in r["ops"])
    return {"group_size": group, "best_step_seconds": step, "bytes_per_step": r["bytes_per_step"],
            "median_step_seconds": r["median_step_seconds"], "load_average_start": r["load_average_start"],
            "load_average_end": r["load_average_end"],
            "ops": {op["op"]: op["best_seconds"] for op in r["ops"]}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary")
    ap.add_argument("--precision", default="int8-weight-only", choices=["int8-weight-only", "int8", "int8-smooth"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1, help="sequences decoded together")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--no-perplexity", action="store_true")
    ap.add_argument("--gemv-rounds", type=int, default=3, help="qs_gemv_bench rounds per group size (0: none)")
    ap.add_argument("--gemv-binary", default=os.path.join(ROOT, "build", "bench", "qs_gemv_bench"))
    ap.add_argument("--output", default=OUT)
    ap.add_argument("--update", action="store_true",
                    help="keep the parts of an existing --output this run does not measure")
    args = ap.parse_args()
    binary = find_binary(args.binary)
    previous = json.load(open(args.output)) if args.update and os.path.exists(args.output) else {}
    result = {"benchmark": "int8_group_size", "precision": args.precision,
              "date": datetime.datetime.utcnow().isoformat() + "Z",
              "commit": git_commit(), "machine": machine_info(args.threads), "model": os.path.relpath(MODEL, ROOT),
              "perplexity_windows": {"max_tokens": 2048, "context": 512, "stride": 256}}

    if not args.no_perplexity:
        texts = {}
        for text in TEXTS:
            t = {}
            for g in GROUPS:
                e = perplexity(binary, text, g, args)
                t[f"{args.precision} group {g}"] = e
                print(f"{os.path.basename(text):10s} group {g:3d}: perplexity {e['perplexity']:.5f} "
                      f"({100 * e['change_vs_fp32']:+.3f} % vs fp32 {e['fp32_perplexity']:.5f}), top-1 "
                      f"{e['top1_agreement_with_fp32']:.4f}, mean KL {e['mean_kl_from_fp32']:.3e}", flush=True)
            texts[text] = t
        result["perplexity"] = texts

    runs = []
    for rnd in range(args.rounds):
        for g in (GROUPS if rnd % 2 == 0 else GROUPS[::-1]):   # alternate who goes first
            r = bench_once(binary, g, args)
            r["round"] = rnd
            runs.append(r)
            print(f"round {rnd} group {g:3d} decode {r['decode_tokens_per_second']:7.1f} tok/s  "
                  f"prefill {r['prefill_tokens_per_second']:7.1f} tok/s  "
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
        prefill = {g: [r["prefill_tokens_per_second"] for r in runs if r["group_size"] == g] for g in GROUPS}
        prefill_ratios = [a / b for a, b in zip(prefill[32], prefill[0])]
        summary["prefill"] = {**{f"group {g} median tokens_per_second": statistics.median(v)
                                 for g, v in prefill.items()},
                              "group_32_over_group_0": {"median": statistics.median(prefill_ratios),
                                                        "min": min(prefill_ratios), "max": max(prefill_ratios)}}
        result.update({"batch": args.batch, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
                       "rounds": args.rounds, "decode_summary": summary, "runs": runs})
    gemv = []
    for rnd in range(args.gemv_rounds):
        for g in (GROUPS if rnd % 2 == 0 else GROUPS[::-1]):
            r = gemv_once(args.gemv_binary, g, args.precision)
            r["round"] = rnd
            gemv.append(r)
            print(f"gemv round {rnd} group {g:3d}: best step {1e3 * r['best_step_seconds']:.3f} ms, "
                  f"{r['bytes_per_step'] / 1e6:.1f} MB, load {r['load_average_start']:.1f}", flush=True)
    if gemv:
        def steps(g):
            return [r["best_step_seconds"] for r in gemv if r["group_size"] == g]
        ratios = [a / b for a, b in zip(steps(32), steps(0))]
        result["gemv_bench_commit"] = result["commit"]
        result["gemv_bench"] = {"tokens": 1, "runs": gemv, "group_32_time_over_group_0": {
            "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "per_round": ratios}}
    kept = [key for key in previous if key not in result]
    for key in kept:
        result[key] = previous[key]
    if kept:   # the parts measured before, with the commit and date they were measured at
        result["kept_from_previous_run"] = {"keys": kept, "commit": previous.get("commit"),
                                            "date": previous.get("date")}
    write_results(args.output, result)


if __name__ == "__main__":
    main()
