#!/usr/bin/env python3
"""quantserve's CPU backend against llama.cpp (and CTranslate2) on the same weights, machine and run.

One GGUF (--model: the default SmolLM2-135M-Instruct Q4_1, or Gemma 3 270M Q4_K_M) is the one source of weights: quantserve dequantizes it and
quantizes at load (int8 W8A8 with its default fp16 LM head, by groups of 32 where the CPU has VNNI or per row and
token with --classes int8-per-row, int8 with --quantize-embeddings, fp16, fp32); llama.cpp
(through llama-cpp-python, which builds it from source at install) gets the same file requantized by its own
quantize API to Q8_0, F16 and F32. Per precision class the two are compared on
  - prefill: a random prompt of P tokens, tokens/s (time to first token);
  - decode at batch 1: N greedy tokens after that prompt, tokens/s (so decode runs at context P..P+N).
for each --scenario P:N (default 128:128 and 2000:32). Each measurement is its own process (its own load and
page cache state, its own peak RSS), the engines alternate within every repetition, and the JSON keeps every
sample, the medians and the paired ratios (quantserve / peer within a repetition). Load averages are recorded
before each measurement: take figures only from a quiet machine.

Usage: python3 bench/cpu_peers.py [--binary build/server/quantserve] [--threads 2] [--reps 5]
                                   [--classes int8,fp16,fp32] [--scenario 128:128 --scenario 2000:32]
                                   [--ctranslate2] [-o bench/results/cpu_peers.json]
Needs `scripts/setup.sh --tools` (llama-cpp-python, ctranslate2, transformers).
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from bench_common import (ROOT, find_binary, git_commit, llama_cpp_quantize, load_average, machine_info,  # noqa: E402
                          run)

MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "bench", "results", "cpu_peers.json")

# precision class -> (quantserve precision and flags, llama.cpp file type)
CLASSES = {
    # --group-size auto: groups of 32 on VNNI CPUs, and then the embedding table and LM head quantized too
    "int8": (("int8", []), "Q8_0"),
    "int8-fp16-head": (("int8", ["--quantize-embeddings=off"]), "Q8_0"),   # groups, tables in fp16
    "int8-per-row": (("int8", ["--group-size", "0"]), "Q8_0"),   # one scale per row and per token, fp16 tables
    "int8-all": (("int8", ["--quantize-embeddings"]), "Q8_0"),
    "fp16": (("fp16", []), "F16"),
    "fp32": (("fp32", []), "F32"),
}




# ---------------------------------------------------------------------------------------------------------------
# Workers: one measurement per process; each prints one JSON line.

def random_prompt(n, vocab, seed=42):
    import random
    rng = random.Random(seed)
    return [rng.randrange(100, vocab) for _ in range(n)]


def llama_worker(args):
    import llama_cpp
    import numpy as np
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=args.gguf, n_ctx=args.prompt + args.new + 8, n_batch=2048, n_ubatch=512,
                          n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    load_s = time.perf_counter() - t0
    prompt = random_prompt(args.prompt, llm.n_vocab())
    llm.eval(prompt[:8])   # warm-up, then a fresh context
    llm.reset()
    llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
    t0 = time.perf_counter()
    llm.eval(prompt)
    tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t1 = time.perf_counter()
    for _ in range(args.new - 1):
        llm.eval([tok])
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t2 = time.perf_counter()
    import resource
    print(json.dumps({"prefill_tokens_per_second": args.prompt / (t1 - t0),
                      "decode_tokens_per_second": (args.new - 1) / (t2 - t1),
                      "time_to_first_token_ms": (t1 - t0) * 1e3, "load_seconds": load_s,
                      "file_bytes": os.path.getsize(args.gguf),
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "llama_cpp_python": llama_cpp.__version__}))


def ct2_worker(args):
    import ctranslate2
    import resource
    gen = ctranslate2.Generator(args.ct2_dir, device="cpu", compute_type=args.ct2_compute,
                                intra_threads=args.threads, inter_threads=1)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(args.ct2_dir)
    prompt = tok.convert_ids_to_tokens(random_prompt(args.prompt, len(tok)))
    gen.generate_batch([prompt[:8]], max_length=2, sampling_topk=1)   # warm-up

    def timed(n):
        t0 = time.perf_counter()
        gen.generate_batch([prompt], max_length=n, min_length=n, sampling_topk=1, include_prompt_in_result=False)
        return time.perf_counter() - t0
    t1 = timed(1)
    tn = timed(args.new)
    print(json.dumps({"prefill_tokens_per_second": args.prompt / t1,
                      "decode_tokens_per_second": (args.new - 1) / max(tn - t1, 1e-9),
                      "time_to_first_token_ms": t1 * 1e3,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "ctranslate2": ctranslate2.__version__}))


# ---------------------------------------------------------------------------------------------------------------
# The driver.

def requantize(ftype, threads):
    """The model's GGUF requantized by llama.cpp's own quantize (allow_requantize: the source is Q4_1 / Q4_K_M)."""
    stem = os.path.basename(MODEL).split(".")[0]   # "SmolLM2-135M-Instruct", "gemma-3-270m-q4_k_m"
    out = os.path.join(ROOT, "models", f"{stem}.llamacpp-{ftype}.gguf")
    llama_cpp_quantize(MODEL, out, ftype, threads)
    return out


def ct2_convert(quantization):
    """A Hugging Face directory from the GGUF (transformers dequantizes it), then CTranslate2's converter."""
    base = os.path.join(ROOT, "models", "peers")
    hf_dir, ct2_dir = os.path.join(base, "smollm2-hf"), os.path.join(base, f"smollm2-ct2-{quantization}")
    if not os.path.exists(os.path.join(hf_dir, "config.json")):
        run([sys.executable, "-c",
             "import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
             "d, f, o = sys.argv[1:4]\n"
             "m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)\n"
             # The weights are dequantized fp32 already; transformers only refuses to save what came from a GGUF.
             "m.hf_quantizer = None; m.is_quantized = False\n"
             "m.config.__dict__.pop('quantization_config', None)\n"
             "m.save_pretrained(o)\n"
             "AutoTokenizer.from_pretrained(d, gguf_file=f).save_pretrained(o)\n",
             os.path.dirname(MODEL), os.path.basename(MODEL), hf_dir])
    if not os.path.exists(os.path.join(ct2_dir, "model.bin")):
        run(["ct2-transformers-converter", "--model", hf_dir, "--output_dir", ct2_dir, "--quantization",
             quantization, "--copy_files", "tokenizer.json", "tokenizer_config.json",
             "--force"])
    return ct2_dir


