#!/usr/bin/env python3
"""Constrained decoding (json_schema) against unconstrained generation on the default model, CPU: the same chat
prompts, greedy, through the real server. Single requests alternate unconstrained / constrained / constrained
with no whitespace (a second server with --json-whitespace none), rotating the order every repetition; then
batches of 8 concurrent requests alternate the same way. Medians per variant and their ratios, plus what the
whitespace choice does to the text: the model's mean token log-probability and how often it took the optional
space. Writes bench/results/constrained_decoding.json.

Usage: python3 bench/constrained_decoding.py [--binary build/server/quantserve] [--reps 5] [--threads 2]
"""
import argparse
import concurrent.futures
import datetime
import json
import os
import statistics
import sys
import time

import jsonschema

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from bench_common import ROOT, find_binary, git_commit, load_average, machine_info  # noqa: E402
import quantserve_grpc  # noqa: E402

OUT = os.path.join(ROOT, "bench", "results", "constrained_decoding.json")
PROMPTS = [
    ("Describe a person called Ada, a 36 year old engineer, as JSON.",
     {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                       "job": {"type": "string"}, "married": {"type": "boolean"}},
      "required": ["name", "age", "job"]}),
    ("List three fruits with their colours as JSON.",
     {"type": "object", "properties": {"fruits": {"type": "array", "maxItems": 5, "items": {
         "type": "object", "properties": {"name": {"type": "string"}, "colour": {"type": "string"}},
         "required": ["name", "colour"]}}}, "required": ["fruits"]}),
    ("Give the address of a small bakery in Paris as JSON.",
     {"type": "object", "properties": {"shop": {"type": "string"}, "address": {"type": "object", "properties": {
         "street": {"type": "string"}, "city": {"type": "string"}, "zip": {"type": "string"}},
         "required": ["street", "city", "zip"]}, "rating": {"type": "number"}}, "required": ["shop", "address"]}),
    ("Classify the sentiment of 'I love this phone' and explain why, as JSON.",
     {"type": "object", "properties": {"sentiment": {"enum": ["positive", "negative", "neutral"]},
                                       "reason": {"type": "string"}}, "required": ["sentiment", "reason"]}),
    ("Give any JSON object about the weather today.", {"type": "object"}),
]
MAX_NEW_TOKENS = 128


def separators(text):
    """(separators outside strings, how many of them a space follows)."""
    total = spaced = 0
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in ":,":
            total += 1
            spaced += text[i + 1:i + 2] == " "
    return total, spaced


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default="")
    parser.add_argument("--model", default=quantserve_grpc.DEFAULT_MODEL)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="CPU backend threads (0 = all cores)")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    binary = find_binary(args.binary)
    load_before = load_average()
    extra = ["--threads", str(args.threads)] if args.threads else []

    with quantserve_grpc.serve(binary, args.model, extra) as (space, pb2), \
            quantserve_grpc.serve(binary, args.model, extra + ["--json-whitespace", "none"]) as (compact, _):
        variants = {"unconstrained": (space, False), "constrained": (space, True), "constrained_no_space": (compact, True)}

        def one(variant, i):
            stub, constrained = variants[variant]
            prompt, schema = PROMPTS[i % len(PROMPTS)]
            r = stub.Generate(pb2.GenerateRequest(prompt=prompt, chat=True, max_new_tokens=MAX_NEW_TOKENS,
                                                  temperature=0, logprobs=1,
                                                  json_schema=json.dumps(schema) if constrained else ""), timeout=600)
            return r, schema

        for v in variants:   # warm-up: first-request costs (vocabulary index, page faults) out of the figures
            one(v, 0)
        single = {v: [] for v in variants}
        texts = {v: {} for v in variants}
        order = list(variants)
        for rep in range(args.reps):
            for i in range(len(PROMPTS)):
                for v in order[rep % 3:] + order[:rep % 3]:
                    r, schema = one(v, i)
                    t = r.timings
                    decode_s = t.total_seconds - t.time_to_first_token_seconds
                    single[v].append({
                        "prompt": i, "generated_tokens": r.usage.generated_tokens,
                        "decode_tokens_per_second": (r.usage.generated_tokens - 1) / decode_s if decode_s > 0 else None,
                        "tokens_per_second": r.usage.generated_tokens / t.total_seconds,
                        "time_to_first_token_ms": t.time_to_first_token_seconds * 1e3})
                    if rep == 0:
                        entry = {"text": r.text, "finish": pb2.FinishReason.Name(r.finish_reason),
                                 "mean_token_logprob": statistics.fmean(lp.logprob for lp in r.logprobs)}
                        if v != "unconstrained":
                            try:
                                jsonschema.validate(json.loads(r.text), schema)
                                entry["valid"] = True
                            except (ValueError, jsonschema.ValidationError):
                                entry["valid"] = False
                        entry["separators"], entry["separators_followed_by_space"] = separators(r.text)
                        texts[v][i] = entry

        batch = {v: [] for v in variants}
        for rep in range(args.reps):
            for v in order[rep % 3:] + order[:rep % 3]:
                start = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
                    results = list(pool.map(lambda i: one(v, i)[0], range(8)))
                wall = time.perf_counter() - start
                batch[v].append({"wall_seconds": wall, "generated_tokens": sum(r.usage.generated_tokens for r in results),
                                 "tokens_per_second": sum(r.usage.generated_tokens for r in results) / wall})

    def med(rows, key):
        return statistics.median(r[key] for r in rows if r[key] is not None)

    summary = {}
    for v in variants:
        summary[v] = {
            "single_decode_tokens_per_second_median": med(single[v], "decode_tokens_per_second"),
            "single_tokens_per_second_median": med(single[v], "tokens_per_second"),
            "single_time_to_first_token_ms_median": med(single[v], "time_to_first_token_ms"),
            "batch8_tokens_per_second_median": med(batch[v], "tokens_per_second"),
            "mean_token_logprob": statistics.fmean(e["mean_token_logprob"] for e in texts[v].values()),
            "separators": sum(e["separators"] for e in texts[v].values()),
            "separators_followed_by_space": sum(e["separators_followed_by_space"] for e in texts[v].values()),
        }
        if v != "unconstrained":
            summary[v]["valid_documents"] = sum(e["valid"] for e in texts[v].values())
            summary[v]["documents"] = len(texts[v])
    base = summary["unconstrained"]
    ratios = {}
    for v in ("constrained", "constrained_no_space"):
        ratios[v] = {k.replace("_median", "_ratio"): summary[v][k] / base[k] for k in (
            "single_decode_tokens_per_second_median", "single_tokens_per_second_median", "batch8_tokens_per_second_median")}
    result = {
        "benchmark": "constrained_decoding", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "commit": git_commit(), "machine": machine_info(args.threads or None),
        "load_average_before": load_before, "load_average_after": load_average(),
        "model": os.path.relpath(args.model, ROOT), "device": "cpu", "max_new_tokens": MAX_NEW_TOKENS,
        "reps": args.reps, "prompts": [p for p, _ in PROMPTS], "schemas": [s for _, s in PROMPTS],
        "summary": summary, "ratios_to_unconstrained": ratios, "target_ratio": 0.8,
        "greedy_outputs": texts, "single": single, "batch8": batch,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
        f.write("\n")
    print(json.dumps({"summary": summary, "ratios": ratios, "load": [load_before, result["load_average_after"]]}, indent=2))


if __name__ == "__main__":
    main()
