#!/usr/bin/env python3
"""The seeds' method as the baseline: PyTorch fp32 and torch.quantization.quantize_dynamic (qint8 Linear) on the
CPU, beside quantserve fp32 / int8 / int8-weight-only, on the same weights, text and machine, in one run.

Weights: the default model's GGUF (SmolLM2-135M-Instruct Q4_1), which transformers dequantizes to fp32 exactly as
quantserve does at load. Measured per configuration, each in its own process (so peak RSS is its own):
  - perplexity: the first --tokens tokens of /usr/share/common-licenses/GPL-3 as quantserve tokenizes them
    (`quantserve perplexity --save-ids`), windows of --context, stride --stride (Hugging Face's guide);
  - decode tokens/s at batch 1: greedy, --prompt-tokens random prompt tokens then --new-tokens tokens with the
    KV cache (PyTorch: a forward per token with past_key_values; quantserve: `quantserve bench --batch 1`);
  - memory: resident weight bytes and the process's peak RSS.
Writes bench/results/cpu_pytorch_baseline.json (machine, threads, load averages, commit).

Usage: python3 bench/pytorch_baseline.py [--binary build/server/quantserve] [--threads N]
"""
import argparse
import datetime
import io
import json
import os
import platform
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from bench_common import ROOT, find_binary, git_commit, load_average, run  # noqa: E402
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
TEXT = "/usr/share/common-licenses/GPL-3"
OUT = os.path.join(ROOT, "bench", "results", "cpu_pytorch_baseline.json")




# ---------------------------------------------------------------------------------------------------------------
# PyTorch worker (one configuration per process).

