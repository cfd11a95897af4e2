#!/usr/bin/env python3
"""Why the int8 KV cache rotates its heads (kernels/cpu/attention_paged.h): the rounding error of the default
model's real keys and values, per token and KV head at int8 (absolute max / 127), plain, rotated by the normalized
Walsh-Hadamard transform first (what the cache stores), by groups of 32 channels (llama.cpp's q8_0 cache layout, 4
more bytes a head at HD 64) and both. K and V come from transformers' forward over the first 512 tokens of GPL-3
(the GGUF dequantized to fp32 by transformers), every layer; the figure is the mean over layers of
||round(x) - x||_F / ||x||_F. Writes bench/results/kv_int8_rotation_error.json.

Usage: python3 bench/kv_int8_rotation.py [--tokens 512] [--text /usr/share/common-licenses/GPL-3]
"""
import argparse
import datetime
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from bench_common import ROOT, git_commit, machine_info, write_results  # noqa: E402

MODEL_DIR = os.path.join(ROOT, "models")
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = os.path.join(ROOT, "bench", "results", "kv_int8_rotation_error.json")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=MODEL_FILE)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=MODEL_FILE, torch_dtype=torch.float32)
    ids = tok(open(args.text).read(), return_tensors="pt").input_ids[:, :args.tokens]
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values

    def hadamard(n):
        h = torch.ones(1, 1)
        while h.shape[0] < n:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        return h / math.sqrt(n)

    def round_int8(x, group=None):   # absolute max / 127 over the last dim (or over groups of it)
        shape = x.shape
        if group:
            x = x.reshape(*shape[:-1], shape[-1] // group, group)
        s = x.abs().amax(-1, keepdim=True).clamp_min(1e-30) / 127
        return ((x / s).round().clamp(-127, 127) * s).reshape(shape)

    layers = cache.layers
    results = {"benchmark": "bench/kv_int8_rotation.py",
               "what": "relative Frobenius error of int8 rounding of the default model's K and V (per token and KV "
                       "head, absolute max / 127), mean over layers, first " + str(ids.shape[1]) + " tokens of " +
                       os.path.basename(args.text),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "commit": git_commit(), "machine": machine_info(), "model": os.path.join("models", MODEL_FILE),
               "tokens": int(ids.shape[1]), "layers": len(layers), "error": {}}
    for name in ("k", "v"):
        sums = {"per_head": 0.0, "per_head_rotated": 0.0, "groups_of_32": 0.0, "groups_of_32_rotated": 0.0}
        for layer in layers:
            x = layer.keys if name == "k" else layer.values
            h = hadamard(x.shape[-1])
            norm = x.norm()
            sums["per_head"] += ((round_int8(x) - x).norm() / norm).item()
            sums["per_head_rotated"] += ((round_int8(x @ h) @ h.T - x).norm() / norm).item()
            sums["groups_of_32"] += ((round_int8(x, 32) - x).norm() / norm).item()
            sums["groups_of_32_rotated"] += ((round_int8(x @ h, 32) @ h.T - x).norm() / norm).item()
        results["error"][name] = {k: v / len(layers) for k, v in sums.items()}
        print(name, "  ".join(f"{k} {100 * v:.3f}%" for k, v in results["error"][name].items()))
    write_results(OUT, results)


if __name__ == "__main__":
    main()
