#!/usr/bin/env python3
"""GPU benchmark: quantserve (CUDA backend) beside PyTorch/transformers fp16 eager, on the same weights, in one run.

Runs on a GPU machine that has torch + transformers (no network needed):

  python3 bench/gpu_bench.py --quantserve build-gpu/server/quantserve [--models gpt2-small,pythia-1.4b]

For each model it
  1. makes a random-initialised model of that shape with transformers (seeded) and saves it with
     save_pretrained (safetensors, fp16) into a temporary directory, with a tokenizer from tests/fixtures;
  2. runs `quantserve bench --device cuda` on it (precisions fp16, int8, int8-weight-only; batch 1, 8, 64;
     prompt 128, new 128), plus fp16 at batch 1 with QUANTSERVE_CUDA_GRAPHS=0 (the graphs' A/B);
  3. runs transformers fp16 eager `generate` on the same weights (greedy, batch 1, 8, 64, same prompt and new
     token counts): prefill tokens/s, TTFT, decode tokens/s, ITL and peak memory (torch.cuda.max_memory_allocated);
  4. computes, for every decode figure, the memory-bandwidth limit: a decode step must read every weight once,
     so at batch B the limit is B * bandwidth / weight_bytes tokens/s; reported as the fraction reached;
  5. evaluates the issue's two targets and writes everything to bench/results/gpu_<gpu>_<date>.json (merging
     with that file when it exists, so the models can be run in separate calls).

Decode tokens/s is B * (new - 1) / (time from the last first token to the end) for both engines; TTFT is the
time to the first generated token of the batch (transformers: generate with max_new_tokens=1).
"""
import argparse
import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Shapes of the two models the issue names. Pythia-1.4B: GPT-NeoX, 24 layers of 2048, 16 heads, rotary 25%.
MODELS = {
    "gpt2-small": dict(arch="gpt2", tokenizer="gpt2",
                       # bos/eos inside the fixture tokenizer's 1000 tokens (GPT-2's 50256 is past them: the load refuses)
                       config=dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257,
                                   bos_token_id=0, eos_token_id=0)),
    # Pythia-410m: 24 layers of 1024, 16 heads (the logits check's second shape).
    "pythia-410m": dict(arch="gpt_neox", tokenizer="gpt_neox",
                        config=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                    intermediate_size=4096, vocab_size=50304, max_position_embeddings=2048,
                                    use_parallel_residual=True, hidden_act="gelu", layer_norm_eps=1e-5,
                                    tie_word_embeddings=False)),
    "pythia-1.4b": dict(arch="gpt_neox", tokenizer="gpt_neox",
                        config=dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16,
                                    intermediate_size=8192, vocab_size=50304, max_position_embeddings=2048,
                                    use_parallel_residual=True, hidden_act="gelu", layer_norm_eps=1e-5,
                                    tie_word_embeddings=False)),
    # (rotary: 25% of each head at base 10000 — transformers' GPT-NeoX defaults, which are Pythia's)
}

# Peak memory bandwidth (bytes/s) by GPU name, checked in order (the first substring that matches wins).
BANDWIDTH_TABLE = [
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),          # SXM5 (e.g. "NVIDIA H100 80GB HBM3")
    ("GH200", 4.0e12),
    ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12),
    ("L40S", 0.864e12), ("L4", 0.3e12), ("A10G", 0.6e12), ("A10", 0.6e12),
    ("RTX 4090", 1.008e12), ("RTX 3090", 0.936e12),
]


def log(*args):
    print("[gpu_bench]", *args, flush=True)


def git_commit():
    if os.environ.get("QS_COMMIT"):
        return os.environ["QS_COMMIT"]
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except Exception:
        return "unknown"