def torch_worker(args):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(args.threads)
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(MODEL), gguf_file=os.path.basename(MODEL),
                                                 dtype=torch.float32)
    model.eval()
    if args.worker == "quantize_dynamic":
        model = torch.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    load_s = time.time() - t0
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)   # packed int8 Linear weights count at their real size
    weight_bytes = buf.getbuffer().nbytes
    ids = json.load(open(args.ids))
    # Perplexity (Hugging Face's guide, NLL summed over exactly the predicted tokens).
    x = torch.tensor([ids], dtype=torch.long)
    n, nll_sum, count, prev_end = len(ids), 0.0, 0, 0
    t0 = time.time()
    with torch.no_grad():
        for begin in range(0, n, args.stride):
            end = min(begin + args.context, n)
            trg_len = end - prev_end
            inp = x[:, begin:end]
            target = inp.clone()
            target[:, :-trg_len] = -100
            lp = torch.log_softmax(model(inp).logits[0, :-1].double(), dim=-1)
            labels = target[0, 1:]
            mask = labels != -100
            nll_sum += float(-lp[mask].gather(1, labels[mask].unsqueeze(1)).sum())
            count += int(mask.sum())
            prev_end = end
            if end == n:
                break
    ppl_s = time.time() - t0
    # Decode at batch 1: greedy with the KV cache, a forward per token (what generate() does, minus its overhead).
    g = torch.Generator().manual_seed(42)
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt_tokens), generator=g)
    times = []
    with torch.no_grad():
        for rep in range(2):   # the first repetition warms up
            t0 = time.time()
            out = model(prompt, use_cache=True)
            ttft = time.time() - t0
            past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            t0 = time.time()
            for _ in range(args.new_tokens - 1):
                out = model(tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            times.append((ttft, time.time() - t0))
    ttft, decode_s = times[-1]
    import math
    print(json.dumps({
        "engine": f"PyTorch {torch.__version__} + transformers {transformers.__version__}",
        "precision": "fp32" if args.worker == "fp32" else "quantize_dynamic qint8 (all nn.Linear, incl. lm_head)",
        "perplexity": math.exp(nll_sum / count), "predicted_tokens": count, "perplexity_seconds": ppl_s,
        "decode_tokens_per_second": (args.new_tokens - 1) / decode_s,
        "prefill_tokens_per_second": args.prompt_tokens / ttft,
        "weight_bytes": weight_bytes, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "load_seconds": load_s, "threads": torch.get_num_threads()}))


# ---------------------------------------------------------------------------------------------------------------

def quantserve_row(binary, precision, args, ids_path):
    la = load_average()
    th = ["--threads", str(args.threads)]
    p = json.loads(run([binary, "perplexity", "--model", MODEL, "--precision", precision, "--group-size", "0", "--ids-file", ids_path,
                        "--context", str(args.context), "--stride", str(args.stride), "--json"] + th))
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        bench_path = f.name
    run([binary, "bench", "--model", MODEL, "--precisions", precision, "--group-size", "0", "--batch", "1", "--prompt-tokens",
         str(args.prompt_tokens), "--new-tokens", str(args.new_tokens), "-o", bench_path] + th)
    b = json.load(open(bench_path))["results"][0]
    os.unlink(bench_path)
    return {"engine": "quantserve (CPU backend)", "precision": precision, "perplexity": p["perplexity"],
            "predicted_tokens": p["predicted_tokens"], "perplexity_seconds": p["seconds"],
            "decode_tokens_per_second": b["decode_tokens_per_second"],
            "prefill_tokens_per_second": b["prefill_tokens_per_second"], "weight_bytes": b["weight_bytes"],
            "peak_rss_bytes": b["peak_memory_bytes"], "load_seconds": b["load_seconds"], "threads": args.threads,
            "load_average_before": la}


def torch_row(kind, args, ids_path):
    la = load_average()
    out = run([sys.executable, os.path.abspath(__file__), "--worker", kind, "--ids", ids_path, "--threads",
               str(args.threads), "--context", str(args.context), "--stride", str(args.stride), "--prompt-tokens",
               str(args.prompt_tokens), "--new-tokens", str(args.new_tokens)])
    row = json.loads(out.strip().splitlines()[-1])
    row["load_average_before"] = la
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--worker", choices=["fp32", "quantize_dynamic"], help=argparse.SUPPRESS)
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        torch_worker(args)
        return
    binary = find_binary(args.binary)
    started = load_average()
    t_start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        ids_path = os.path.join(tmp, "ids.json")
        run([binary, "perplexity", "--model", MODEL, "--precision", "fp32", "--file", TEXT, "--max-tokens",
             str(args.tokens), "--context", str(args.context), "--stride", str(args.stride), "--save-ids", ids_path,
             "--json", "--threads", str(args.threads)])
        rows = []
        for kind in ("fp32", "quantize_dynamic"):
            print(f"pytorch {kind}", flush=True)
            rows.append(torch_row(kind, args, ids_path))
        for prec in ("fp32", "int8", "int8-weight-only"):
            print(f"quantserve {prec}", flush=True)
            rows.append(quantserve_row(binary, prec, args, ids_path))
    for r in rows:
        r["memory_note"] = f"weights {r['weight_bytes'] / 1e6:.1f} MB, peak RSS {r['peak_rss_bytes'] / 1e6:.0f} MB"
    by = {(r["engine"].split()[0], r["precision"].split()[0]): r for r in rows}
    pt_fp32, pt_q = by[("PyTorch", "fp32")], by[("PyTorch", "quantize_dynamic")]
    qs = {p: by[("quantserve", p)] for p in ("fp32", "int8", "int8-weight-only")}
    cpu = ""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    out = {
        "tool": "bench/pytorch_baseline.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": {"cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform(),
                    "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")},
        "threads": args.threads,
        "load_average_start": started,
        "load_average_end": load_average(),
        "uptime": run(["uptime"]).strip(),
        "model": os.path.relpath(MODEL, ROOT),
        "text": {"file": TEXT, "tokens": args.tokens, "context": args.context, "stride": args.stride},
        "decode": {"batch": 1, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens},
        "seconds": time.time() - t_start,
        "rows": rows,
        "summary": {
            "quantserve_int8_vs_quantize_dynamic_decode_speedup":
                qs["int8"]["decode_tokens_per_second"] / pt_q["decode_tokens_per_second"],
            "quantserve_int8_weight_only_vs_quantize_dynamic_decode_speedup":
                qs["int8-weight-only"]["decode_tokens_per_second"] / pt_q["decode_tokens_per_second"],
            "quantserve_fp32_vs_pytorch_fp32_decode_speedup":
                qs["fp32"]["decode_tokens_per_second"] / pt_fp32["decode_tokens_per_second"],
            "fp32_perplexity_relative_difference": qs["fp32"]["perplexity"] / pt_fp32["perplexity"] - 1,
            "quantize_dynamic_perplexity_change": pt_q["perplexity"] / pt_fp32["perplexity"] - 1,
            "quantserve_int8_perplexity_change": qs["int8"]["perplexity"] / qs["fp32"]["perplexity"] - 1,
            "quantserve_int8_weight_only_perplexity_change":
                qs["int8-weight-only"]["perplexity"] / qs["fp32"]["perplexity"] - 1,
            "target_quantserve_int8_faster_than_quantize_dynamic":
                qs["int8"]["decode_tokens_per_second"] > pt_q["decode_tokens_per_second"],
        },
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(f"{'engine':30s} {'precision':22s} {'ppl':>9s} {'decode tok/s':>13s} {'weights MB':>11s} {'peak RSS MB':>12s}")
    for r in rows:
        print(f"{r['engine'][:30]:30s} {r['precision'][:22]:22s} {r['perplexity']:9.4f} "
              f"{r['decode_tokens_per_second']:13.1f} {r['weight_bytes'] / 1e6:11.1f} {r['peak_rss_bytes'] / 1e6:12.0f}")
    print(json.dumps(out["summary"], indent=2))


if __name__ == "__main__":
    main()
