#!/usr/bin/env python3
"""Quantization quality report: every precision against fp32, for the default model and the fixtures.

For each model (the default SmolLM2-135M-Instruct GGUF and the GPT-2-, NeoX- and Llama-shaped fixtures) and
each precision, with the built `quantserve` binary only (no torch):
  - weight bytes and per-tensor quantization error   `quantserve inspect --json --tensors`
  - perplexity, its change against fp32, top-1 agreement with fp32 and mean KL(fp32 || precision) over the
    scored positions of the text                    `quantserve perplexity --compare-to fp32 --json`
  - greedy continuations of the seeds' prompts       `quantserve generate --raw -q -t 0 -n 24`
and writes bench/results/quality_<model>.json. Then (or with --render-only, from the committed JSON alone) it
generates docs/QUANTIZATION.md and the plots docs/img/perplexity_by_precision.png and docs/img/layer_error.png.
The issue-13 section is rendered from figures other scripts measure: bench/results/quality_vs_llamacpp.json
(bench/llamacpp_perplexity.py: llama.cpp's types and quantserve's precisions on the same ids, llama.cpp's method),
int8_group_size.json (bench/int8_group_size.py), int8_smooth_search.json, int4_weight_only_quiet.json and
int4_weight_only_vs_int8_default.json (bench/int4_weight_only.py).

Texts: the default model is scored on the first --tokens tokens of /usr/share/common-licenses/GPL-3 (windows of
--context, stride --stride); int8-smooth calibrates on a different text (its default,
/usr/share/common-licenses/Apache-2.0, first 512 tokens), so the scored text is held out. The fixtures are
scored on their reference.json ids (ppl_ids, non-overlapping windows of ppl_window), the text transformers'
perplexity was computed on.

Usage:
  python3 bench/quality_report.py [--binary build/server/quantserve] [--models default,gpt2,gpt_neox,llama]
  python3 bench/quality_report.py --render-only
  python3 bench/quality_report.py --add --precisions int4-weight-only   # measure one precision (and fp32) and
                                     # merge it into the committed JSON, keeping the others' figures
"""
import argparse
import datetime
import glob
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from bench_common import ROOT, find_binary, machine_info, load_average, git_commit, run  # noqa: E402
RESULTS = os.path.join(ROOT, "bench", "results")
DOC = os.path.join(ROOT, "docs", "QUANTIZATION.md")
IMG = os.path.join(ROOT, "docs", "img")
PRECISIONS = ["fp32", "fp16", "bf16", "int8", "int8-weight-only", "int8-naive", "int8-mixed", "int8-smooth",
              "int4-weight-only"]
PROMPTS = ["The quick brown fox jumped over the", "The rain in Spain falls", "What comes up must"]
FIXTURES = ["gpt2", "gpt_neox", "llama"]
# Real models: key -> (file under models/, label). "default" is also the one the targets are checked on.
REAL_MODELS = {"default": ("SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct (GGUF Q4_1 → fp32)"),
               "gemma3-270m": ("gemma-3-270m-q4_k_m.gguf", "Gemma 3 270M (GGUF Q4_K_M → fp32; setup.sh --extra-models)")}
DEFAULT_TEXT = "/usr/share/common-licenses/GPL-3"
# Targets from issue 6 (and issue 13's for int4-weight-only on a Q4 source: the source's own perplexity), as the
# largest allowed relative perplexity change against fp32 (default model).
TARGETS = {"fp16": 0.001, "bf16": 0.001, "int8-weight-only": 0.005, "int8-mixed": 0.02, "int8-smooth": 0.02,
           "int4-weight-only": 0.0001}


def run_command(cmd, parse_json=True):
    out = run(cmd)
    return json.loads(out) if parse_json else out


def model_spec(key, args):
    """(path, perplexity arguments, description of the text) for a model key."""
    if key in REAL_MODELS:
        path = os.path.join(ROOT, "models", REAL_MODELS[key][0])
        return path, ["--file", args.text, "--max-tokens", str(args.tokens), "--context", str(args.context),
                      "--stride", str(args.stride)], \
            {"text": args.text, "tokens": args.tokens, "context": args.context, "stride": args.stride}
    d = os.path.join(ROOT, "tests", "fixtures", "models", key)
    ref = json.load(open(os.path.join(d, "reference.json")))
    fd, ids_path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(ref["ppl_ids"], f)
    w = str(ref["ppl_window"])
    return d, ["--ids-file", ids_path, "--context", w, "--stride", w], \
        {"text": "reference.json ppl_ids (the start of GPL-3)", "tokens": len(ref["ppl_ids"]),
         "context": ref["ppl_window"], "stride": ref["ppl_window"], "transformers_perplexity": ref["perplexity"]}