def gpu_info(torch):
    p = torch.cuda.get_device_properties(0)
    info = {"name": p.name, "compute_capability": f"{p.major}.{p.minor}", "total_memory_bytes": p.total_memory,
            "multiprocessors": p.multi_processor_count, "torch": torch.__version__,
            "cuda_runtime": torch.version.cuda}
    try:
        out = subprocess.check_output(["nvidia-smi", "--query-gpu=driver_version,clocks.max.memory",
                                       "--format=csv,noheader,nounits"], text=True).strip().splitlines()[0]
        info["driver"], info["max_memory_clock_mhz"] = [x.strip() for x in out.split(",")]
    except Exception as e:  # noqa: BLE001
        info["nvidia_smi_error"] = str(e)
    bw, source = None, None
    for key, value in BANDWIDTH_TABLE:
        if key.lower() in p.name.lower():
            bw, source = value, f"table entry '{key}'"
            break
    if bw is None:
        try:  # memory clock (kHz) and bus width (bits) from the runtime: DDR, so x2
            import cupy
            clock_khz = cupy.cuda.runtime.deviceGetAttribute(36, 0)   # cudaDevAttrMemoryClockRate
            bus_bits = cupy.cuda.runtime.deviceGetAttribute(37, 0)    # cudaDevAttrGlobalMemoryBusWidth
            bw, source = 2.0 * clock_khz * 1e3 * bus_bits / 8, "cudaDevAttrMemoryClockRate x bus width"
        except Exception as e:  # noqa: BLE001
            source = f"unknown ({e})"
    info["memory_bandwidth_bytes_per_s"] = bw
    info["memory_bandwidth_source"] = source
    return info


def copy_bandwidth(torch, gib=2, repeats=10):
    """Device-to-device copy bandwidth measured now (bytes read + written per second, the median of `repeats`
    copies of a `gib` GiB buffer after a warm-up): the ceiling a decode step's weight stream is held against."""
    n = gib << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    times.sort()
    return 2 * n / times[len(times) // 2]


def make_model(name, directory, torch, transformers, seed=0, device="cuda"):
    spec = MODELS[name]
    torch.manual_seed(seed)
    if spec["arch"] == "gpt2":
        cfg = transformers.GPT2Config(**spec["config"])
        cls = transformers.GPT2LMHeadModel
    else:
        cfg = transformers.GPTNeoXConfig(**spec["config"])
        cls = transformers.GPTNeoXForCausalLM
    with torch.device(device):   # random init on the GPU: seconds instead of a minute for 1.4B
        model = cls(cfg)
    model = model.half().eval()
    model.save_pretrained(directory, safe_serialization=True)
    fixture = os.path.join(ROOT, "tests", "fixtures", "models", spec["tokenizer"])
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.exists(os.path.join(fixture, f)):
            shutil.copy(os.path.join(fixture, f), directory)
    params = {id(p): p for p in model.parameters()}   # tied weights once
    weight_bytes = sum(p.numel() * p.element_size() for p in params.values())
    n_params = sum(p.numel() for p in params.values())
    largest = max(p.numel() * p.element_size() for p in params.values())   # as saved (fp16): what load uploads
    del model
    torch.cuda.empty_cache()
    return {"parameters": n_params, "fp16_weight_bytes": weight_bytes, "largest_tensor_bytes": largest,
            "config": spec["config"], "arch": spec["arch"]}


def run_quantserve(binary, model_dir, precisions, batches, prompt, new, graphs=True, timeout=900):
    fd, out_path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    cmd = [binary, "bench", "--device", "cuda", "-m", model_dir, "--precisions", ",".join(precisions),
           "--batch", ",".join(str(b) for b in batches), "--prompt-tokens", str(prompt), "--new-tokens", str(new),
           "-o", out_path]
    env = dict(os.environ)
    env["QUANTSERVE_CUDA_GRAPHS"] = "1" if graphs else "0"
    log(("" if graphs else "QUANTSERVE_CUDA_GRAPHS=0 ") + " ".join(cmd))
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=timeout)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr[-4000:])
    if proc.returncode != 0:
        return {"error": f"quantserve bench exited {proc.returncode}", "stderr": proc.stderr[-4000:],
                "command": " ".join(cmd)}
    with open(out_path) as f:
        result = json.load(f)
    os.unlink(out_path)
    result["wall_seconds"] = time.time() - t0
    result["cuda_graphs_requested"] = graphs
    result["stderr_tail"] = proc.stderr[-2000:]
    return result


