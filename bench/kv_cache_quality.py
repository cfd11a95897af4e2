#!/usr/bin/env python3
"""What the KV cache's storage costs in quality (issue 13 item 4, the GPU decode issue's item 1): the default model's
perplexity with the cache in fp32, fp16 (the CPU backend's serving default), bf16 and int8 (one fp32 scale per token
and KV head), `serve --kv-cache-dtype`, for the weight precisions users serve, on GPL-3 and two more OS-shipped texts
(the windows bench/quality_report.py uses: 2048 tokens, context 512, stride 256). Every run is `quantserve perplexity
--compare-to fp32`, so each row has its change, top-1 agreement and mean KL against fp32 weights with an fp32 cache on
the same positions, and its paired per-token standard error; each narrower cache's own effect is one more run,
`--kv-cache-dtype <d> --compare-to <the same precision>` (whose reference keeps an fp32 cache), so it too is paired
and has its error, top-1 agreement and KL. The cache's bytes per token come from the model's shape (K and V, every
layer, int8's scales included).
Writes bench/results/kv_cache_quality.json; bench/quality_report.py renders it into docs/QUANTIZATION.md.

Usage: python3 bench/kv_cache_quality.py [--binary build/server/quantserve] [--precisions fp32,int8-weight-only,...]
                                        [--kv-dtypes fp32,fp16,bf16,int8] [--texts /usr/share/common-licenses/GPL-3,...]
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from bench_common import ROOT, find_binary, git_commit, load_average, machine_info, run, write_results  # noqa: E402

MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "bench", "results", "kv_cache_quality.json")
TEXTS = ["/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/LGPL-2.1",
         "/usr/share/common-licenses/MPL-2.0"]
KV_DTYPES = ["fp32", "fp16", "bf16", "int8"]
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
INT8_SCALE_BYTES = 4   # kernels/backend.h kv_head_bytes: one fp32 scale per token and KV head, for K and for V


def perplexity(binary, text, precision, kv, threads, reference="fp32"):
    """`precision` with its KV cache in `kv`, against `reference` (its cache always fp32) on the same positions."""
    before = load_average()
    r = json.loads(run([binary, "perplexity", "--model", MODEL, "--device", "cpu", "--threads", str(threads),
                        "--precision", precision, "--group-size", "0", "--kv-cache-dtype", kv,
                        "--compare-to", reference, "--file", text, "--max-tokens",
                        "2048", "--context", "512", "--stride", "256", "--json"]))
    assert r["kv_cache_dtype"] == kv, r
    c = r["compare_to"]
    # The paired per-token standard error of the change: how far another 2,047 tokens could move it.
    return {"perplexity": r["perplexity"], "reference_perplexity": c["perplexity"],
            "change": r["perplexity"] / c["perplexity"] - 1,
            "change_stderr": c["delta_perplexity_percent_stderr"] / 100, "top1_agreement": c["top1_agreement"],
            "mean_kl": c["mean_kl"], "max_kl": c["max_kl"],
            "predicted_tokens": r["predicted_tokens"], "seconds": r["seconds"], "load_average_before": before}


def kv_bytes_per_token(binary, dtypes):
    """K and V of one token over every layer, by storage dtype, from the model's shape as `inspect` reads it."""
    shape = json.loads(run([binary, "inspect", "--model", MODEL, "--precisions", "fp32", "--json"]))["shape"]
    layers, kv_heads, head_dim = shape["num_layers"], shape["num_kv_heads"], shape["head_dim"]
    head = {kv: head_dim * DTYPE_BYTES[kv] + (INT8_SCALE_BYTES if kv == "int8" else 0) for kv in dtypes}
    return {kv: 2 * layers * kv_heads * head[kv] for kv in dtypes}, \
        {"num_layers": layers, "num_kv_heads": kv_heads, "head_dim": head_dim}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary")
    ap.add_argument("--precisions", default="fp32,fp16,int8-weight-only,int8")
    ap.add_argument("--kv-dtypes", default=",".join(KV_DTYPES), help="comma-separated cache dtypes, fp32 first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--texts", default=",".join(TEXTS), help="comma-separated text files (default: the three)")
    args = ap.parse_args()
    binary = find_binary(args.binary)
    dtypes = args.kv_dtypes.split(",")
    if dtypes[0] != "fp32" or any(d not in DTYPE_BYTES for d in dtypes):
        ap.error(f"--kv-dtypes must start with fp32 and name only {', '.join(DTYPE_BYTES)}")
    narrow = dtypes[1:]
    started = time.time()
    per_token, shape = kv_bytes_per_token(binary, dtypes)
    results = {"benchmark": "bench/kv_cache_quality.py",
               "what": "perplexity with the KV cache stored in " + ", ".join(dtypes) + ", each against fp32 "
                       "weights with an fp32 cache on the same positions (2048 tokens of each text, context 512, "
                       "stride 256), and each narrower cache against the same precision with an fp32 cache; every "
                       "change with its paired per-token standard error",
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "commit": git_commit(), "machine": machine_info(args.threads), "model": os.path.relpath(MODEL, ROOT),
               "kv_dtypes": dtypes, "kv_shape": shape, "kv_bytes_per_token": per_token,
               "load_average_start": load_average(), "texts": {}, "summary": []}
    precisions = args.precisions.split(",")
    texts = args.texts.split(",")
    for text in texts:
        name = os.path.basename(text)
        # Per precision: each cache against fp32 weights with an fp32 cache, and each narrower cache against the
        # same precision with an fp32 cache (the cache's own effect, paired per token; for fp32 weights the two
        # are the same run).
        results["texts"][name] = {}
        for p in precisions:
            row = {kv: perplexity(binary, text, p, kv, args.threads) for kv in dtypes}
            row["vs_own_fp32_cache"] = {kv: row[kv] if p == "fp32" else
                                        perplexity(binary, text, p, kv, args.threads, reference=p) for kv in narrow}
            results["texts"][name][p] = row
            print(f"{name:10s} {p:18s} " + "  ".join(f"{kv}: {row[kv]['perplexity']:.4f} "
                                                     f"({100 * row[kv]['change']:+.3f}% ± "
                                                     f"{100 * row[kv]['change_stderr']:.3f})" for kv in dtypes),
                  flush=True)
            for kv, own in row["vs_own_fp32_cache"].items():
                print(f"{'':29s} {kv} vs own fp32 cache {100 * own['change']:+.4f}% ± "
                      f"{100 * own['change_stderr']:.4f}, top-1 {100 * own['top1_agreement']:.2f}%, "
                      f"KL {own['mean_kl']:.6f}", flush=True)
    for p in precisions:
        rows = [results["texts"][os.path.basename(t)][p] for t in texts]
        effect = {}
        for kv in narrow:
            own = [r["vs_own_fp32_cache"][kv] for r in rows]
            effect[kv] = {"mean": statistics.mean(o["change"] for o in own),
                          "max_abs": max(abs(o["change"]) for o in own),
                          "mean_stderr": statistics.mean(o["change_stderr"] for o in own),
                          "mean_top1_agreement": statistics.mean(o["top1_agreement"] for o in own),
                          "mean_kl": statistics.mean(o["mean_kl"] for o in own)}
        results["summary"].append({
            "precision": p,
            "mean_change_vs_fp32": {kv: statistics.mean(r[kv]["change"] for r in rows) for kv in dtypes},
            "mean_change_stderr": {kv: statistics.mean(r[kv]["change_stderr"] for r in rows) for kv in dtypes},
            "cache_effect": effect,
            "mean_top1_agreement_with_fp32": {kv: statistics.mean(r[kv]["top1_agreement"] for r in rows)
                                              for kv in dtypes}})
    results["load_average_end"] = load_average()
    results["seconds"] = time.time() - started
    write_results(OUT, results)
    print(f"wrote {os.path.relpath(OUT, ROOT)} in {results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