def measure(binary, key, args):
    path, ppl_args, text = model_spec(key, args)
    th = ["--threads", str(args.threads)] if args.threads else []
    started = time.time()
    load_before = load_average()
    out = {"model_key": key, "model": os.path.relpath(path, ROOT), "commit": git_commit(),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine_info(args.threads), "load_average_start": load_before, "text": text,
           "calibration": "int8-smooth: first 512 tokens of $QUANTSERVE_CALIBRATION_FILE or "
                          "/usr/share/common-licenses/Apache-2.0, alpha 0.5",
           "prompts": PROMPTS, "precisions": {}}
    print(f"[{key}] inspect", flush=True)
    # --group-size 0: this report's int8-weight-only rows are one scale per row (the grouped ones come from
    # int8_group_size.json and llamacpp_perplexity.json); the option changes int8-weight-only only.
    insp = run_command([binary, "inspect", "--model", path, "--precisions", ",".join(args.precisions), "--json",
                        "--group-size", "0",
                "--tensors"] + th)
    out["architecture"] = insp.get("architecture")
    for p in insp["precisions"]:
        out["precisions"][p["precision"]] = {
            "weight_bytes": p["weight_bytes"], "fp32_bytes": p["fp32_bytes"], "bytes_by_class": p["bytes_by_class"],
            "mean_rel_frobenius_error": p["mean_rel_frobenius_error"],
            "max_rel_frobenius_error": p["max_rel_frobenius_error"], "load_seconds": p["load_seconds"],
            "tensors": [{"name": t["name"], "class": t["class"], "rel_frobenius_error": t["rel_frobenius_error"]}
                        for t in p["tensors"] if t["precision"] != "fp32" or p["precision"] == "fp32"]}
    for prec in args.precisions:
        print(f"[{key}] perplexity {prec}", flush=True)
        cmd = [binary, "perplexity", "--model", path, "--precision", prec, "--group-size", "0", "--json"] + ppl_args + th
        if prec != "fp32":
            cmd += ["--compare-to", "fp32"]
        r = run_command(cmd)
        e = out["precisions"].setdefault(prec, {})
        e.update({"perplexity": r["perplexity"], "mean_nll": r["mean_nll"], "predicted_tokens": r["predicted_tokens"],
                  "perplexity_seconds": r["seconds"]})
        if prec == "fp32":
            e.update({"top1_agreement": 1.0, "mean_kl": 0.0, "max_kl": 0.0})
        else:
            c = r["compare_to"]
            e.update({"top1_agreement": c["top1_agreement"], "mean_kl": c["mean_kl"], "max_kl": c["max_kl"],
                      "fp32_perplexity_same_run": c["perplexity"]})
    fp32 = out["precisions"]["fp32"]["perplexity"]
    for prec, e in out["precisions"].items():
        e["perplexity_change"] = e["perplexity"] / fp32 - 1.0
    for prec in args.precisions:
        gens = []
        for prompt in PROMPTS:
            print(f"[{key}] generate {prec}: {prompt}", flush=True)
            gens.append(run_command([binary, "generate", "--model", path, "--precision", prec, "--group-size", "0", "--raw", "-q", "-t", "0",
                             "-n", "24", prompt] + th, parse_json=False))
        out["precisions"][prec]["generations"] = gens
    if ppl_args[0] == "--ids-file":
        os.unlink(ppl_args[1])
    out["load_average_end"] = load_average()
    out["seconds"] = time.time() - started
    name = "smollm2-135m" if key == "default" else key
    path = os.path.join(RESULTS, f"quality_{name}.json")
    if args.add and os.path.exists(path):
        # The added precisions' figures (their change against the fp32 of this run) into the committed ones; the
        # header (commit, load) stays the original run's, and `added` says when and where each addition ran.
        merged = json.load(open(path))
        for prec in args.precisions:
            if prec != "fp32":
                merged["precisions"][prec] = out["precisions"][prec]
                merged.setdefault("added", {})[prec] = {
                    "commit": out["commit"], "date": out["date"], "load_average_start": out["load_average_start"],
                    "load_average_end": out["load_average_end"],
                    "fp32_perplexity_this_run": out["precisions"]["fp32"]["perplexity"]}
        out = merged
    with open(path, "w") as f:
        json.dump(out, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Rendering: docs/QUANTIZATION.md and the plots, from bench/results/quality_*.json alone.

def load_results():
    res = {}
    for path in sorted(glob.glob(os.path.join(RESULTS, "quality_*.json"))):
        r = json.load(open(path))
        if "model_key" in r:   # quality_vs_llamacpp.json is the issue-13 section's, not a model's table
            res[r["model_key"]] = r
    order = list(REAL_MODELS) + FIXTURES
    return [res[k] for k in order if k in res] + [v for k, v in res.items() if k not in order]


def label(r):
    return REAL_MODELS[r["model_key"]][1] if r["model_key"] in REAL_MODELS else \
        f"fixture {r['model_key']} (random init)"


def plot_perplexity(results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    precs = [p for p in PRECISIONS if p != "fp32"]
    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.8 / max(1, len(results))
    for i, r in enumerate(results):
        ys = [100 * r["precisions"].get(p, {}).get("perplexity_change", float("nan")) for p in precs]
        xs = [j + (i - (len(results) - 1) / 2) * width for j in range(len(precs))]
        ax.bar(xs, ys, width, label=label(r))
    ax.set_yscale("symlog", linthresh=0.1)
    ax.axhline(0, color="black", lw=0.8)
    for p, t in TARGETS.items():
        j = precs.index(p)
        ax.plot([j - 0.45, j + 0.45], [100 * t, 100 * t], color="red", lw=1.5, ls="--")
    ax.set_xticks(range(len(precs)))
    ax.set_xticklabels(precs, rotation=20)
    ax.set_ylabel("perplexity change vs fp32 (%, symlog)")
    ax.set_title("Perplexity by precision (red dashes: issue 6 targets, default model)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(IMG, exist_ok=True)
    fig.savefig(os.path.join(IMG, "perplexity_by_precision.png"), dpi=110)
    plt.close(fig)


def layer_errors(r, prec):
    """Per layer: mean relative Frobenius error of that layer's linears (attention + mlp)."""
    per = {}
    for t in r["precisions"].get(prec, {}).get("tensors", []):
        m = re.search(r"\.(\d+)\.", t["name"])
        if m and t["class"] in ("attention", "mlp"):
            per.setdefault(int(m.group(1)), []).append(t["rel_frobenius_error"])
    return sorted((k, sum(v) / len(v)) for k, v in per.items())


def plot_layer_error(results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    # int8, int8-weight-only and int8-mixed quantize the weights identically (per-channel absmax).
    series = [("fp16", "fp16"), ("bf16", "bf16"), ("int8", "int8 / int8-weight-only / int8-mixed"),
              ("int8-naive", "int8-naive"), ("int8-smooth", "int8-smooth (smoothed weights)")]
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4), squeeze=False)
    for ax, r in zip(axes[0], results):
        for prec, name in series:
            pts = layer_errors(r, prec)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=name)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        ax.set_title(label(r), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("relative Frobenius error of the layer's weights")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(IMG, exist_ok=True)
    fig.savefig(os.path.join(IMG, "layer_error.png"), dpi=110)
    plt.close(fig)


def mb(x):
    return f"{x / 1e6:.1f} MB" if x >= 1e6 else f"{x / 1e3:.1f} kB"


def ppl(x):
    return f"{x:.4f}" if x < 1e4 else f"{x:.5g}"


def render(results):
    plot_perplexity(results)
    plot_layer_error(results)
    L = []
    w = L.append
    w("# Quantization quality\n")
    w("<!-- Generated by bench/quality_report.py from bench/results/quality_*.json; edit the script, not this "
      "file. -->\n")
    w("Every precision quantserve loads, measured against its own fp32 on the same weights, with the CPU "
      "backend. Reproduce with `python3 bench/quality_report.py` (measures, writes the JSON, renders this file) or "
      "`--render-only` (renders from the committed JSON).\n")
    w("- **Perplexity**: `quantserve perplexity` (sliding windows as in Hugging Face's perplexity guide). Its fp32 "
      "agrees with transformers within 0.1% on these weights and texts: see `tools/check_perplexity.py` and "
      "`bench/results/perplexity_agreement.json`. The section against llama.cpp scores llama.cpp's way instead "
      "(`--method llama.cpp`: non-overlapping chunks, the second half of each scored), on the same ids in both "
      "engines.")
    w("- **Top-1 agreement / mean KL**: at every scored position, whether the precision's most likely next token "
      "is fp32's, and KL(p_fp32 ‖ p_precision) in nats, averaged (`quantserve perplexity --compare-to fp32`).")
    w("- **Standard errors**: `quantserve perplexity` gives each perplexity ± its standard error (the per-token "
      "NLLs' deviation over √n, times the perplexity: what llama.cpp's tool prints), and with `--compare-to` the "
      "change ± its *paired* error (the per-position NLL differences' deviation over √n). The paired error is the "
      "one to read against a target" + stderr_summary())
    w("- **Weight bytes**: everything resident for the weights (`quantserve inspect`); in the int8 rows of the "
      "tables below the embedding / tied LM head stayed fp16 (56.6 MB of the default model's int8 total), which is "
      "now the default per row only: in groups it is quantized too (its own section below).")
    w("- **int8-smooth** calibrates on the first 512 tokens of `/usr/share/common-licenses/Apache-2.0` (not the "
      "scored text), α = 0.5, smoothing the linears that follow a norm (QKV, MLP-in / gate_up) and, through "
      "up_proj's rows at α = 0.6, down_proj (since issue 13 item 2; the tables were measured before it).\n")
    for r in results:
        t = r["text"]
        w(f"## {label(r)}\n")
        w(f"`{r['model']}`, {r.get('architecture', '')}; text: {t['text']}, {t['tokens']} tokens, windows of "
          f"{t['context']}, stride {t['stride']}. Measured at commit `{r['commit'][:10]}` on "
          f"{r['machine'].get('cpu', r['machine']['platform'])}, {r['machine']['threads']} threads, 1-minute load "
          f"average {r['load_average_start'][0]:.2f} at start, {r['load_average_end'][0]:.2f} at the end (2 cores "
          "shared with other work: perplexity seconds are not benchmarks).\n")
        for p, a in r.get("added", {}).items():
            w(f"{p} added at commit `{a['commit'][:10]}` ({a['date']}, load average {a['load_average_start'][0]:.2f} "
              f"→ {a['load_average_end'][0]:.2f}); its Δ is against that run's fp32 ({ppl(a['fp32_perplexity_this_run'])}).\n")
        if "transformers_perplexity" in t:
            w(f"transformers fp32 perplexity on these ids: {t['transformers_perplexity']:.6g}. The fixtures are "
              "random-initialised (hence the huge perplexities): their rows show relative behaviour only.\n")
        w("| precision | weight bytes | vs fp32 | perplexity | Δ vs fp32 | target | top-1 agreement | mean KL | "
          "max KL | mean relF (weights) |")
        w("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|")
        fp32b = r["precisions"]["fp32"]["weight_bytes"]
        for p in PRECISIONS:
            e = r["precisions"].get(p)
            if not e:
                continue
            target = ""
            if p in TARGETS and r["model_key"] == "default":
                ok = e["perplexity_change"] <= TARGETS[p]
                target = f"≤ +{100 * TARGETS[p]:g}% {'✅' if ok else '❌ missed by %.2f pt' % (100 * (e['perplexity_change'] - TARGETS[p]))}"
            change = 100 * e["perplexity_change"]
            change_text = f"{change:+.2f}%" if abs(change) >= 0.01 or change == 0 else f"{change:+.1e}%"
            w(f"| {p} | {mb(e['weight_bytes'])} | {fp32b / e['weight_bytes']:.2f}× | {ppl(e['perplexity'])} | "
              f"{change_text} | {target} | {100 * e['top1_agreement']:.2f}% | "
              f"{e['mean_kl']:.4f} | {e['max_kl']:.3f} | {e['mean_rel_frobenius_error']:.2e} |")
        w("")
    w("![perplexity by precision](img/perplexity_by_precision.png)\n")
    w("![per-layer weight error](img/layer_error.png)\n")
    w("Per-layer error: the mean relative Frobenius error ‖W − Q(W)‖/‖W‖ of each layer's linears. int8, "
      "int8-weight-only and int8-mixed share one weight quantization (symmetric per-output-channel absmax); they "
      "differ in how activations are handled. int8-smooth's error is against the *smoothed* weights.\n")

    w("## Greedy continuations\n")
    w("`quantserve generate --raw -q -t 0 -n 24 PROMPT` in each precision (the seeds' prompts).\n")
    for r in results:
        if r["model_key"] not in REAL_MODELS:
            continue
        w(f"### {label(r)}\n")
        for i, prompt in enumerate(r["prompts"]):
            w(f"**{prompt}**\n")
            w("| precision | continuation |")
            w("|---|---|")
            base = r["precisions"]["fp32"]["generations"][i]
            for p in PRECISIONS:
                e = r["precisions"].get(p)
                if not e or "generations" not in e:
                    continue
                g = e["generations"][i]
                same = " (= fp32)" if g == base and p != "fp32" else ""
                cell = g.replace("|", "\\|").replace("\n", "⏎")
                w(f"| {p}{same} | {cell} |")
            w("")
    fx = [r for r in results if r["model_key"] not in REAL_MODELS]
    if fx:
        w("Fixtures (random weights, so the text is noise): prompts whose 24 greedy tokens are identical to fp32's.\n")
        w("| precision | " + " | ".join(r["model_key"] for r in fx) + " |")
        w("|---|" + "---:|" * len(fx))
        for p in PRECISIONS[1:]:
            cells = []
            for r in fx:
                e = r["precisions"].get(p, {})
                base = r["precisions"]["fp32"].get("generations", [])
                g = e.get("generations", [])
                cells.append(f"{sum(a == b for a, b in zip(g, base))}/{len(base)}" if g else "")
            w(f"| {p} | " + " | ".join(cells) + " |")
        w("")

    render_issue13(w)

    w("## Published anchors\n")
    w("- LLM.int8() (Dettmers et al. 2022, Table 1, C4 perplexity, 125M model): fp32 25.65; per-tensor absmax "
      "int8 87.76; vector-wise absmax W8A8 35.84; with outlier features kept in fp16 (LLM.int8()) 25.83.")
    w("- SmoothQuant (Xiao et al. 2023): W8A8 with per-token activations after smoothing within about 0.4–1.1% of "
      "fp16 perplexity (LLaMA-7B 11.51 → 11.56, OPT-175B 10.99 → 11.11).")
    w("- llama.cpp Q8_0: +0.0026 perplexity on Llama-3-8B.\n")
    w("Those are larger models on other texts; the comparison is of the *relative* costs, which shrink with model "
      "size for W8A8 (the outlier features that break naive int8 emerge at scale, LLM.int8() §4).\n")

    w("## Targets (issue 6) and notes\n")
    d = next((r for r in results if r["model_key"] == "default"), None)
    if d:
        for p, tgt in TARGETS.items():
            e = d["precisions"].get(p)
            if not e:
                continue
            ch = e["perplexity_change"]
            verdict = "met" if ch <= tgt else f"**missed by {100 * (ch - tgt):.2f} percentage points**"
            ch_text = f"{100 * ch:+.2f}%" if abs(100 * ch) >= 0.01 or ch == 0 else f"{100 * ch:+.1e}%"
            w(f"- {p}: {ch_text} against a target of +{100 * tgt:g}%: {verdict}.")
        w("")
        w(NOTES)
    baseline = os.path.join(RESULTS, "cpu_pytorch_baseline.json")
    if os.path.exists(baseline):
        b = json.load(open(baseline))
        w("## Against the seeds' method (PyTorch quantize_dynamic)\n")
        w("From `bench/pytorch_baseline.py` (`bench/results/cpu_pytorch_baseline.json`), same GGUF weights, same "
          f"text and windows, same run; {b.get('machine', {}).get('cpu', '')}, threads: {b.get('threads')}, load "
          f"average {b.get('load_average_start')} → {b.get('load_average_end')}.\n")
        w("| engine | precision | perplexity | decode tok/s (batch 1) | prefill tok/s (128-token prompt) | memory |")
        w("|---|---|---:|---:|---:|---:|")
        for row in b.get("rows", []):
            w(f"| {row['engine']} | {row['precision']} | {row['perplexity']:.4f} | "
              f"{row['decode_tokens_per_second']:.1f} | {row['prefill_tokens_per_second']:.0f} | "
              f"{row['memory_note']} |")
        w("")
        sm = b.get("summary", {})
        if sm:
            w(f"- quantserve int8 decodes {sm['quantserve_int8_vs_quantize_dynamic_decode_speedup']:.1f}× as fast as "
              f"quantize_dynamic at batch 1 (int8-weight-only "
              f"{sm['quantserve_int8_weight_only_vs_quantize_dynamic_decode_speedup']:.1f}×): target "
              f"{'met' if sm['target_quantserve_int8_faster_than_quantize_dynamic'] else '**missed**'}.")
            w(f"- Perplexity change against the same engine's fp32: quantize_dynamic "
              f"{100 * sm['quantize_dynamic_perplexity_change']:+.1f}%, quantserve int8 "
              f"{100 * sm['quantserve_int8_perplexity_change']:+.2f}%, int8-weight-only "
              f"{100 * sm['quantserve_int8_weight_only_perplexity_change']:+.2f}%. The two fp32 engines agree to "
              f"{100 * abs(sm['fp32_perplexity_relative_difference']):.1e}%.")
            w("- quantize_dynamic quantizes every nn.Linear, the tied 49152×576 LM head included, with one weight "
              "scale per tensor and one activation scale per *tensor* (the whole window of 512 tokens), so a few "
              "outlier tokens and channels set the scale for everything: that is where its perplexity goes. "
              "quantserve keeps the embedding / LM head in fp16 and scales weights per output channel and "
              "activations per token.")
            w("- Memory: weight bytes resident (PyTorch: the serialized state_dict, packed int8 included) and the "
              "process's peak RSS (includes loading: PyTorch's GGUF path dequantizes through numpy; quantserve "
              "holds one fp32 tensor at a time besides the result).")
            w("- Prefill is another matter: quantize_dynamic's int8 GEMM (fbgemm) prefills a 128-token prompt faster "
              "than quantserve's W8A8 path, likely because of (besides oneDNN u8s8s32 itself) quantserve's unfused per-token quantize / +128 "
              "shift / dequantize passes in scalar C++; fusing those passes is the obvious next step.")
            w(f"- Threads: {b.get('threads')} for both engines. On this 2-core machine shared with other "
              "engineers' builds, two OpenMP threads stall whenever a core is taken, which made batch-1 decode "
              "timings swing by 10× between runs; one thread gives repeatable numbers.\n")
    os.makedirs(os.path.dirname(DOC), exist_ok=True)
    with open(DOC, "w") as f:
        f.write("\n".join(L) + "\n")
    print(f"wrote {os.path.relpath(DOC, ROOT)}, docs/img/perplexity_by_precision.png, docs/img/layer_error.png")


# ----------------------------------------------------------------------------------------------------------------
# Issue 13: against llama.cpp on the same weights and ids, the group-size and alpha-search variants, the targets.

# Issue 13's targets on the default model, as the largest allowed perplexity change against the engine's own fp32 on
# every one of the three texts (int4 from a Q4 source: the source's own perplexity, |Δ|).
ISSUE13_TARGETS = [("int8-weight-only", 0.0015), ("int8-smooth", 0.010), ("int8", 0.025),
                   ("int4-weight-only", 0.0001)]


# Why a target is missed (static: the figures beside them are generated).
ISSUE13_WHY = {
    "int8-weight-only": "One int8 scale per output row re-rounds weights that come from Q4_1 blocks of 32 (see "
                        "'Why the numbers look as they do' below); group 32 is the fix.",
    "int8-weight-only, group 32": "Group 32 removes the re-rounding ({kl}), but what is left moves "
                                  "the perplexity by a few tenths of a percent either way from text to text "
                                  "(the table above): on a 135M model the target sits inside the scatter of "
                                  "any 8-bit rounding, Q8_0's own included.",
    "int8-smooth": "Per row and token (--group-size 0); by groups of 32 (the next line, the CPU's default) the "
                   "same recipe meets the target. The recipe: QKV and gate/up smoothed after their norms, down_proj "
                   "smoothed at α 0.6 with its factors folded into up_proj's rows (issue 13 item 2). Per row its "
                   "sliding-window Δ measured +0.080% / +0.776% / +0.149% (`int8_smooth_folds.json`, an earlier "
                   "build): the worst text moves by about its standard error with any change of the arithmetic.",
    "int8": "One activation scale per token leaves SmolLM2's few large residual channels most of the int8 range; "
            "llama.cpp's Q8_0 quantizes its activations too, but in blocks of 32 (one scale per 32 channels), "
            "which confines an outlier to its block: groups of 32 (the next line, the CPU's default) do that. "
            "An opt-in clip search of the per-row weight scales "
            "(`QUANTSERVE_INT8_CLIP=search`, weight MSE over {1, 0.95, ..., 0.8} of each row's absmax) takes the "
            "sliding-window mean from +3.542% to +3.297% (`bench/results/int8_smooth_folds.json`): not the default.",
}


def full_text_table(w, g, label=lambda engine, precision: precision):
    """A bench/llamacpp_perplexity.py run's rows but the fp32s: weights and each text's Δ ± its paired error."""
    names = list(g["texts"])
    w("| engine | precision | weights | " + " | ".join(f"Δ {n}" for n in names) + " | mean Δ |")
    w("|---|---|---:|" + "---:|" * (len(names) + 1))
    first = g["texts"][names[0]]
    for row in g["summary"]:
        e, p = row["engine"], row["precision"]
        if p in ("fp32", "F32"):
            continue
        size = (mb(first["quantserve"][p]["weight_bytes"]) if e == "quantserve"
                else f"{mb(g['llama_cpp']['files'][p]['bytes'])} (file)")
        w(f"| {e} | {label(e, p)} | {size} | " +
          " | ".join(pct(row["texts"][n]["change_vs_own_fp32"], 3) + stderr_cell(row["texts"][n]) for n in names) +
          f" | **{pct(row['mean_change_vs_own_fp32'], 3)}** |")
    w("")


def render_w8a8_groups(w):
    """W8A8 by groups of 32 against per row and token, and llama.cpp's Q8_0, on all of each text."""
    g = load_json("quality_w8a8_groups_full_texts.json")
    if not g:
        return
    m = g["machine"]
    counts = ", ".join(f"{n} {t['predicted_tokens']:,}" for n, t in g["texts"].items())
    names = list(g["texts"])
    w("### W8A8 by groups of 32 (int8 and int8-smooth, --group-size 32: the CPU's default)\n")
    w("With `--group-size 32` int8 and int8-smooth quantize the weights as Q8_0 blocks (one fp16 scale per 32 "
      "inputs of a row) and the activations by groups of 32 as well (one scale per 32 inputs of a token), as "
      "llama.cpp multiplies Q8_0 weights by Q8_0 activations; the int32 dot of each group is scaled by both its "
      "scales before the groups are summed (`gemm_w8a8_groups_vnni`, AVX-512 VNNI). An outlier channel then "
      "coarsens only its own group's grid, not the whole token's. `--group-size auto` (the default) picks it where "
      "the CPU has VNNI and every linear's inputs are whole groups; CUDA keeps one scale per row and token "
      "(cuBLASLt's int8 GEMM has no group scales). All of each text by llama.cpp's method "
      f"(`bench/llamacpp_perplexity.py --tokens {g['tokens_per_text']}`, "
      f"`bench/results/quality_w8a8_groups_full_texts.json`, commit `{g['commit'][:10]}`, "
      f"{m.get('cpu', m['platform'])}; scored tokens: {counts}); Δ against the engine's own fp32 ± its paired "
      "standard error in points:\n")
    full_text_table(w, g)
    speed = load_json("int8_w8a8_groups_speed.json")
    b16 = load_json("int8_w8a8_groups_speed_batch16.json")
    if speed:
        d, p = speed["decode_summary"]["group_32_over_group_0"], speed["decode_summary"]["prefill"]
        w(f"Speed, int8 groups of 32 over one scale per row and token, paired in {speed['rounds']} alternated "
          f"rounds (`bench/int8_group_size.py --precision int8`, `bench/results/int8_w8a8_groups_speed.json`, "
          f"batch {speed['batch']}, {speed['prompt_tokens']}-token prompts): decode {d['median']:.3f}× "
          f"({d['min']:.2f}–{d['max']:.2f}), prefill {p['group_32_over_group_0']['median']:.3f}× "
          f"({p['group_32_over_group_0']['min']:.2f}–{p['group_32_over_group_0']['max']:.2f})" +
          (f"; batch {b16['batch']} decode {b16['decode_summary']['group_32_over_group_0']['median']:.3f}× of "
           f"{b16['rounds']} rounds ({b16['decode_summary']['group_32_over_group_0']['min']:.2f}–"
           f"{b16['decode_summary']['group_32_over_group_0']['max']:.2f}, `int8_w8a8_groups_speed_batch16.json`)"
           if b16 else "") + ".\n")


def render_int8_tables(w):
    """The embedding table and LM head quantized with the weights in groups (the default) or kept in fp16."""
    g = load_json("quality_int8_embeddings_groups.json")
    if not g:
        return
    names = list(g["texts"])
    w("### The embedding table and LM head in the int8 modes (`--quantize-embeddings`)\n")
    w("Where the weights are in groups of 32, the int8 modes quantize the embedding table and (tied) LM head too by "
      "default (`--quantize-embeddings` auto): the default model's table is Q8_0 in the file and is kept block for "
      "block, as llama.cpp's Q8_0 keeps its output tensor; per row the tables stay fp16. All of each text by "
      f"llama.cpp's method (`bench/llamacpp_perplexity.py --tokens {g['tokens_per_text']}`, "
      f"`bench/results/quality_int8_embeddings_groups.json`, commit `{g['commit'][:10]}`); Δ against the engine's "
      "own fp32 ± its paired standard error in points:\n")
    def label(engine, p):
        if engine != "quantserve":
            return p
        return p.replace(", embeddings too", ", tables quantized (the default)") if "embeddings too" in p \
            else p + ", tables fp16"
    full_text_table(w, g, label)
    exact = load_json("quality_int8_weight_only_exact_q4.json")
    if exact:
        row = next(r for r in exact["summary"] if r["precision"] == "int8-weight-only, group 32")
        w("Since then int8-weight-only in groups no longer rounds a 4-bit file's tensors again: Q4_0 blocks are Q8_0 "
          "ones exactly, and Q4_1 ones (the default model's linears) become U8Min blocks, a byte a weight with "
          "Q4_1's d and minimum (36 bytes per 32 weights, 149.7 MB for the default model). Its perplexity is then "
          "fp32's: " + " / ".join(pct(row["texts"][n]["change_vs_own_fp32"], 4) for n in exact["texts"]) +
          f" (`bench/results/quality_int8_weight_only_exact_q4.json`, commit `{exact['commit'][:10]}`).\n")
    ab = load_json("int8_tables_ab_decode128.json")
    if ab:
        d = ab["b_over_a"]["decode"]
        w(f"Speed, int8 with the tables quantized over fp16 tables, paired in {ab['rounds']} alternated rounds "
          f"(`bench/flags_ab.py`, `bench/results/int8_tables_ab_decode128.json`, batch 1, {ab['prompt_tokens']}-token "
          f"prompts): decode {d['median']:.3f}× ({d['min']:.2f}–{d['max']:.2f}), weights "
          f"{mb(ab['weight_bytes']['b'])} against {mb(ab['weight_bytes']['a'])}.\n")


def stderr_summary():
    """The paired standard errors kv_cache_quality.json measured, per precision (fp32 cache, mean over its texts)."""
    kv = load_json("kv_cache_quality.json")
    rows = [r for r in (kv or {}).get("summary", []) if "mean_change_stderr" in r and r["precision"] != "fp32"]
    if not rows:
        return "."
    tokens = next(iter(next(iter(kv["texts"].values())).values()))["fp32"]["predicted_tokens"]
    return (f": on {tokens:,} tokens of a text it is " +
            ", ".join(f"±{100 * r['mean_change_stderr']['fp32']:.3f}% for {r['precision']}" for r in rows) +
            " (`bench/results/kv_cache_quality.json`, mean over its texts).")


def stderr_cell(cell):
    """' ± e' (percentage points) when the figure has a paired standard error, else nothing."""
    e = cell.get("change_stderr")
    return "" if e is None or e == 0 else f" ± {100 * e:.2g}"


def pct(x, digits=2):
    v = 100 * x
    return f"{v:+.{digits}f}%" if abs(v) >= 10 ** -digits or v == 0 else f"{v:+.1e}%"


def load_json(name):
    path = os.path.join(RESULTS, name)
    return json.load(open(path)) if os.path.exists(path) else None


def render_kv_cache(w):
    """The KV cache's storage dtypes (issue 13 item 4, from the GPU decode issue): bench/kv_cache_quality.py."""
    kv = load_json("kv_cache_quality.json")
    if not kv:
        return
    texts = list(kv["texts"])
    dtypes = list(kv["kv_bytes_per_token"])
    m = kv["machine"]
    narrow = dtypes[1:]
    w("### KV-cache storage\n")
    w(f"`bench/kv_cache_quality.py` (`bench/results/kv_cache_quality.json`), measured at commit `{kv['commit'][:10]}` "
      f"on {m.get('cpu', m['platform'])}: each precision scored with the KV cache stored in "
      f"{', '.join(dtypes[:-1])} and {dtypes[-1]} (`quantserve perplexity --kv-cache-dtype`), each against fp32 "
      "weights with an fp32 cache on the same positions (first 2048 tokens, windows of 512, stride 256). Attention "
      "computes in fp32 whatever the storage: a narrower cache rounds each cached key and value once, as it is "
      "written (int8: one fp32 scale per token and KV head, the head's largest magnitude over 127, for K and for V). "
      "The CPU backend serves with fp16 by default (`serve --kv-cache-dtype fp32|fp16|bf16|int8`); the CUDA backend "
      "stores fp32 only for now and refuses the others at load (an fp16 cache on the GPU is the GPU decode issue's). "
      f"Bytes per token (K and V over the model's {kv['kv_shape']['num_layers']} layers × "
      f"{kv['kv_shape']['num_kv_heads']} KV heads × {kv['kv_shape']['head_dim']}): " +
      ", ".join(f"{d} {kv['kv_bytes_per_token'][d]:,} B" for d in dtypes) +
      "; at a fixed `--kv-cache-bytes` budget the cache holds " +
      ", ".join(f"{kv['kv_bytes_per_token']['fp32'] / kv['kv_bytes_per_token'][d]:.2f}× the tokens in {d}"
                for d in narrow) + " that it holds in fp32.\n")
    w("| weights | KV cache | " + " | ".join(f"Δ {t}" for t in texts) + " | mean Δ | top-1 agreement with fp32 |")
    w("|---|---|" + "---:|" * (len(texts) + 2))
    for row in kv["summary"]:
        p = row["precision"]
        for d in dtypes:
            cells = [kv["texts"][t][p][d] for t in texts]
            w(f"| {p} | {d} | " + " | ".join(f"{pct(c['change'], 3)} ± {100 * c['change_stderr']:.3f}" for c in cells) +
              f" | **{pct(row['mean_change_vs_fp32'][d], 3)}** | {100 * row['mean_top1_agreement_with_fp32'][d]:.2f}% |")
    w("")
    w("Each Δ is followed by its paired per-token standard error (`quantserve perplexity --compare-to` reports it: "
      "the spread of the per-position NLL differences over √n). Each narrower cache's own effect, scored against the "
      "same weights with an fp32 cache (`--kv-cache-dtype <d> --compare-to <the same precision>`, paired):\n")
    w("| weights | KV cache | mean Δ | worst text | mean standard error | top-1 agreement | mean KL (nats) |")
    w("|---|---|---:|---:|---:|---:|---:|")
    for row in kv["summary"]:
        for d in narrow:
            e = row["cache_effect"][d]
            w(f"| {row['precision']} | {d} | {pct(e['mean'], 4)} | ±{100 * e['max_abs']:.4f}% | "
              f"±{100 * e['mean_stderr']:.4f}% | {100 * e['mean_top1_agreement']:.2f}% | {e['mean_kl']:.6f} |")
    w("")
    summary = {r["precision"]: r for r in kv["summary"]}
    effect = {p: r["cache_effect"]["fp16"] for p, r in summary.items() if "fp16" in r["cache_effect"]}
    w8a8 = [p for p in ("int8", "int8-smooth") if p in effect]
    steady = [p for p in effect if p not in w8a8]
    if steady and w8a8:
        worst_steady = max(effect[p]["max_abs"] for p in steady)
        w(f"With weights in {', '.join(steady)} the fp16 cache moves perplexity by at most {100 * worst_steady:.3f}% "
          "and leaves the next-token distribution almost unchanged, as one rounding of each cached value should. "
          "In the W8A8 modes the same rounding moves a text's perplexity by up to " +
          " and ".join(f"{100 * effect[p]['max_abs']:.2f}% ({p})" for p in w8a8) +
          ", and the two caches' outputs disagree with each other about as much as either does with fp32 (top-1 " +
          ", ".join(f"{100 * effect[p]['mean_top1_agreement']:.1f}% for {p}" for p in w8a8) + "; compare the "
          "agreement with fp32 above). The attention is the same kernel for both storages and a run is "
          "deterministic, and the modes that keep activations in fp32 do not move, so it comes from the per-token "
          "int8 rounding of the activations: a change far below one step of the int8 grid still flips some "
          "roundings, and each flip perturbs the layers after it, where more flip (the likely reason the effect "
          "is so large here: each token's scale is set by a few outlier channels, so a step is coarse against a "
          "typical channel; not measured channel by channel). A perturbation of the input thus draws a largely "
          "new sample of the W8A8 rounding error. So a W8A8 Δ on one text of 2,047 "
          "tokens is known only to about its standard error (" +
          ", ".join(f"{p} ±{100 * summary[p]['mean_change_stderr']['fp32']:.2f}%" for p in w8a8) +
          " here), and any change to the arithmetic, even one in the last bits of fp32, can move it by that much.")
        folds = load_json("int8_smooth_folds.json")
        smooth = summary.get("int8-smooth")
        if folds and smooth:
            was = folds["variants"]["down a0.6"]["mean_change_vs_fp32"]
            w(f"That is also how to read int8-smooth's fp32-cache mean here ({pct(smooth['mean_change_vs_fp32']['fp32'], 3)}) "
              f"against `int8_smooth_folds.json`'s {pct(was, 3)} for the same recipe and windows: that figure was "
              f"measured at `{folds['commit'][:10]}`, before the merge that changed issue 12's SiLU and activation "
              "quantization code (fp32 results move by about 3e-7 relative), a perturbation of this kind. To decide "
              "a W8A8 target at 1% resolution takes several times more text than these three, or the mean over "
              "several perturbed runs.")
        w("")


def render_issue13(w):
    vs = load_json("quality_vs_llamacpp.json")
    groups = load_json("int8_group_size.json")
    smooth = load_json("int8_smooth_search.json")
    int4 = load_json("int4_weight_only_quiet.json")
    if not (vs or groups or smooth):
        return
    w("## Against llama.cpp on the same weights (issue 13)\n")
    rows = {}
    if vs:
        names = list(vs["texts"])
        m = vs["machine"]
        w(f"`bench/llamacpp_perplexity.py` (`bench/results/quality_vs_llamacpp.json`), measured at commit "
          f"`{vs['commit'][:10]}` on {m.get('cpu', m['platform'])}, {m['threads']} threads, load average "
          f"{vs['load_average_start'][0]:.2f} → {vs['load_average_end'][0]:.2f}. Both engines score the very same "
          f"token ids (quantserve's tokenization of the first {vs['tokens_per_text']} tokens of each text, "
          f"`--save-ids`) by llama.cpp's perplexity tool's method: non-overlapping chunks of {vs['context']}, the "
          f"second half of each scored ({next(iter(vs['texts'].values()))['predicted_tokens']} tokens a text), so "
          "the absolute perplexities compare across engines, and each engine's Δ is against its *own* fp32 of the "
          "same weights. quantserve runs `quantserve perplexity --method llama.cpp --ids-file`; llama.cpp runs "
          f"through {vs['llama_cpp']['version']} (logits_all) on one F32 GGUF that llama.cpp's quantize API wrote "
          "from the Q4_1 file (its blocks dequantized), and Q8_0, Q4_1 and Q4_K_M that the same API quantized "
          "from that F32 file. The absolute numbers are lower than the sliding-window tables above: every scored "
          f"token here has at least {vs['context'] // 2} tokens of context." +
          (" Each Δ is followed by its paired standard error in points (each scored position's NLL against "
           "the same position's under the engine's own fp32; `quantserve perplexity --save-nll`, and llama.cpp's "
           "logits): the Δ of a W8A8 row or of llama.cpp's 8-bit-activation types is known only to about that."
           if any("change_stderr" in c for r in vs["summary"] for c in r["texts"].values()) else "") + "\n")
        first_tokens = {t["chunk_first_token"] for t in vs["texts"].values()}
        w("Each chunk's first token: " + ("kept (the vocabulary adds no BOS, for llama.cpp as for quantserve)."
                                           if first_tokens == {None} else f"BOS (id {first_tokens}).") + "\n")
        w("| engine | precision / llama.cpp type | weights | " + " | ".join(f"Δ {n}" for n in names) +
          " | mean Δ | " + " | ".join(f"perplexity {n}" for n in names) + " |")
        w("|---|---|---:|" + "---:|" * (2 * len(names) + 1))
        first_text = vs["texts"][names[0]]
        for row in vs["summary"]:
            e, p = row["engine"], row["precision"]
            if e == "quantserve":
                size = mb(first_text["quantserve"][p]["weight_bytes"])
            else:
                size = f"{mb(vs['llama_cpp']['files'][p]['bytes'])} (file)"
            w(f"| {e} | {p} | {size} | " +
              " | ".join(pct(row["texts"][n]["change_vs_own_fp32"], 3) + stderr_cell(row["texts"][n]) for n in names) +
              f" | **{pct(row['mean_change_vs_own_fp32'], 3)}** | " +
              " | ".join(f"{row['texts'][n]['perplexity']:.4f}" for n in names) + " |")
            rows[(e, p)] = row
        w("")
        gap = vs.get("fp32_quantserve_over_llama_cpp_f32", {})
        if gap:
            w("- quantserve fp32 against llama.cpp F32 on the same ids: " +
              ", ".join(f"{n} {pct(g, 4)}" for n, g in gap.items()) +
              " (the two engines' float arithmetic; the Δ columns compare each with itself).")
        logged = [f"{t}: `{'; '.join(f['fallbacks'])}`" for t, f in vs["llama_cpp"]["files"].items()
                  if isinstance(f["fallbacks"], list) and f["fallbacks"]]
        if logged:
            w("- llama.cpp's quantizer fell back to other types where the one it wants needs rows in multiples of "
              "256 (Q6_K for the tied embedding / LM head, the K-quants) and this model's are 576 wide; it logged "
              + "; ".join(logged) + ".")
        for t, f in vs["llama_cpp"]["files"].items():
            if isinstance(f["fallbacks"], str):
                w(f"- llama.cpp {t}: {f['fallbacks']}.")
        w("- `int4-weight-only, llama.cpp's F32 file` is the float-source case: quantserve rounds the F32 weights "
          "to nearest into Q4_1 at load (the embedding / LM head stays fp16), beside llama.cpp's own Q4_1 of the "
          "same F32 file.")
        lq = rows.get(("quantserve", "fp32, llama.cpp's Q4_1 file"))
        l41 = rows.get(("llama.cpp", "Q4_1"))
        if lq and l41:
            w(f"- llama.cpp's Q4_1 file holds the source's weights: loaded by quantserve in fp32 it scores "
              f"{pct(lq['mean_change_vs_own_fp32'], 3)} (mean) against quantserve's fp32, while llama.cpp running "
              f"the same file scores {pct(l41['mean_change_vs_own_fp32'], 3)} against its F32. The difference is "
              "llama.cpp's CPU kernels: ggml multiplies Q4_1 weights by activations it first quantizes to Q8_1 "
              "blocks of 32 (Q8_0 weights by Q8_0 activations), so its Q4_1 and Q8_0 rows are 8-bit-activation "
              "figures, where quantserve's int4-weight-only and int8-weight-only keep fp32 activations.")
        full = load_json("quality_vs_llamacpp_full_texts.json")
        if full:
            counts = ", ".join(f"{n} {t['predicted_tokens']:,}" for n, t in full["texts"].items())
            w(f"- The same method on *all* of each text (`--tokens {full['tokens_per_text']}`, "
              f"`bench/results/quality_vs_llamacpp_full_texts.json`, commit `{full['commit'][:10]}`; scored tokens: "
              f"{counts}), so each error is smaller: " +
              "; ".join(f"{r['engine']} {r['precision']} " +
                        " / ".join(pct(c["change_vs_own_fp32"], 2) + stderr_cell(c) for c in r["texts"].values())
                        for r in full["summary"] if r["precision"] not in ("fp32", "F32")) + ".")
        k = rows.get(("llama.cpp", "Q4_K_M"))
        if k:
            w(f"- llama.cpp Q4_K_M ({pct(k['mean_change_vs_own_fp32'], 2)} mean) re-rounds weights that already sit "
              "on a Q4_1 grid onto Q4_K's (super-blocks of 256 with 6-bit sub-block scales) and, where rows are "
              "576 wide, onto its fallback types (Q5_0 for Q4_K): a second rounding of every weight, on top of "
              "the 8-bit activations, the rounding quantserve's int4-weight-only avoids by keeping a 4-bit file's "
              "blocks.")
        w("")

    variants = []   # (label, {text: change}, source)
    if groups:
        for g, label in ((0, "int8-weight-only, one scale per row (--group-size 0)"),
                         (32, "int8-weight-only, groups of 32 (the CPU's default: --group-size auto)")):
            per = {os.path.basename(t): v[f"int8-weight-only group {g}"]["change_vs_fp32"]
                   for t, v in groups["perplexity"].items()}
            variants.append((label, per, "int8_group_size.json"))
    if smooth:
        for key, label in (("int8 (W8A8, no smoothing)", "int8 (W8A8)"),
                           ("int8-smooth alpha 0.5 (default, unchanged)", "int8-smooth, α 0.5 (default)"),
                           ("int8-smooth alpha searched, absolute squared error (QUANTSERVE_SMOOTHING_ALPHA=search)",
                            "int8-smooth, α searched per linear")):
            v = smooth["variants"].get(key)
            if v:
                variants.append((label, {t: v[t]["change_vs_fp32"] for t in ("GPL-3", "LGPL-2.1", "MPL-2.0")},
                                 "int8_smooth_search.json"))
    if variants:
        texts = list(variants[0][1])
        pw = (groups or {}).get("perplexity_windows", {"max_tokens": 2048, "context": 512, "stride": 256})
        w("### The issue-13 variants (sliding-window method)\n")
        w(f"Measured before the llama.cpp method existed, with quantserve's default sliding windows (first "
          f"{pw['max_tokens']} tokens, windows of {pw['context']}, stride {pw['stride']}), Δ against quantserve's "
          "fp32 on the same windows: `bench/results/int8_group_size.json` (group-wise int8 scales) and "
          "`bench/results/int8_smooth_search.json` (SmoothQuant α searched per linear at load).\n")
        w("| variant | " + " | ".join(f"Δ {t}" for t in texts) + " | mean Δ | source |")
        w("|---|" + "---:|" * (len(texts) + 1) + "---|")
        for label, per, src in variants:
            w(f"| {label} | " + " | ".join(pct(per[t], 3) for t in texts) +
              f" | **{pct(sum(per.values()) / len(per), 3)}** | `{src}` |")
        w("")
        folds = load_json("int8_smooth_folds.json")
        if folds:
            # One line, not rows: the table's int8-smooth rows predate the folds (issue 13 item 2).
            def fold(name):
                v = folds["variants"][name]
                return (" / ".join(pct(v["texts"][t]["change_vs_fp32"], 3) for t in texts) +
                        f", mean **{pct(v['mean_change_vs_fp32'], 3)}**")
            w("`bench/results/int8_smooth_folds.json` (issue 13 item 2, the same windows; Δ " + " / ".join(texts) +
              f"): int8-smooth with down_proj's fold at α 0.6 (the default since) {fold('down a0.6')}; o_proj's fold "
              f"alone at α 0.5 {fold('o')}; both at α 0.5 {fold('both')}.\n")

    render_kv_cache(w)
    render_w8a8_groups(w)
    render_int8_tables(w)
    # The verdicts: on all of each text where a full-text run has the row (the newest first), else on the table's
    # 1,020 tokens a text.
    source = {key: "quality_vs_llamacpp.json" for key in rows}
    for name in ("quality_vs_llamacpp_full_texts.json", "quality_w8a8_groups_full_texts.json",
                 "quality_int8_embeddings_groups.json", "quality_int8_weight_only_exact_q4.json"):
        full = load_json(name)
        for row in (full or {}).get("summary", []):
            rows[(row["engine"], row["precision"])] = row
            source[(row["engine"], row["precision"])] = name
    w("### Issue 13 targets\n")
    w("Each target is a perplexity change against the engine's own fp32 on each of GPL-3, LGPL-2.1 and MPL-2.0; "
      "the verdict is on the worst of the three, by llama.cpp's method, on all of each text where a full-text run "
      "has the row (its file named), else on the table's first tokens.\n")
    kl_note = "see `int8_group_size.json`"
    if groups:
        per = list(groups["perplexity"].values())
        kl = [v["int8-weight-only group 0"]["mean_kl_from_fp32"] / v["int8-weight-only group 32"]["mean_kl_from_fp32"]
              for v in per]
        top = [(v["int8-weight-only group 0"]["top1_agreement_with_fp32"],
                v["int8-weight-only group 32"]["top1_agreement_with_fp32"]) for v in per]
        kl_note = (f"mean KL from fp32 {min(kl):.1f}–{max(kl):.1f}× lower than per row, top-1 agreement "
                   f"{100 * min(t[0] for t in top):.1f}–{100 * max(t[0] for t in top):.1f}% → "
                   f"{100 * min(t[1] for t in top):.1f}–{100 * max(t[1] for t in top):.1f}%, "
                   "`int8_group_size.json`")
    q8 = rows.get(("llama.cpp", "Q8_0"))
    q41 = rows.get(("llama.cpp", "Q4_1"))
    for label, target in ISSUE13_TARGETS:
        cands = [label] + ([f"{label}, group 32"] if label in ("int8-weight-only", "int8", "int8-smooth") else [])
        # With groups the tables are quantized too by default ("embeddings too": the rows of that default).
        cands += [f"{label}, group 32, embeddings too"] if label in ("int8-weight-only", "int8") else []
        for c in cands:
            row = rows.get(("quantserve", c))
            if not row:
                continue
            ch = [x["change_vs_own_fp32"] for x in row["texts"].values()]
            worst = max(abs(x) for x in ch) if label == "int4-weight-only" else max(ch)
            worst_cell = next(x for x in row["texts"].values() if x["change_vs_own_fp32"] in (worst, -worst))
            shown = f"|Δ| ≤ {100 * target:g}%" if label == "int4-weight-only" else f"≤ +{100 * target:g}%"
            verdict = "**met**" if worst <= target else \
                f"**missed by {100 * (worst - target):.2f} percentage points**"
            extra = ""
            if label in ("int8-weight-only", "int8") and q8:
                q8w = max(x["change_vs_own_fp32"] for x in q8["texts"].values())
                extra = (f"; llama.cpp Q8_0 on the same ids: worst {pct(q8w, 3)}, mean "
                         f"{pct(q8['mean_change_vs_own_fp32'], 3)} — quantserve "
                         f"{'ahead' if worst <= q8w else 'behind'} on the worst text, "
                         f"{'ahead' if row['mean_change_vs_own_fp32'] <= q8['mean_change_vs_own_fp32'] else 'behind'}"
                         " on the mean")
            why = f" {ISSUE13_WHY[c]}".replace("{kl}", kl_note) if worst > target and c in ISSUE13_WHY else ""
            # A miss or a pass closer to the target than twice the worst text's paired error is not decided.
            e = worst_cell.get("change_stderr")
            close = (f" (within 2 standard errors of the target: not decided by these {len(ch)} texts)"
                     if e and abs(worst - target) < 2 * e else "")
            w(f"- {c}: worst {pct(worst if label != 'int4-weight-only' else max(ch, key=abs), 3)}"
              f"{stderr_cell(worst_cell)}, mean {pct(row['mean_change_vs_own_fp32'], 3)}; target {shown}: "
              f"{verdict}{close}{extra} (`{source[('quantserve', c)]}`).{why}")
    fp_int4 = rows.get(("quantserve", "int4-weight-only, llama.cpp's F32 file"))
    if fp_int4 and q41:
        a, b = fp_int4["mean_change_vs_own_fp32"], q41["mean_change_vs_own_fp32"]
        qb = next(iter(vs["texts"].values()))["quantserve"]["int4-weight-only, llama.cpp's F32 file"]["weight_bytes"]
        w(f"- int4-weight-only from a float source (llama.cpp's F32 file): mean {pct(a, 3)} against llama.cpp "
          f"Q4_1's {pct(b, 3)} of the same F32 file; target ≤ Q4_1's Δ: "
          f"{'**met**' if a <= b else f'**missed by {100 * (a - b):.3f} percentage points**'}. Two reservations: "
          f"quantserve keeps the embedding / LM head of a float source in fp16 ({mb(qb)} against llama.cpp's "
          f"{mb(vs['llama_cpp']['files']['Q4_1']['bytes'])} file), and this F32 file is the Q4_1 source "
          "dequantized, so its weights already sit on a Q4_1 grid that round-to-nearest mostly gives back (most of "
          "llama.cpp's Δ is its 8-bit activations, above). A model trained in float, with no such grid, is not "
          "measured here.")
    if int4:
        def int4_ratio(run, key, file, against):
            r = run["summary"][key]
            ratio = r["median"]
            verdict = "**met**" if ratio >= 1.3 else f"**missed**, {100 * (1 - ratio / 1.3):.0f}% below the ratio asked"
            at_target = sum(x >= 1.3 for x in r["per_round"])
            m = run["machine"]
            return (f"{ratio:.2f}× {against} (paired median of {run['rounds']} rounds on {m.get('cpu', m['platform'])}, "
                    f"{r['min']:.2f}–{r['max']:.2f}, {at_target} of {len(r['per_round'])} rounds at ≥ 1.3×; "
                    f"`bench/results/{file}`): {verdict}")
        w("- int4-weight-only decode at batch 1 on the CPU ≥ 1.3× int8's: " +
          int4_ratio(int4, "int4_over_int8", "int4_weight_only_quiet.json",
                     "the int8 of that run (per row, fp16 tables)") + ".")
        today = load_json("int4_weight_only_vs_int8_default.json")
        if today and "int4_over_int8_default" in today["summary"]:
            s = today["summary"]
            w("  Against today's default int8 (W8A8 by groups of 32 with the tables quantized too: "
              f"{mb(s['int8 (default)']['weight_bytes'])} of weights against int4's "
              f"{mb(s['int4-weight-only']['weight_bytes'])}): " +
              int4_ratio(today, "int4_over_int8_default", "int4_weight_only_vs_int8_default.json", "it") +
              f". There int4 decodes at {s['int4-weight-only']['decode_tokens_per_second_median']:.1f} tok/s, the "
              f"default int8 at {s['int8 (default)']['decode_tokens_per_second_median']:.1f}, and the per-row int8 "
              f"of the first runs at {s['int8']['decode_tokens_per_second_median']:.1f} "
              f"({s['int4_over_int8']['median']:.2f}× paired). int4-weight-only keeps fp32 activations (the "
              "exactness it is for), so each weight still costs an FMA, plus a shift and a VPERMPS a nibble, where "
              "the default int8's VNNI multiplies four weights an instruction.")
        tiles = load_json("int4_weight_only_tiles_ab.json")
        gemv = load_json("cpu_gemv_int4_tiles.json")
        if tiles and gemv:
            g = gemv["summary"]
            w(f"  Since the blocks are kept in tiles of 16 rows (gemv_blocks.h: one load is a word of 16 rows; for Q4_1 "
              f"a shift and a VPERMPS make 16 exact fp32 weights, for the Q8_0 LM head a VPSHUFB and a conversion), "
              f"int4 decode is "
              f"{tiles['b_over_a']['decode']['median']:.2f}× the previous build's (paired, "
              f"`bench/results/int4_weight_only_tiles_ab.json`): its linears take "
              f"{g['after']['median_linears_ms']:.2f} ms a step against {g['before']['median_linears_ms']:.2f}, "
              f"{100 * g['after']['median_fraction_of_read_loop']:.0f}% of the read loop against "
              f"{100 * g['before']['median_fraction_of_read_loop']:.0f}% (`bench/results/cpu_gemv_int4_tiles.json`).")
    w("")


# Static notes on why a target is met or missed; the figures above them are generated.
NOTES = """\
Why the numbers look as they do:

- **fp16 / bf16** change only the weights' storage (activations and accumulation stay fp32 on the CPU). fp16's
  11-bit significand is essentially lossless; bf16 keeps 8 bits (relative rounding error up to 2^-9 per weight),
  still far inside the +0.1% target on this model.
- **int8-weight-only** keeps activations in float and quantizes only the weights, with one absmax scale per
  output channel (a row of 576 or 1536 weights). Its whole cost is that rounding. It misses +0.5% narrowly on
  this model for two reasons: (1) a 135M model has little redundancy, and (2) the default model's weights come
  from a Q4_1 GGUF, so they already sit on a 4-bit grid with one scale and minimum per block of 32; re-rounding
  that grid onto a per-row int8 grid adds error of its own (≈0.9% relative Frobenius per tensor, see the plot).
  llama.cpp's Q8_0 reaches +0.0026 perplexity on Llama-3-8B with one scale per block of 32 on an 8B model;
  per-group scales (32–128 weights) are the known fix and would also serve int8 W8A8's weights.
- **int8 (W8A8)** also quantizes every activation row to int8 with one scale per token. SmolLM2's residual
  stream has a few channels far larger than the rest, so one per-token scale leaves the other channels few
  levels: the outlier problem LLM.int8() and SmoothQuant address. Its +3.4% is the analogue of LLM.int8()'s
  vector-wise W8A8 row (25.65 → 35.84 at 125M), much milder here. With `--group-size 32` (the CPU's default on
  VNNI machines) each 32 inputs of a token get their own scale, as llama.cpp's Q8_0 activations do, so an outlier
  coarsens only its own group: int8 comes to about Q8_0's Δ (the W8A8-by-groups section above). The tables that
  name int8 without a group were measured per row and token (`--group-size 0`).
- **int8-mixed** sends the input columns with |x| > 6 through a float product, removing those outliers from the
  int8 part (LLM.int8()'s decomposition): it recovers about 40% of W8A8's loss and meets +2% only just.
- **int8-smooth** divides the activations entering QKV and MLP-in by s_j = max|X_j|^0.5 / max|W_j|^0.5 (folded
  into the norm weights) and multiplies the weights' columns by s_j, then runs the same W8A8 kernel. It recovers
  about 55% of W8A8's loss. Much of what remained came from the inputs of the attention output projection and
  the MLP down-projection, which no norm precedes (in SwiGLU models the down-projection's input carries large
  outliers): since issue 13 item 2 down_proj's factors (α 0.6) are folded into up_proj's rows, which takes the
  mean over the three texts from +1.17% to +0.34%, better on each (`bench/results/int8_smooth_folds.json`).
  o_proj's fold into v_proj's rows (one factor per KV channel, shared by the query heads of a group) is built
  but opt-in (`QUANTSERVE_SMOOTH_FOLDS=o` or `both`): alone it scored worse than none (+1.24% at α 0.5). GPT-2
  and NeoX have no foldable down-projection (a GELU MLP does not commute with the scale). The rest is the
  per-row weight rounding that int8-weight-only shows alone.
- **int4-weight-only** keeps the file's own blocks: every Q4_1 linear of the default model block for block (20
  bytes per 32 weights: fp16 d and m, 16 bytes of nibbles) and its Q8_0 embedding / tied LM head as Q8_0, so
  nothing is rounded and the weights take about the file's size. The kernels multiply those blocks into fp32
  activations (d·Σq·x + m·Σx per block), so what remains against fp32 is float summation order: Δ of order
  1e-6 %, top-1 agreement 100%. On the random-initialised fixtures there are no blocks to keep: their floats are
  rounded to nearest into Q4_1 and show what 4-bit round-to-nearest costs (far more than int8).
- **int8-naive** (per-tensor asymmetric uint8 weights, fp activations) is the textbook baseline: one scale for a
  whole tensor wastes levels wherever a few large weights set the range (LLM.int8()'s per-tensor absmax row).
- The fixtures are random-initialised with large weights and no outlier structure: smoothing has nothing to
  move there (it can even hurt, by making the weights' columns uneven), and perplexities in the millions only
  show relative behaviour; bf16 and some int8 modes land *below* fp32 there by chance.
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary")
    ap.add_argument("--models", default="default," + ",".join(FIXTURES))
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--text", default=DEFAULT_TEXT)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--render-only", action="store_true", help="only regenerate the doc and plots from the JSON")
    ap.add_argument("--add", action="store_true",
                    help="merge the measured precisions into the existing JSON instead of replacing it")
    args = ap.parse_args()
    args.precisions = [p for p in args.precisions.split(",") if p]
    if "fp32" not in args.precisions:
        args.precisions.insert(0, "fp32")
    if not args.render_only:
        binary = find_binary(args.binary)
        os.makedirs(RESULTS, exist_ok=True)
        for key in [k for k in args.models.split(",") if k]:
            measure(binary, key, args)
    render(load_results())


if __name__ == "__main__":
    main()
