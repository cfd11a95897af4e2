#!/usr/bin/env python3
"""quantserve's precisions and llama.cpp's quantization types on the same token ids, scored llama.cpp's way.

The default model's weights (the SmolLM2-135M-Instruct Q4_1 GGUF) in two engines:
  - llama.cpp (llama-cpp-python, logits_all=True): one F32 GGUF written by llama.cpp's quantize API from the Q4_1
    file (the Q4_1 blocks dequantized), and Q8_0, Q4_1 and Q4_K_M all quantized from that F32 file;
  - quantserve: fp32, int8-weight-only (per row and --group-size 32), int8-smooth, int8 (W8A8) and
    int4-weight-only loading the Q4_1 file (`quantserve perplexity --method llama.cpp`), and fp32 and
    int4-weight-only loading llama.cpp's F32 file: int4 from a float source (rounded to nearest into Q4_1 at load),
    the case to hold against llama.cpp's Q4_1 of the same F32 file; and fp32 loading llama.cpp's Q4_1 file.
Per text (GPL-3, LGPL-2.1, MPL-2.0 under /usr/share/common-licenses/, none of them int8-smooth's calibration text)
quantserve tokenizes the first --tokens tokens once and saves them (--save-ids); every run of both engines scores
those very ids by llama.cpp's perplexity tool's method: non-overlapping chunks of --context, each chunk's first token
replaced by BOS when the vocabulary adds one, the second half of each chunk scored, the remainder dropped. So each
engine's Δ is against its own fp32 and, the method and ids being the same, the absolute perplexities compare too.
Every Δ comes with its paired standard error: both engines give each scored position's NLL (quantserve
`--save-nll`), and a row's per-position differences from its engine's fp32 give the error of its mean.
Writes bench/results/quality_vs_llamacpp.json (rendered into docs/QUANTIZATION.md by bench/quality_report.py).

Usage: python3 bench/llamacpp_perplexity.py [--binary build/server/quantserve] [--threads 2] [--tokens 2048]
                                           [--rows "int8;int8-smooth"] [--llama-types Q8_0] [-o OUT.json]
(--tokens larger than a text scores all of it.)
Needs `scripts/setup.sh --tools` (llama-cpp-python); no test runs it.
"""
import argparse
import datetime
import json
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from bench_common import (ROOT, find_binary, git_commit, llama_cpp_quantize, load_average, machine_info,  # noqa: E402
                          run, write_results)

MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "bench", "results", "quality_vs_llamacpp.json")
TEXTS = ["/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/LGPL-2.1",
         "/usr/share/common-licenses/MPL-2.0"]
# quantserve rows: label -> (the file it loads: "source" (the Q4_1 file) or one of llama.cpp's files, flags). "fp32"
# first: the others' Δ is against it.
QUANTSERVE = {
    "fp32": ("source", ["--precision", "fp32"]),
    "int8-weight-only": ("source", ["--precision", "int8-weight-only", "--group-size", "0"]),   # per row
    "int8-weight-only, group 32": ("source", ["--precision", "int8-weight-only", "--group-size", "32"]),
    "int8-smooth": ("source", ["--precision", "int8-smooth", "--group-size", "0"]),   # per row and token
    "int8-smooth, group 32": ("source", ["--precision", "int8-smooth", "--group-size", "32"]),
    "int8": ("source", ["--precision", "int8", "--group-size", "0"]),   # per row and token
    # W8A8 by groups of 32: weights as Q8_0 blocks, activations by groups of 32 (llama.cpp's Q8_0 x Q8_0 scheme)
    "int8, group 32": ("source", ["--precision", "int8", "--group-size", "32"]),
    # The embedding table and LM head quantized too (--quantize-embeddings): the default model's table is Q8_0 in
    # the file, which groups of 32 keep block for block, as llama.cpp's Q8_0 keeps its output tensor.
    "int8, group 32, embeddings too": ("source", ["--precision", "int8", "--group-size", "32",
                                                  "--quantize-embeddings"]),
    "int8-weight-only, group 32, embeddings too": ("source", ["--precision", "int8-weight-only", "--group-size",
                                                              "32", "--quantize-embeddings"]),
    "int4-weight-only": ("source", ["--precision", "int4-weight-only"]),
    "fp32, llama.cpp's F32 file": ("F32", ["--precision", "fp32"]),
    "int4-weight-only, llama.cpp's F32 file": ("F32", ["--precision", "int4-weight-only"]),
    # llama.cpp's Q4_1 file in quantserve's fp32 (dequantized at load): whether llama.cpp's Q4_1 Δ comes from its
    # weights or from its kernels (which quantize the activations to 8-bit blocks for the dot products).
    "fp32, llama.cpp's Q4_1 file": ("Q4_1", ["--precision", "fp32"]),
}
LLAMA_TYPES = ["F32", "Q8_0", "Q4_1", "Q4_K_M"]   # F32 first, as above


