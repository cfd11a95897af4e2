#!/usr/bin/env python3
"""quantserve's logits against transformers' fp32 logits on the same random-initialised weights, per precision:
top-1 agreement and the largest absolute logit error (issue 10: GPT-2-small and Pythia-410m shapes, on the GPU).

For each model shape (bench/gpu_bench.py's MODELS: random weights, seeded, saved as fp16 safetensors with a fixture
tokenizer), one sequence of --tokens random ids is run through transformers in fp32 (the fp16-saved weights
upcast: the very values quantserve loads) and through `quantserve perplexity --ids-file --save-logits` in each
precision, one window over the whole sequence, so both give the logits that predict positions 1 .. tokens-1. Per
precision: the share of positions whose argmax agrees, the largest |logit difference|, and the mean of that per
position. Runs where there is no GPU too (--device cpu), for the CPU backend and for checking this script.

    python3 bench/logits_vs_transformers.py --quantserve build/server/quantserve --device cuda \\
        [--models gpt2-small,pythia-410m] [--precisions fp32,fp16,bf16,int8,int8-weight-only] [--out FILE]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_bench  # noqa: E402  (MODELS, make_model: the benchmark's own model shapes and saving)


def quantserve_logits(binary, model_dir, device, precision, ids_path, tokens, vocab, workdir):
    """The logits quantserve scored positions 1 .. tokens-1 from, [tokens - 1, vocab] float32."""
    import numpy as np
    out = os.path.join(workdir, f"logits-{precision}.bin")
    cmd = [binary, "perplexity", "--device", device, "--precision", precision, "-m", model_dir, "--ids-file",
           ids_path, "--context", str(tokens), "--stride", str(tokens), "--save-logits", out, "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        return None, f"{' '.join(cmd)} exited {p.returncode}: {p.stderr[-1500:]}"
    logits = np.fromfile(out, dtype=np.float32)
    os.unlink(out)
    if logits.size != (tokens - 1) * vocab:
        return None, f"{logits.size} logits, expected {(tokens - 1) * vocab}"
    return logits.reshape(tokens - 1, vocab), None


def compare(ours, reference):
    import numpy as np
    diff = np.abs(ours.astype(np.float64) - reference.astype(np.float64))
    return {"positions": int(reference.shape[0]),
            "top1_agreement": float(np.mean(ours.argmax(axis=1) == reference.argmax(axis=1))),
            "max_abs_logit_error": float(diff.max()),
            "mean_over_positions_of_max_abs_error": float(diff.max(axis=1).mean()),
            "reference_logit_abs_max": float(np.abs(reference).max())}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quantserve", required=True)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--models", default="gpt2-small,pythia-410m")
    ap.add_argument("--precisions", default="fp32,fp16,bf16,int8,int8-weight-only")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    import numpy as np
    import torch
    import transformers
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("logits_vs_transformers: no CUDA device visible to torch")
    doc = {"tool": "bench/logits_vs_transformers.py", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "commit": gpu_bench.git_commit(), "device": args.device, "tokens": args.tokens, "models": {}}
    if args.device == "cuda":
        doc["gpu"] = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory(prefix="qs_logits_") as workdir:
        for name in args.models.split(","):
            model_dir = os.path.join(workdir, name)
            os.makedirs(model_dir)
            meta = gpu_bench.make_model(name, model_dir, torch, transformers, device=args.device)
            vocab = gpu_bench.MODELS[name]["config"]["vocab_size"]
            ids = [int(x) for x in np.random.default_rng(7).integers(0, vocab, args.tokens)]
            ids_path = os.path.join(workdir, f"{name}-ids.json")
            with open(ids_path, "w") as f:
                json.dump(ids, f)
            dtype_arg = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
            model = transformers.AutoModelForCausalLM.from_pretrained(
                model_dir, attn_implementation="eager", **{dtype_arg: torch.float32}).to(args.device).eval()
            with torch.inference_mode():
                reference = model(torch.tensor([ids], device=args.device)).logits[0, :-1].float().cpu().numpy()
            del model
            if args.device == "cuda":
                torch.cuda.empty_cache()
            entry = {"parameters": meta["parameters"], "precisions": {}}
            for precision in args.precisions.split(","):
                ours, error = quantserve_logits(args.quantserve, model_dir, args.device, precision, ids_path,
                                                args.tokens, vocab, workdir)
                entry["precisions"][precision] = {"error": error} if error else compare(ours, reference)
                r = entry["precisions"][precision]
                print(f"{name:<12} {precision:<17} " + (f"error: {error[:200]}" if error else
                      f"top-1 {r['top1_agreement']:.3f}  max |logit error| {r['max_abs_logit_error']:.3g}  "
                      f"(logits up to {r['reference_logit_abs_max']:.3g})"), flush=True)
            doc["models"][name] = entry
    if args.out:
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
