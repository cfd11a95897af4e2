#!/usr/bin/env python3
"""Renders bench/results/cpu_peers.json (bench/cpu_peers.py) as the README's table of quantserve against llama.cpp,
between the markers <!-- cpu-peers:begin --> and <!-- cpu-peers:end -->, so the README quotes exactly what was
measured. Targets from issue 12 are printed beside each ratio.

Usage: python3 bench/render_peers_table.py [--json bench/results/cpu_peers.json] [--readme README.md] [--print]
"""
import argparse
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- cpu-peers:begin -->", "<!-- cpu-peers:end -->"
NAMES = {"int8": "int8 vs Q8_0", "int8-all": "int8 + `--quantize-embeddings` vs Q8_0",
         "int8-per-row": "int8 per row (`--group-size 0`) vs Q8_0",
         "int8-fp16-head": "int8, fp16 tables (`--quantize-embeddings=off`) vs Q8_0", "fp16": "fp16 vs F16",
         "fp32": "fp32 vs F32"}
TARGET = 1.25   # decode; prefill wants 1.2


def render(data):
    lines = ["| scenario | precision class | quantserve tok/s | llama.cpp tok/s | ratio (paired median) | target |",
             "|---|---|---:|---:|---:|---:|"]
    for row in data["summary"]:
        c = row["class"]
        if c.startswith("ct2-"):
            continue
        for metric, label, target in (("prefill_tokens_per_second", "prefill {p}", 1.2),
                                      ("decode_tokens_per_second", "decode b1 at context {p}–{pn}", TARGET)):
            q = row.get("quantserve", {}).get(metric)
            peer = row.get("llama.cpp", {}).get(metric)
            r = row.get("quantserve_over_llama_cpp", {}).get(metric)
            if q is None or peer is None or r is None:
                continue
            scen = label.format(p=row["prompt_tokens"], pn=row["prompt_tokens"] + row["new_tokens"])
            mark = "met" if r >= target else f"missed by {(target - r) / target * 100:.0f}%"
            lines.append(f"| {scen} | {NAMES.get(c, c)} | {q:.1f} | {peer:.1f} | {r:.2f}× | ≥ {target}× ({mark}) |")
    ct2 = [row for row in data["summary"] if row["class"].startswith("ct2-")]
    notes = [f"Measured {data['date']} at commit {data['commit'][:10]}, {data['machine'].get('cpu', '?')}, "
             f"{data['threads']} threads each, {data['reps']} alternating repetitions "
             f"(load average {data['load_average_start'][0]:.2f} at the start, {data['load_average_end'][0]:.2f} "
             f"at the end); peer: {data['peers']['llama.cpp']}."]
    if data.get("note"):
        notes.append(data["note"])
    for row in ct2:
        ct = row.get("CTranslate2", {})
        notes.append(f"CTranslate2 {row['class'][4:]} (same weights, {row['prompt_tokens']}-token prompt): prefill "
                     f"{ct.get('prefill_tokens_per_second', 0):.1f}, decode {ct.get('decode_tokens_per_second', 0):.1f} tok/s.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "cpu_peers.json"))
    ap.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    ap.add_argument("--print", action="store_true", help="print the table instead of writing the README")
    args = ap.parse_args()
    table = render(json.load(open(args.json)))
    if args.print:
        print(table)
        return
    text = open(args.readme).read()
    if BEGIN not in text or END not in text:
        sys.exit(f"{args.readme} has no {BEGIN} ... {END} markers")
    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), BEGIN + "\n" + table + END, text, flags=re.S)
    open(args.readme, "w").write(text)
    print(f"rendered {os.path.relpath(args.json, ROOT)} into {os.path.relpath(args.readme, ROOT)}")


if __name__ == "__main__":
    main()