# ---------------------------------------------------------------------------------------------------------------
# The llama.cpp worker: one GGUF, one ids file, one process; prints one JSON line.

def llama_worker(args):
    import llama_cpp
    import numpy as np
    ids = json.load(open(args.ids))
    n_ctx = args.context
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=args.gguf, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                          n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    load_s = time.perf_counter() - t0
    # What llama.cpp's perplexity tool reads: llama_vocab_get_add_bos and llama_vocab_bos.
    add_bos = bool(llm._model.add_bos_token())
    bos = int(llm.token_bos())
    # tools/perplexity/perplexity.cpp, perplexity(): n_chunk = tokens / n_ctx; the chunk's first token set to BOS
    # when add_bos; logits from position first = n_ctx/2 on; token j+1 scored from the logits at j for j in
    # first .. n_ctx-2.
    first = n_ctx // 2
    nll, count, chunks, per_token = 0.0, 0, len(ids) // n_ctx, []
    t0 = time.perf_counter()
    for c in range(chunks):
        chunk = list(ids[c * n_ctx:(c + 1) * n_ctx])
        if add_bos:
            chunk[0] = bos
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[:n_ctx], dtype=np.float64)
        rows = logits[first:n_ctx - 1]
        m = rows.max(axis=1)
        lse = m + np.log(np.exp(rows - m[:, None]).sum(axis=1))
        target = np.asarray(chunk[first + 1:n_ctx])
        token_nll = lse - rows[np.arange(len(target)), target]
        per_token += [float(x) for x in token_nll]
        nll += float(token_nll.sum())
        count += len(target)
    seconds = time.perf_counter() - t0
    print(json.dumps({"perplexity": float(np.exp(nll / count)), "mean_nll": nll / count, "predicted_tokens": count,
                      "windows": chunks, "add_bos": add_bos, "bos": bos, "seconds": seconds, "load_seconds": load_s,
                      "file_bytes": os.path.getsize(args.gguf), "llama_cpp_python": llama_cpp.__version__,
                      "nll": per_token}))


# ---------------------------------------------------------------------------------------------------------------
# The driver.

def llama_files(threads, previous):
    """F32 from the Q4_1 file, then every other type from that F32 file (llama.cpp's quantize API each time). A file
    kept from an earlier run keeps the fallbacks that run's JSON (`previous`) recorded for it, if the bytes match."""
    stem = os.path.basename(MODEL).split(".")[0]
    f32 = os.path.join(ROOT, "models", f"{stem}.llamacpp-F32.gguf")
    files = {"F32": {"path": f32, "from": os.path.relpath(MODEL, ROOT),
                     "fallbacks": llama_cpp_quantize(MODEL, f32, "F32", threads)}}
    for t in LLAMA_TYPES[1:]:
        out = os.path.join(ROOT, "models", f"{stem}.llamacpp-F32-{t}.gguf")
        files[t] = {"path": out, "from": os.path.relpath(f32, ROOT),
                    "fallbacks": llama_cpp_quantize(f32, out, t, threads)}
    for t, f in files.items():
        f["bytes"] = os.path.getsize(f["path"])
        if f["fallbacks"] is None:
            p = previous.get("llama_cpp", {}).get("files", {}).get(t, {})
            f["fallbacks"] = p["fallbacks"] if p.get("bytes") == f["bytes"] and isinstance(p.get("fallbacks"), list) \
                else "file kept from an earlier run (its quantize log is not here)"
    return files