def quantserve_sample(binary, precision, flags, prompt, new, threads):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    try:
        run([binary, "bench", "--model", MODEL, "--precisions", precision, "--batch", "1", "--prompt-tokens",
             str(prompt), "--new-tokens", str(new), "--threads", str(threads), "-o", path] + flags)
        r = json.load(open(path))["results"][0]
    finally:
        os.unlink(path)
    return {k: r[k] for k in ("prefill_tokens_per_second", "decode_tokens_per_second", "time_to_first_token_ms",
                              "load_seconds", "weight_bytes", "peak_memory_bytes")}


def worker_sample(kind, extra, prompt, new, threads):
    out = run([sys.executable, os.path.abspath(__file__), "--worker", kind, "--prompt", str(prompt), "--new",
               str(new), "--threads", str(threads)] + extra)
    return json.loads(out.strip().splitlines()[-1])


def median(xs):
    return statistics.median(xs) if xs else None


def summarize(samples, scenarios, classes):
    """Medians per engine and paired-median ratios (quantserve / llama.cpp within one repetition) per row."""
    summary = []
    for prompt, new in scenarios:
        for c in classes:
            row = {"prompt_tokens": prompt, "new_tokens": new, "class": c}
            for metric in ("prefill_tokens_per_second", "decode_tokens_per_second"):
                by_engine = {}
                for s in samples:
                    if (s["prompt_tokens"], s["new_tokens"], s["class"]) == (prompt, new, c):
                        by_engine.setdefault(s["engine"], {})[s["rep"]] = s[metric]
                for e, v in by_engine.items():
                    row.setdefault(e, {})[metric] = median(list(v.values()))
                q, l = by_engine.get("quantserve", {}), by_engine.get("llama.cpp", {})
                ratios = [q[r] / l[r] for r in q if r in l and l[r] > 0]
                if ratios:
                    row.setdefault("quantserve_over_llama_cpp", {})[metric] = median(ratios)
            if len(row) > 3:
                summary.append(row)
    return summary


