#!/usr/bin/env python3
"""int8-smooth with its smoothing carried past the norms (issue 13 item 2): o_proj's input smoothed through v_proj's
rows, down_proj's through up_proj's (engine/transformer.h smooth_through), each alone and both, at a few alphas for
the folded linears, on the default model. Perplexity change against fp32 on GPL-3 and two more OS-shipped texts
int8-smooth does not calibrate on, by the default method and windows of bench/results/int8_smooth_search.json
(first 2048 tokens, context 512, stride 256), so the rows compare with it. Perplexity is deterministic: machine
load changes only the seconds. Variants are chosen through $QUANTSERVE_SMOOTH_FOLDS / $QUANTSERVE_FOLD_ALPHA, set
explicitly for every run (so a changed default does not move the baseline row). Also plain int8 with and without
its opt-in per-row weight clip search ($QUANTSERVE_INT8_CLIP=search, issue 13 item 3). Writes
bench/results/int8_smooth_folds.json after every run (--update keeps the variants of an earlier run).

Usage: python3 bench/int8_smooth_folds.py [--binary build/server/quantserve] [--variants none,o,down,both] [--update]
"""
import argparse
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from bench_common import ROOT, find_binary, git_commit, load_average, machine_info, write_results  # noqa: E402
import subprocess  # noqa: E402

MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "bench", "results", "int8_smooth_folds.json")
TEXTS = ["/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/LGPL-2.1",
         "/usr/share/common-licenses/MPL-2.0"]
WHAT = ("int8-smooth's smoothing carried past the norms on the default model: o_proj through v_proj's rows, "
        "down_proj through up_proj's rows, alone and both, at fold alphas 0.4-0.8 (norm alpha 0.5 throughout); and "
        "plain int8 with its opt-in per-row weight clip search (QUANTSERVE_INT8_CLIP=search: clip in {1, 0.95, ..., "
        "0.8} of each row's absmax by weight MSE). 'commit' is the HEAD of the latest run; each variant was "
        "measured with the code that introduced it (uncommitted at the time)")
# name: (precision, folds, alpha of the folded linears[, $QUANTSERVE_INT8_CLIP])
VARIANTS = {
    "int8": ("int8", "none", 0.5, ""),
    "int8 clip search": ("int8", "none", 0.5, "search"),
    "fp32": ("fp32", "none", 0.5),
    "none": ("int8-smooth", "none", 0.5),
    "o": ("int8-smooth", "o", 0.5),
    "down": ("int8-smooth", "down", 0.5),
    "both": ("int8-smooth", "both", 0.5),
    "o a0.6": ("int8-smooth", "o", 0.6),
    "down a0.6": ("int8-smooth", "down", 0.6),
    "down a0.7": ("int8-smooth", "down", 0.7),
    "down a0.8": ("int8-smooth", "down", 0.8),
    "both a0.6": ("int8-smooth", "both", 0.6),
    "both a0.7": ("int8-smooth", "both", 0.7),
    "both a0.8": ("int8-smooth", "both", 0.8),
    "o a0.4": ("int8-smooth", "o", 0.4),
    "down a0.4": ("int8-smooth", "down", 0.4),
    "both a0.4": ("int8-smooth", "both", 0.4),
}


def perplexity(binary, text, variant, threads):
    precision, folds, alpha, *clip = VARIANTS[variant]
    env = dict(os.environ, QUANTSERVE_SMOOTH_FOLDS=folds, QUANTSERVE_FOLD_ALPHA=str(alpha),
               QUANTSERVE_INT8_CLIP=clip[0] if clip else "")
    env.pop("QUANTSERVE_SMOOTHING_ALPHA", None)
    cmd = [binary, "perplexity", "--model", MODEL, "--device", "cpu", "--threads", str(threads), "--precision",
           precision, "--file", text, "--max-tokens", "2048", "--context", "512", "--stride", "256", "--json"]
    before = load_average()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    r = json.loads(p.stdout)
    return {"perplexity": r["perplexity"], "predicted_tokens": r["predicted_tokens"],
            "load_average_before": before, "load_average_after": load_average()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default="fp32,none,o,down,both", help="comma-separated names of VARIANTS")
    ap.add_argument("--output", default=OUT)
    ap.add_argument("--update", action="store_true", help="keep the variants of an existing --output")
    args = ap.parse_args()
    binary = find_binary(args.binary)
    previous = json.load(open(args.output)) if args.update and os.path.exists(args.output) else {}
    result = {"benchmark": "int8_smooth_folds", "what": WHAT, "date": datetime.datetime.utcnow().isoformat() + "Z",
              "commit": git_commit(), "machine": machine_info(args.threads), "model": os.path.relpath(MODEL, ROOT),
              "perplexity_windows": {"max_tokens": 2048, "context": 512, "stride": 256},
              "calibration": "first 512 tokens of /usr/share/common-licenses/Apache-2.0 (the default)",
              "norm_alpha": 0.5, "variants": previous.get("variants", {})}
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        precision, folds, alpha, *clip = VARIANTS[name]
        entry = {"precision": precision, "folds": folds, "fold_alpha": alpha, "texts": {}}
        if clip:
            entry = {"precision": precision, "int8_clip": clip[0] or "none", "texts": {}}
        for text in TEXTS:
            entry["texts"][os.path.basename(text)] = perplexity(binary, text, name, args.threads)
        result["variants"][name] = entry
        fp32 = result["variants"].get("fp32")
        if fp32:
            for v in result["variants"].values():
                changes = []
                for t, e in v["texts"].items():
                    e["change_vs_fp32"] = e["perplexity"] / fp32["texts"][t]["perplexity"] - 1
                    changes.append(e["change_vs_fp32"])
                v["mean_change_vs_fp32"] = sum(changes) / len(changes)
            print(f"{name:12s} " + "  ".join(f"{t} {100 * e['change_vs_fp32']:+.3f}%" for t, e in entry["texts"].items())
                  + f"  mean {100 * entry['mean_change_vs_fp32']:+.3f}%", flush=True)
        write_results(args.output, result)


if __name__ == "__main__":
    main()