def run_transformers(model_dir, batches, prompt, new, torch, transformers, seed=42):
    """transformers fp16 eager generate on the same weights: greedy, dynamic KV cache, eager attention."""
    torch.cuda.synchronize()
    t0 = time.time()
    dtype_arg = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager",
                                                              **{dtype_arg: torch.float16}).cuda().eval()
    torch.cuda.synchronize()
    load_s = time.time() - t0
    V = model.config.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(seed)
    results = []

    def generate(ids, n):
        with torch.inference_mode():
            return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, pad_token_id=0, eos_token_id=None, use_cache=True)

    warm = torch.randint(0, V, (1, 16), generator=gen).cuda()
    generate(warm, 4)
    for b in batches:
        ids = torch.randint(0, V, (b, prompt), generator=gen).cuda()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        generate(ids, 1)   # prefill + the first token: TTFT
        torch.cuda.synchronize()
        ttft = time.time() - t0
        t0 = time.time()
        out = generate(ids, new)
        torch.cuda.synchronize()
        total = time.time() - t0
        assert out.shape[1] == prompt + new, out.shape
        decode_s = max(total - ttft, 1e-9)
        results.append({
            "batch": b,
            "prefill_tokens_per_second": b * prompt / ttft,
            "time_to_first_token_ms": ttft * 1e3,
            "decode_tokens_per_second": b * (new - 1) / decode_s if new > 1 else 0.0,
            "inter_token_latency_ms": decode_s / (new - 1) * 1e3 if new > 1 else 0.0,
            "peak_memory_bytes": torch.cuda.max_memory_allocated(),
            "total_seconds": total,
        })
        log(f"transformers fp16 eager batch {b}: prefill {results[-1]['prefill_tokens_per_second']:.0f} tok/s, "
            f"decode {results[-1]['decode_tokens_per_second']:.1f} tok/s, TTFT {ttft * 1e3:.1f} ms")
    del model
    torch.cuda.empty_cache()
    return {"engine": f"transformers {transformers.__version__} fp16 eager generate", "load_seconds": load_s,
            "results": results}


def bandwidth_ratio(tokens_per_s, batch, weight_bytes, bandwidth):
    if not bandwidth or not weight_bytes or not tokens_per_s:
        return None
    limit = batch * bandwidth / weight_bytes
    return {"limit_tokens_per_second": limit, "fraction_of_limit": tokens_per_s / limit}


def row_at(rows, precision, batch, run="graphs"):
    for r in rows:
        if r.get("precision") == precision and r.get("batch") == batch and r.get("run", "graphs") == run:
            return r
    return None