def main():
    global MODEL
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary")
    ap.add_argument("--model", default=MODEL, help="the GGUF both engines run (default: SmolLM2-135M-Instruct Q4_1; "
                    "models/gemma-3-270m-q4_k_m.gguf after setup.sh --extra-models)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--classes", default="int8,int8-all,fp16,fp32")
    ap.add_argument("--scenario", action="append", help="PROMPT:NEW (default 128:128 and 2000:32)")
    ap.add_argument("--ctranslate2", action="store_true", help="also CTranslate2 int8 and float32 (first scenario)")
    ap.add_argument("-o", "--output", default=OUT)
    ap.add_argument("--worker", choices=["llama", "ct2"], help=argparse.SUPPRESS)
    ap.add_argument("--prompt", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--new", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--gguf", help=argparse.SUPPRESS)
    ap.add_argument("--ct2-dir", help=argparse.SUPPRESS)
    ap.add_argument("--ct2-compute", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "llama":
        return llama_worker(args)
    if args.worker == "ct2":
        return ct2_worker(args)

    MODEL = os.path.abspath(args.model)
    binary = find_binary(args.binary)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    for c in classes:
        if c not in CLASSES:
            sys.exit(f"unknown class '{c}' (one of {', '.join(CLASSES)})")
    scenarios = []
    for s in args.scenario or ["128:128", "2000:32"]:
        p, _, n = s.partition(":")
        if not (p.isdigit() and n.isdigit() and int(p) > 0 and int(n) > 1):
            sys.exit(f"--scenario wants PROMPT:NEW with PROMPT > 0 and NEW > 1, got '{s}'")
        scenarios.append((int(p), int(n)))

    ggufs = {CLASSES[c][1]: requantize(CLASSES[c][1], args.threads) for c in classes}
    ct2 = {}
    if args.ctranslate2:
        ct2 = {"int8": ct2_convert("int8"), "float32": ct2_convert("float32")}

    started, t_start = load_average(), time.time()
    samples = []   # {rep, scenario, class, engine, load_average_before, ...figures}

    def write(reps_done):
        """The JSON so far, after every repetition: a run stopped early (a machine that got busy) keeps it."""
        summary = summarize(samples, scenarios, classes + [f"ct2-{k}" for k in ct2])
        import llama_cpp
        out = {
            "tool": "bench/cpu_peers.py",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit(),
            "machine": machine_info(args.threads),
            "model": os.path.relpath(MODEL, ROOT),
            "peers": {"llama.cpp": f"llama-cpp-python {llama_cpp.__version__} (llama.cpp built from its source at "
                                   "install, GGML_NATIVE), n_batch 2048, n_ubatch 512, default flash-attention setting",
                      "files": {k: {"path": os.path.relpath(v, ROOT), "bytes": os.path.getsize(v)}
                                for k, v in ggufs.items()}},
            "classes": {c: {"quantserve": " ".join([CLASSES[c][0][0]] + CLASSES[c][0][1]), "llama.cpp": CLASSES[c][1]}
                        for c in classes},
            "reps": reps_done, "reps_asked": args.reps, "threads": args.threads,
            "load_average_start": started, "load_average_end": load_average(),
            "seconds": time.time() - t_start,
            "summary": summary,
            "samples": samples,
        }
        os.makedirs(os.path.dirname(args.output), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
        return summary

    summary = []
    for rep in range(args.reps):
        for prompt, new in scenarios:
            for c in classes:
                (prec, flags), ftype = CLASSES[c]
                pair = [("quantserve", lambda: quantserve_sample(binary, prec, flags, prompt, new, args.threads)),
                        ("llama.cpp", lambda: worker_sample("llama", ["--gguf", ggufs[ftype]], prompt, new,
                                                            args.threads))]
                if rep % 2:
                    pair.reverse()   # alternate who goes first
                for engine, fn in pair:
                    la = load_average()
                    r = fn()
                    r.update({"rep": rep, "prompt_tokens": prompt, "new_tokens": new, "class": c,
                              "engine": engine, "load_average_before": la})
                    samples.append(r)
                    print(f"rep {rep} {prompt}:{new} {c:8s} {engine:10s} prefill {r['prefill_tokens_per_second']:8.1f}"
                          f"  decode {r['decode_tokens_per_second']:7.1f} tok/s  (load {la[0] if la else '?'})",
                          flush=True)
            if ct2 and (prompt, new) == scenarios[0]:
                for compute, d in ct2.items():
                    la = load_average()
                    r = worker_sample("ct2", ["--ct2-dir", d, "--ct2-compute", compute], prompt, new, args.threads)
                    r.update({"rep": rep, "prompt_tokens": prompt, "new_tokens": new, "class": f"ct2-{compute}",
                              "engine": "CTranslate2", "load_average_before": la})
                    samples.append(r)
                    print(f"rep {rep} {prompt}:{new} ct2 {compute:8s} prefill {r['prefill_tokens_per_second']:8.1f}"
                          f"  decode {r['decode_tokens_per_second']:7.1f} tok/s", flush=True)
        summary = write(rep + 1)

    print(f"\n{'scenario':>10} {'class':9} {'metric':8} {'quantserve':>11} {'llama.cpp':>10} {'ratio':>6}")
    for row in summary:
        for metric, short in (("prefill_tokens_per_second", "prefill"), ("decode_tokens_per_second", "decode")):
            q = row.get("quantserve", {}).get(metric)
            l = row.get("llama.cpp", {}).get(metric) or row.get("CTranslate2", {}).get(metric)
            r = row.get("quantserve_over_llama_cpp", {}).get(metric)
            fmt = lambda v, w, d: f"{v:{w}.{d}f}" if v is not None else f"{'-':>{w}}"
            print(f"{row['prompt_tokens']:>5}:{row['new_tokens']:<4} {row['class']:11} {short:8} "
                  f"{fmt(q, 11, 1)} {fmt(l, 10, 1)} {fmt(r, 6, 2)}")
    print(f"wrote {os.path.relpath(args.output, ROOT)}")


if __name__ == "__main__":
    main()
