#!/usr/bin/env python3
"""Checks `quantserve perplexity` (fp32) against Hugging Face transformers within a relative tolerance.

(a) Fixture models (tests/fixtures/models/*): quantserve scores the fixture's own token ids (ppl_ids) with
    non-overlapping windows of ppl_window tokens (context = stride = ppl_window: each window's first token is
    context only), exactly as tools/make_fixtures.py did with transformers; the reference perplexity is the
    one committed in reference.json, so this part needs only the built binary (--fixtures-only).
(b) The default model (SmolLM2-135M-Instruct, GGUF Q4_1): quantserve's windowed perplexity on the first
    --tokens tokens of an English text that ships with the OS, against transformers fp32 loading the same GGUF
    (dequantized to fp32, as quantserve does) and scoring the same ids with the same windows (Hugging Face's
    perplexity guide: strided windows, labels of the already-scored prefix masked with -100).

Usage:
  python3 tools/check_perplexity.py [--binary build/server/quantserve] [--fixtures-only]
                                    [--output bench/results/perplexity_agreement.json]
Exit status 1 when any model disagrees by more than --tolerance (relative, default 0.001 = 0.1%).
"""
import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time

from bench_common import ROOT, find_binary, git_commit, run  # noqa: E402
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "models")
DEFAULT_MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_TEXT = "/usr/share/common-licenses/GPL-3"


def run_json(cmd):
    return json.loads(run(cmd))


def check_fixture(binary, name, tolerance):
    d = os.path.join(FIXTURES, name)
    ref = json.load(open(os.path.join(d, "reference.json")))
    window = int(ref["ppl_window"])
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(ref["ppl_ids"], f)
        ids_path = f.name
    try:
        q = run_json([binary, "perplexity", "--model", d, "--precision", "fp32", "--ids-file", ids_path,
                      "--context", str(window), "--stride", str(window), "--json"])
        # The same text through quantserve's own tokenizer: informative (the fixture's ids came from transformers).
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write(ref["ppl_text"])
            text_path = f.name
        saved = ids_path + ".tok.json"
        qt = run_json([binary, "perplexity", "--model", d, "--precision", "fp32", "--file", text_path,
                       "--context", str(window), "--stride", str(window), "--save-ids", saved, "--json"])
        tokenizer_matches = json.load(open(saved)) == ref["ppl_ids"]
        os.unlink(saved)
        os.unlink(text_path)
    finally:
        os.unlink(ids_path)
    rel = q["perplexity"] / ref["perplexity"] - 1.0
    return {
        "model": f"tests/fixtures/models/{name}",
        "architecture": ref["architecture"],
        "reference": f"transformers {ref['transformers_version']} (torch {ref['torch_version']}, fp32, "
                     f"committed in reference.json)",
        "tokens": len(ref["ppl_ids"]),
        "context": window,
        "stride": window,
        "predicted_tokens": q["predicted_tokens"],
        "reference_predicted_tokens": ref["ppl_n_predicted"],
        "quantserve_perplexity": q["perplexity"],
        "transformers_perplexity": ref["perplexity"],
        "quantserve_mean_nll": q["mean_nll"],
        "transformers_mean_nll": ref["ppl_nll_mean"],
        "relative_difference": rel,
        "tokenizer_matches_reference_ids": tokenizer_matches,
        "quantserve_perplexity_own_tokenizer": qt["perplexity"],
        "pass": abs(rel) <= tolerance and q["predicted_tokens"] == ref["ppl_n_predicted"],
    }


def hf_windowed_perplexity(model, ids, context, stride):
    """Hugging Face's perplexity guide, summing NLL over exactly the predicted tokens."""
    import torch
    n = len(ids)
    x = torch.tensor([ids], dtype=torch.long)
    nll_sum, count, prev_end = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, n, stride):
            end = min(begin + context, n)
            trg_len = end - prev_end
            input_ids = x[:, begin:end]
            target = input_ids.clone()
            target[:, :-trg_len] = -100
            logits = model(input_ids).logits.float()
            lp = torch.log_softmax(logits[0, :-1].double(), dim=-1)
            labels = target[0, 1:]
            mask = labels != -100
            nll_sum += float(-lp[mask].gather(1, labels[mask].unsqueeze(1)).sum())
            count += int(mask.sum())
            prev_end = end
            if end == n:
                break
    return math.exp(nll_sum / count), nll_sum / count, count


