#!/usr/bin/env python3
"""Constrained decoding (json_schema) against unconstrained generation on the default model, CPU: the same chat
prompts, greedy, through the real server. Variants alternate, the order rotating every repetition:
unconstrained, constrained, and constrained with no whitespace (a second server with --json-whitespace none).
A: the prompts as sent, one at a time (documents end where the model ends them): decode tokens/s per request.
B: every request exactly 128 tokens (unconstrained with ignore_eos, constrained on a schema too long to finish),
1 and 8 at a time: tokens/s over the wall clock. Both also record the server's CPU time per token (/proc), which
the other work on a shared machine disturbs far less than the wall clock. Medians per variant and ratios to
unconstrained, plus what the whitespace choice does to the text: validity, the model's mean token
log-probability, how often it took the optional space. Writes bench/results/constrained_decoding.json.

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
# Part B: a document that cannot end within MAX_NEW_TOKENS, through keys, strings, numbers and booleans.
LONG_PROMPT = "List fifty people with their names, ages and cities as JSON."
LONG_SCHEMA = {"type": "array", "minItems": 50, "items": {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"}, "active": {"type": "boolean"}},
    "required": ["name", "age", "city", "active"]}}
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
    parser.add_argument("--reps", type=int, default=2, help="repetitions of part A (the first one's texts are kept)")
    parser.add_argument("--reps-fixed", type=int, default=5, help="repetitions of part B")
    parser.add_argument("--threads", type=int, default=0, help="CPU backend threads (0 = all cores)")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    binary = find_binary(args.binary)
    load_before = load_average()
    extra = ["--threads", str(args.threads)] if args.threads else []

    with quantserve_grpc.serve(binary, args.model, extra) as (space, pb2, space_pid), \
            quantserve_grpc.serve(binary, args.model, extra + ["--json-whitespace", "none"]) as (compact, _, compact_pid):
        variants = {"unconstrained": (space, space_pid, False), "constrained": (space, space_pid, True),
                    "constrained_no_space": (compact, compact_pid, True)}
        order = list(variants)

        def request(v, i, fixed_length):
            _, _, constrained = variants[v]
            prompt, schema = PROMPTS[i % len(PROMPTS)]
            if fixed_length:   # same length for every variant: EOS ignored, or a document too long to finish
                prompt, schema = LONG_PROMPT, LONG_SCHEMA
            return pb2.GenerateRequest(prompt=prompt, chat=True, max_new_tokens=MAX_NEW_TOKENS, temperature=0,
                                       logprobs=1, ignore_eos=fixed_length and not constrained,
                                       json_schema=json.dumps(schema) if constrained else ""), schema

        def one(v, i, fixed_length=False):
            stub, pid, _ = variants[v]
            req, schema = request(v, i, fixed_length)
            cpu0 = quantserve_grpc.cpu_seconds(pid)
            r = stub.Generate(req, timeout=600)
            return r, schema, quantserve_grpc.cpu_seconds(pid) - cpu0

        for v in variants:   # warm-up: first-request costs (vocabulary index, page faults) out of the figures
            one(v, 0)
        # A: the prompts as a user sends them, one at a time; documents end where the model ends them.
        single = {v: [] for v in variants}
        texts = {v: {} for v in variants}
        for rep in range(args.reps):
            for i in range(len(PROMPTS)):
                for v in order[rep % 3:] + order[:rep % 3]:
                    r, schema, cpu = one(v, i)
                    t = r.timings
                    decode_s = t.total_seconds - t.time_to_first_token_seconds
                    single[v].append({
                        "prompt": i, "generated_tokens": r.usage.generated_tokens,
                        "decode_tokens_per_second": (r.usage.generated_tokens - 1) / decode_s if decode_s > 0 else None,
                        "tokens_per_second": r.usage.generated_tokens / t.total_seconds,
                        "time_to_first_token_ms": t.time_to_first_token_seconds * 1e3,
                        "server_cpu_ms_per_token": cpu * 1e3 / r.usage.generated_tokens})
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

        # B: every request exactly MAX_NEW_TOKENS long, 1 and 8 at a time, so throughput compares like with like.
        fixed = {v: {1: [], 8: []} for v in variants}
        for rep in range(args.reps_fixed):
            for concurrency in (1, 8):
                for v in order[rep % 3:] + order[:rep % 3]:
                    _, pid, _ = variants[v]
                    cpu0 = quantserve_grpc.cpu_seconds(pid)
                    start = time.perf_counter()
                    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
                        results = list(pool.map(lambda i: one(v, i, fixed_length=True)[0], range(concurrency)))
                    wall = time.perf_counter() - start
                    tokens = sum(r.usage.generated_tokens for r in results)
                    fixed[v][concurrency].append({"rep": rep,
                        "wall_seconds": wall, "generated_tokens": tokens, "tokens_per_second": tokens / wall,
                        "server_cpu_ms_per_token": (quantserve_grpc.cpu_seconds(pid) - cpu0) * 1e3 / tokens})

    def med(rows, key):
        return statistics.median(r[key] for r in rows if r[key] is not None)

    summary = {}
    for v in variants:
        summary[v] = {
            "single_decode_tokens_per_second_median": med(single[v], "decode_tokens_per_second"),
            "single_tokens_per_second_median": med(single[v], "tokens_per_second"),
            "single_time_to_first_token_ms_median": med(single[v], "time_to_first_token_ms"),
            "single_server_cpu_ms_per_token_median": med(single[v], "server_cpu_ms_per_token"),
            "fixed_length_batch1_tokens_per_second_median": med(fixed[v][1], "tokens_per_second"),
            "fixed_length_batch8_tokens_per_second_median": med(fixed[v][8], "tokens_per_second"),
            "fixed_length_batch1_server_cpu_ms_per_token_median": med(fixed[v][1], "server_cpu_ms_per_token"),
            "fixed_length_batch8_server_cpu_ms_per_token_median": med(fixed[v][8], "server_cpu_ms_per_token"),
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
        ratios[v] = {k.replace("_median", "_ratio"): summary[v][k] / base[k] for k in summary[v]
                     if k.endswith("tokens_per_second_median")}
        # CPU time per token inverted: the throughput ratio a machine with no other load would see.
        ratios[v].update({k.replace("server_cpu_ms_per_token_median", "cpu_throughput_ratio"): base[k] / summary[v][k]
                          for k in summary[v] if k.endswith("server_cpu_ms_per_token_median")})
    # Each repetition's variants ran back to back, so their ratio sees the same load; the median of those ratios
    # is the figure least moved by other work on the machine.
    for v in ("constrained", "constrained_no_space"):
        for concurrency in (1, 8):
            pairs = [c["tokens_per_second"] / u["tokens_per_second"]
                     for c, u in zip(fixed[v][concurrency], fixed["unconstrained"][concurrency])]
            ratios[v][f"fixed_length_batch{concurrency}_median_of_paired_ratios"] = statistics.median(pairs)
    result = {
        "benchmark": "constrained_decoding", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "commit": git_commit(), "machine": machine_info(args.threads or None),
        "load_average_before": load_before, "load_average_after": load_average(),
        "model": os.path.relpath(args.model, ROOT), "device": "cpu", "max_new_tokens": MAX_NEW_TOKENS,
        "reps": args.reps, "reps_fixed": args.reps_fixed, "prompts": [p for p, _ in PROMPTS], "schemas": [s for _, s in PROMPTS],
        "fixed_length_prompt": LONG_PROMPT, "fixed_length_schema": LONG_SCHEMA,
        "summary": summary, "ratios_to_unconstrained": ratios, "target_ratio": 0.8,
        "greedy_outputs": texts, "single": single, "fixed_length": fixed,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
        f.write("\n")
    print(json.dumps({"summary": summary, "ratios": ratios, "load": [load_before, result["load_average_after"]]}, indent=2))


if __name__ == "__main__":
    main()