def quantserve_run(binary, model, flags, ids_path, args, save_ids=None, text=None):
    nll_path = ids_path + ".nll.json"
    cmd = [binary, "perplexity", "--model", model, "--device", "cpu", "--threads", str(args.threads), "--method",
           "llama.cpp", "--context", str(args.context), "--json", "--save-nll", nll_path] + flags
    cmd += ["--file", text, "--max-tokens", str(args.tokens), "--save-ids", save_ids] if save_ids else \
        ["--ids-file", ids_path]
    before = load_average()
    r = json.loads(run(cmd))
    return {"perplexity": r["perplexity"], "mean_nll": r["mean_nll"], "predicted_tokens": r["predicted_tokens"],
            "windows": r["windows"], "chunk_first_token": r.get("chunk_first_token"),
            "weight_bytes": r["weight_bytes"], "group_size": r.get("group_size"), "seconds": r["seconds"],
            "load_average_before": before, "nll": json.load(open(nll_path))}


def paired_change(nll, base):
    """A row's perplexity change against its engine's fp32, position by position: exp(mean Δ) - 1, and its standard
    error by the delta method (exp(mean Δ) x the per-position differences' deviation / sqrt(n))."""
    assert len(nll) == len(base), (len(nll), len(base))
    d = [a - b for a, b in zip(nll, base)]
    mean = sum(d) / len(d)
    var = sum((x - mean) ** 2 for x in d) / (len(d) - 1)
    return math.expm1(mean), math.exp(mean) * math.sqrt(var / len(d))