def check_default_model(binary, model_path, text, tokens, context, stride, tolerance, threads):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        ids_path = os.path.join(tmp, "ids.json")
        t0 = time.time()
        q = run_json([binary, "perplexity", "--model", model_path, "--precision", "fp32", "--file", text,
                      "--max-tokens", str(tokens), "--context", str(context), "--stride", str(stride),
                      "--save-ids", ids_path, "--json"] + (["--threads", str(threads)] if threads else []))
        q_seconds = time.time() - t0
        ids = json.load(open(ids_path))
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(model_path)),
                                                 gguf_file=os.path.basename(model_path), torch_dtype=torch.float32)
    model.eval()
    load_s = time.time() - t0
    t0 = time.time()
    ppl, nll, count = hf_windowed_perplexity(model, ids, context, stride)
    hf_seconds = time.time() - t0
    rel = q["perplexity"] / ppl - 1.0
    return {
        "model": os.path.relpath(os.path.abspath(model_path), ROOT),
        "architecture": model.config.model_type,
        "reference": f"transformers {transformers.__version__} (torch {torch.__version__}) fp32 from the same GGUF "
                     f"(dequantized at load)",
        "text": text,
        "tokens": len(ids),
        "context": context,
        "stride": stride,
        "predicted_tokens": q["predicted_tokens"],
        "reference_predicted_tokens": count,
        "quantserve_perplexity": q["perplexity"],
        "transformers_perplexity": ppl,
        "quantserve_mean_nll": q["mean_nll"],
        "transformers_mean_nll": nll,
        "relative_difference": rel,
        "quantserve_seconds": q_seconds,
        "transformers_seconds": hf_seconds,
        "transformers_load_seconds": load_s,
        "pass": abs(rel) <= tolerance and q["predicted_tokens"] == count,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", help="quantserve binary (default: $QUANTSERVE_BIN or build*/server/quantserve)")
    ap.add_argument("--fixtures-only", action="store_true", help="only (a): needs no torch/transformers")
    ap.add_argument("--fixtures", default="gpt2,gpt_neox,gpt_neox_seq,llama,llama_untied,qwen2,qwen3,mistral,gemma3")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--text", default=DEFAULT_TEXT)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=0.001)
    ap.add_argument("--output", help="write the figures as JSON here (e.g. bench/results/perplexity_agreement.json)")
    args = ap.parse_args()
    binary = find_binary(args.binary)

    results = []
    for name in [n for n in args.fixtures.split(",") if n]:
        r = check_fixture(binary, name, args.tolerance)
        results.append(r)
        print(f"{'PASS' if r['pass'] else 'FAIL'}  {r['model']:38s} quantserve {r['quantserve_perplexity']:.6g}  "
              f"transformers {r['transformers_perplexity']:.6g}  rel {r['relative_difference']:+.2e}  "
              f"(own tokenizer: {'same ids' if r['tokenizer_matches_reference_ids'] else 'different ids'})")
    if not args.fixtures_only:
        r = check_default_model(binary, args.model, args.text, args.tokens, args.context, args.stride,
                                args.tolerance, args.threads)
        results.append(r)
        print(f"{'PASS' if r['pass'] else 'FAIL'}  {r['model']:38s} quantserve {r['quantserve_perplexity']:.6g}  "
              f"transformers {r['transformers_perplexity']:.6g}  rel {r['relative_difference']:+.2e}  "
              f"({r['tokens']} tokens of {r['text']}, context {r['context']}, stride {r['stride']})")
    ok = all(r["pass"] for r in results)
    if args.output:
        out = {
            "tool": "tools/check_perplexity.py",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit(),
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "cpus": os.cpu_count()},
            "precision": "fp32",
            "tolerance_relative": args.tolerance,
            "all_pass": ok,
            "results": results,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