def decode_at(rows, precision, batch, run="graphs"):
    r = row_at(rows, precision, batch, run)
    return r.get("decode_tokens_per_second") if r else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quantserve", default=os.path.join(ROOT, "build-gpu", "server", "quantserve"))
    ap.add_argument("--models", default="gpt2-small,pythia-1.4b")
    ap.add_argument("--precisions", default="fp32,fp16,bf16,int8,int8-weight-only")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--prefill", type=int, default=512, help="the prefill figure's prompt (batch 1, every precision)")
    ap.add_argument("--no-graphs-ab", action="store_true", help="skip fp16 batch 1 with QUANTSERVE_CUDA_GRAPHS=0")
    ap.add_argument("--skip-peer", action="store_true", help="skip transformers (debugging only)")
    ap.add_argument("--out", default="", help="JSON path (default bench/results/gpu_<gpu>_<date>.json)")
    ap.add_argument("--workdir", default="", help="where the models are saved (default: a temporary directory)")
    args = ap.parse_args()

    import torch
    import transformers
    if not torch.cuda.is_available():
        sys.exit("gpu_bench: no CUDA device visible to torch")
    if not os.access(args.quantserve, os.X_OK):
        sys.exit(f"gpu_bench: {args.quantserve} is not an executable (build it first: scripts/gpu_verify.sh build)")
    gpu = gpu_info(torch)
    gpu["copy_bandwidth_bytes_per_s"] = copy_bandwidth(torch)
    gpu["peak_bandwidth_bytes_per_s"] = gpu["memory_bandwidth_bytes_per_s"]
    log("GPU:", json.dumps(gpu))
    slug = re.sub(r"[^A-Za-z0-9]+", "_", gpu["name"]).strip("_").lower()
    out_path = args.out or os.path.join(ROOT, "bench", "results", f"gpu_{slug}_{_dt.date.today().isoformat()}.json")
    doc = {}
    if os.path.exists(out_path):
        with open(out_path) as f:
            doc = json.load(f)
    doc.update({"tool": "bench/gpu_bench.py", "date": _dt.datetime.now().isoformat(timespec="seconds"),
                "commit": git_commit(), "device": gpu, "prompt_tokens": args.prompt, "new_tokens": args.new})
    doc.setdefault("models", {})
    precisions = args.precisions.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    bw = gpu["copy_bandwidth_bytes_per_s"]   # the limit every decode figure is a fraction of: measured in this call

    workdir = args.workdir or tempfile.mkdtemp(prefix="qs_gpu_bench_")
    for name in args.models.split(","):
        model_dir = os.path.join(workdir, name)
        os.makedirs(model_dir, exist_ok=True)
        log(f"making {name} in {model_dir}")
        t0 = time.time()
        meta = make_model(name, model_dir, torch, transformers)
        meta["make_seconds"] = time.time() - t0
        entry = {"model": meta, "quantserve": {}, "transformers": None}

        ours = run_quantserve(args.quantserve, model_dir, precisions, batches, args.prompt, args.new)
        entry["quantserve"]["graphs"] = ours
        if not args.no_graphs_ab and "fp16" in precisions:
            entry["quantserve"]["no_graphs"] = run_quantserve(args.quantserve, model_dir, ["fp16"], [1], args.prompt,
                                                              args.new, graphs=False)
        if args.prefill:
            entry["quantserve"]["prefill"] = run_quantserve(args.quantserve, model_dir, precisions, [1], args.prefill, 2)
        if not args.skip_peer:
            entry["transformers"] = run_transformers(model_dir, batches, args.prompt, args.new, torch, transformers)
            if args.prefill:
                entry["transformers_prefill"] = run_transformers(model_dir, [1], args.prefill, 2, torch, transformers)

        # The flat table: one row per (engine, precision, batch), with the bandwidth ratio.
        rows = []
        for key, run in entry["quantserve"].items():
            for r in run.get("results", []):
                row = dict(r)
                row["engine"] = "quantserve"
                row["cuda_graphs"] = key != "no_graphs"
                row["run"] = key   # graphs / no_graphs: the decode runs; prefill: the --prefill prompt
                row.update(bandwidth_ratio(r["decode_tokens_per_second"], r["batch"], r["weight_bytes"], bw) or {})
                rows.append(row)
        for key in ("transformers", "transformers_prefill"):
            if not entry.get(key):
                continue
            for r in entry[key]["results"]:
                row = dict(r)
                row.update({"engine": "transformers-eager", "precision": "fp16", "weight_bytes": meta["fp16_weight_bytes"],
                            "load_seconds": entry[key]["load_seconds"],
                            "run": "prefill" if key == "transformers_prefill" else "graphs"})
                row.update(bandwidth_ratio(r["decode_tokens_per_second"], r["batch"], meta["fp16_weight_bytes"], bw) or {})
                rows.append(row)
        entry["rows"] = rows
        doc["models"][name] = entry
        shutil.rmtree(model_dir, ignore_errors=True)
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
        with open(out_path, "w") as f:   # after every model, so a later failure keeps what was measured
            json.dump(doc, f, indent=2)

    # The targets, from whatever models this file now holds.
    targets = []
    py = doc["models"].get("pythia-1.4b")
    if py:
        q = [r for r in py["rows"] if r["engine"] == "quantserve"]
        wo, fp = decode_at(q, "int8-weight-only", 1), decode_at(q, "fp16", 1)
        targets.append({"target": "pythia-1.4b: int8-weight-only decode at batch 1 >= 1.5x our fp16",
                        "int8_weight_only_tokens_per_second": wo, "fp16_tokens_per_second": fp,
                        "ratio": wo / fp if wo and fp else None, "required": 1.5,
                        "met": bool(wo and fp and wo / fp >= 1.5)})
    def target(text, value, required, at_most=False):
        met = value is not None and (value <= required if at_most else value >= required)
        targets.append({"target": text, "value": value, "required": required, "met": bool(met)})

    if py:
        row = row_at([r for r in py["rows"] if r["engine"] == "quantserve"], "int8-weight-only", 1)
        target("pythia-1.4b: int8-weight-only batch-1 decode >= 60% of the bandwidth limit (copy bandwidth measured "
               "in this call)", row.get("fraction_of_limit") if row else None, 0.6)
    g2 = doc["models"].get("gpt2-small")
    if g2:
        q = [r for r in g2["rows"] if r["engine"] == "quantserve"]
        target("gpt2-small: int8-weight-only batch-1 decode >= 3,000 tok/s", decode_at(q, "int8-weight-only", 1), 3000)
        for prec in precisions:
            target(f"gpt2-small: batch-64 decode ({prec}) >= 30,000 tok/s", decode_at(q, prec, 64), 30000)
        row = row_at(q, "int8-weight-only", 1)
        if row:
            target("gpt2-small: load + quantize (int8-weight-only) <= 1 s", row.get("load_seconds"), 1.0, at_most=True)
            bound = row["weight_bytes"] + g2["model"]["largest_tensor_bytes"]
            target("gpt2-small: peak device memory during load <= final model + its largest tensor",
                   row.get("load_peak_memory_bytes"), bound, at_most=True)
    if g2:
        q = [r for r in g2["rows"] if r["engine"] == "quantserve"]
        hf = decode_at([r for r in g2["rows"] if r["engine"] == "transformers-eager"], "fp16", 1)
        for prec in precisions:
            ours = decode_at(q, prec, 1)
            targets.append({"target": f"gpt2-small: batch-1 decode ({prec}) >= 10x transformers fp16 eager",
                            "quantserve_tokens_per_second": ours, "transformers_tokens_per_second": hf,
                            "ratio": ours / hf if ours and hf else None, "required": 10.0,
                            "met": bool(ours and hf and ours / hf >= 10.0)})
    doc["targets"] = targets
    with open(out_path, "w") as f:
        json.dump(doc, f, indent=2)

    log(f"wrote {out_path}")
    print(f"\n{'model':<12} {'engine':<19} {'precision':<17} {'graphs':>6} {'batch':>5} {'decode tok/s':>12} "
          f"{'prefill tok/s':>13} {'TTFT ms':>8} {'ITL ms':>7} {'peak MiB':>9} {'of BW':>6}")
    for name, entry in doc["models"].items():
        for r in entry["rows"]:
            frac = r.get("fraction_of_limit")
            print(f"{name:<12} {r['engine']:<19} {r.get('precision', ''):<17} {str(r.get('cuda_graphs', '')):>6} "
                  f"{r['batch']:>5} {r['decode_tokens_per_second']:>12.1f} {r['prefill_tokens_per_second']:>13.0f} "
                  f"{r['time_to_first_token_ms']:>8.1f} {r['inter_token_latency_ms']:>7.2f} "
                  f"{r['peak_memory_bytes'] / 2**20:>9.0f} {'' if frac is None else f'{frac:.0%}':>6}")
    for t in targets:
        v = t.get("ratio", t.get("value"))
        print(f"target: {t['target']}: {v if v is None else round(v, 3)} (required {t['required']}) -> "
              f"{'MET' if t['met'] else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