def llama_run(gguf, ids_path, args):
    before = load_average()
    out = run([sys.executable, os.path.abspath(__file__), "--worker", "--gguf", gguf, "--ids", ids_path,
               "--context", str(args.context), "--threads", str(args.threads)])
    r = json.loads(out.strip().splitlines()[-1])
    r["load_average_before"] = before
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=2048, help="the first N tokens of each text")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("-o", "--output", default=OUT)
    ap.add_argument("--rows", help="semicolon-separated quantserve rows to run (labels hold commas; default: all; fp32 "
                                   "is always run)")
    ap.add_argument("--llama-types", default=",".join(LLAMA_TYPES),
                    help="comma-separated llama.cpp types (default: all; F32 is always run)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--gguf", help=argparse.SUPPRESS)
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return llama_worker(args)

    binary = find_binary(None if args.binary is None else args.binary)
    # Each engine's fp32 first: the other rows' Δ is against it.
    wanted = None if args.rows is None else {"fp32", *(r.strip() for r in args.rows.split(";"))}
    unknown = (wanted or set()) - set(QUANTSERVE)
    assert not unknown, f"unknown --rows {sorted(unknown)}; rows: {list(QUANTSERVE)}"
    rows_run = {k: v for k, v in QUANTSERVE.items() if wanted is None or k in wanted}
    types_run = ["F32"] + [t for t in args.llama_types.split(",") if t != "F32"]
    assert set(types_run) <= set(LLAMA_TYPES), f"--llama-types: one of {LLAMA_TYPES}"
    started, t_start = load_average(), time.time()
    previous = json.load(open(args.output)) if os.path.exists(args.output) else {}
    files = llama_files(args.threads, previous)
    texts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for text in TEXTS:
            name = os.path.basename(text)
            ids_path = os.path.join(tmp, f"{name}.ids.json")
            rows = {"quantserve": {}, "llama.cpp": {}}
            for label, (source, flags) in rows_run.items():
                first = not rows["quantserve"]
                model = MODEL if source == "source" else files[source]["path"]
                rows["quantserve"][label] = quantserve_run(binary, model, flags, ids_path, args,
                                                           save_ids=ids_path if first else None, text=text)
                print(f"{name:9s} quantserve {label:27s} {rows['quantserve'][label]['perplexity']:.4f}", flush=True)
            ids = json.load(open(ids_path))
            for t in types_run:
                rows["llama.cpp"][t] = llama_run(files[t]["path"], ids_path, args)
                print(f"{name:9s} llama.cpp  {t:27s} {rows['llama.cpp'][t]['perplexity']:.4f}", flush=True)
            # Both engines must have scored the same positions with the same first token in each chunk.
            qs_first = rows["quantserve"]["fp32"]["chunk_first_token"]
            lc = rows["llama.cpp"]["F32"]
            lc_first = lc["bos"] if lc["add_bos"] else None
            assert qs_first == lc_first, f"chunk first token: quantserve {qs_first}, llama.cpp {lc_first}"
            counts = {r["predicted_tokens"] for e in rows.values() for r in e.values()}
            assert len(counts) == 1, f"{name}: the engines scored different numbers of tokens: {counts}"
            # Each row's change against its engine's fp32 (paired per position, with its standard error); the
            # per-position NLLs are not kept in the JSON.
            for engine, base in (("quantserve", "fp32"), ("llama.cpp", "F32")):
                base_nll = rows[engine][base]["nll"]
                for r in rows[engine].values():
                    r["change_vs_own_fp32"] = r["perplexity"] / rows[engine][base]["perplexity"] - 1
                    _, r["change_stderr"] = paired_change(r["nll"], base_nll)
            for engine in rows.values():
                for r in engine.values():
                    del r["nll"]
            texts[name] = {"path": text, "tokens": len(ids), "predicted_tokens": counts.pop(),
                           "chunk_first_token": qs_first, "first_ids": ids[:8], **rows}

    summary = []
    for engine, labels in (("quantserve", list(rows_run)), ("llama.cpp", types_run)):
        for label in labels:
            per = {n: {"perplexity": t[engine][label]["perplexity"],
                       "change_vs_own_fp32": t[engine][label]["change_vs_own_fp32"],
                       "change_stderr": t[engine][label]["change_stderr"]} for n, t in texts.items()}
            summary.append({"engine": engine, "precision": label, "texts": per,
                            "mean_change_vs_own_fp32": sum(p["change_vs_own_fp32"] for p in per.values()) / len(per)})
    fp32_gap = {n: t["quantserve"]["fp32"]["perplexity"] / t["llama.cpp"]["F32"]["perplexity"] - 1
                for n, t in texts.items()}
    import llama_cpp
    out = {
        "tool": "bench/llamacpp_perplexity.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine_info(args.threads),
        "model": os.path.relpath(MODEL, ROOT),
        "method": f"llama.cpp's perplexity tool: non-overlapping chunks of {args.context} tokens, BOS first when the "
                  "vocabulary adds one, the second half of each chunk scored (context/2 + 1 .. context - 1), the "
                  "remainder dropped; the same ids (quantserve's tokenization, --save-ids) for every row",
        "tokens_per_text": args.tokens, "context": args.context,
        "llama_cpp": {"version": f"llama-cpp-python {llama_cpp.__version__}", "logits_all": True,
                      "files": {t: {"path": os.path.relpath(f["path"], ROOT), "from": f["from"], "bytes": f["bytes"],
                                    "fallbacks": f["fallbacks"]} for t, f in files.items()}},
        "quantserve": {label: {"model": os.path.relpath(MODEL if source == "source" else files[source]["path"], ROOT),
                               "flags": " ".join(flags)} for label, (source, flags) in rows_run.items()},
        "fp32_quantserve_over_llama_cpp_f32": fp32_gap,
        "load_average_start": started, "load_average_end": load_average(), "seconds": time.time() - t_start,
        "summary": summary,
        "texts": texts,
    }
    write_results(args.output, out)
    print(f"\n{'engine':10s} {'precision':27s} " + " ".join(f"{n:>17s}" for n in texts) + f" {'mean Δ':>8s}")
    for row in summary:
        cells = " ".join(f"{p['perplexity']:8.4f} {100 * p['change_vs_own_fp32']:+7.3f}% ±{100 * p['change_stderr']:.3f}"
                         for p in row["texts"].values())
        print(f"{row['engine']:10s} {row['precision']:27s} {cells} {100 * row['mean_change_vs_own_fp32']:+7.3f}%")


if __name__ == "__main__":
    main()
