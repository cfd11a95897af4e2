#!/usr/bin/env python3
"""What the KV cache's storage costs in quality (issue 13 item 4): the default model's perplexity with the cache in
fp32 and in fp16 (the CPU backend's serving default, `serve --kv-cache-dtype`), for the weight precisions users
serve, on GPL-3 and two more OS-shipped texts (the windows bench/quality_report.py uses: 2048 tokens, context 512,
stride 256). Every run is `quantserve perplexity --compare-to fp32`, so each row has its change, top-1 agreement and
mean KL against fp32 weights with an fp32 cache on the same positions; the fp16 cache's own effect is the ratio of
the two rows of one precision. The cache's bytes per token come from the model's shape (K and V, every layer).
Writes bench/results/kv_cache_quality.json; bench/quality_report.py renders it into docs/QUANTIZATION.md.

Usage: python3 bench/kv_cache_quality.py [--binary build/server/quantserve] [--precisions fp32,fp16,...]
                                        [--texts /usr/share/common-licenses/GPL-3,...]
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
KV_DTYPES = ["fp32", "fp16"]
DTYPE_BYTES = {"fp32": 4, "fp16": 2}


def perplexity(binary, text, precision, kv, threads):
    before = load_average()
    r = json.loads(run([binary, "perplexity", "--model", MODEL, "--device", "cpu", "--threads", str(threads),
                        "--precision", precision, "--kv-cache-dtype", kv, "--compare-to", "fp32", "--file", text,
                        "--max-tokens", "2048", "--context", "512", "--stride", "256", "--json"]))
    assert r["kv_cache_dtype"] == kv, r
    c = r["compare_to"]
    return {"perplexity": r["perplexity"], "fp32_perplexity": c["perplexity"],
            "change_vs_fp32": r["perplexity"] / c["perplexity"] - 1, "top1_agreement_with_fp32": c["top1_agreement"],
            "mean_kl_from_fp32": c["mean_kl"], "max_kl_from_fp32": c["max_kl"],
            "predicted_tokens": r["predicted_tokens"], "seconds": r["seconds"], "load_average_before": before}


def kv_bytes_per_token(binary):
    """K and V of one token over every layer, by storage dtype, from the model's shape as `inspect` reads it."""
    shape = json.loads(run([binary, "inspect", "--model", MODEL, "--precisions", "fp32", "--json"]))["shape"]
    layers, kv_heads, head_dim = shape["num_layers"], shape["num_kv_heads"], shape["head_dim"]
    return {kv: 2 * layers * kv_heads * head_dim * DTYPE_BYTES[kv] for kv in KV_DTYPES}, \
        {"num_layers": layers, "num_kv_heads": kv_heads, "head_dim": head_dim}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary")
    ap.add_argument("--precisions", default="fp32,fp16,int8-weight-only,int8,int8-smooth")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--texts", default=",".join(TEXTS), help="comma-separated text files (default: the three)")
    args = ap.parse_args()
    binary = find_binary(args.binary)
    started = time.time()
    per_token, shape = kv_bytes_per_token(binary)
    results = {"benchmark": "bench/kv_cache_quality.py",
               "what": "perplexity with the KV cache stored in fp32 and in fp16, each against fp32 weights with an "
                       "fp32 cache on the same positions (2048 tokens of each text, context 512, stride 256)",
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "commit": git_commit(), "machine": machine_info(args.threads), "model": os.path.relpath(MODEL, ROOT),
               "kv_shape": shape, "kv_bytes_per_token": per_token, "load_average_start": load_average(),
               "texts": {}, "summary": []}
    precisions = args.precisions.split(",")
    texts = args.texts.split(",")
    for text in texts:
        name = os.path.basename(text)
        results["texts"][name] = {p: {kv: perplexity(binary, text, p, kv, args.threads) for kv in KV_DTYPES}
                                  for p in precisions}
        for p in precisions:
            row = results["texts"][name][p]
            print(f"{name:10s} {p:18s} " + "  ".join(f"{kv}: {row[kv]['perplexity']:.4f} "
                                                     f"({100 * row[kv]['change_vs_fp32']:+.3f}%)" for kv in KV_DTYPES),
                  flush=True)
    for p in precisions:
        rows = [results["texts"][os.path.basename(t)][p] for t in texts]
        fp16_cache_effect = [r["fp16"]["perplexity"] / r["fp32"]["perplexity"] - 1 for r in rows]
        results["summary"].append({
            "precision": p,
            "mean_change_vs_fp32": {kv: statistics.mean(r[kv]["change_vs_fp32"] for r in rows) for kv in KV_DTYPES},
            "fp16_cache_effect": {"mean": statistics.mean(fp16_cache_effect),
                                  "max_abs": max(abs(x) for x in fp16_cache_effect)},
            "mean_top1_agreement_with_fp32": {kv: statistics.mean(r[kv]["top1_agreement_with_fp32"] for r in rows)
                                              for kv in KV_DTYPES}})
    results["load_average_end"] = load_average()
    results["seconds"] = time.time() - started
    write_results(OUT, results)
    print(f"wrote {os.path.relpath(OUT, ROOT)} in {results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
