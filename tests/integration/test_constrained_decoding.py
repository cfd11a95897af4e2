#!/usr/bin/env python3
"""Constrained decoding end to end: the real quantserve binary with the default model (SmolLM2-135M-Instruct)
writes JSON for many schemas (nested objects, arrays, enums, anyOf, numbers, strings with escapes, $ref, any
object) x several seeds, greedy and sampled, unary and streamed; every output that ends with EOS must parse and
validate with the `jsonschema` package, every other one must end with LENGTH at max_new_tokens. Bad schemas are
INVALID_ARGUMENT naming what is wrong. Exit 0 = pass, 1 = failure."""
import argparse
import concurrent.futures
import json
import os
import sys

import jsonschema

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import bench_common  # noqa: E402
import quantserve_grpc  # noqa: E402

SCHEMAS = {
    "person": ("Describe a person called Ada, a 36 year old engineer, as JSON.",
               {"type": "object", "properties": {
                   "name": {"type": "string"}, "age": {"type": "integer"}, "job": {"type": "string"},
                   "married": {"type": "boolean"}}, "required": ["name", "age"]}),
    "nested": ("Give the address of a small bakery in Paris as JSON.",
               {"type": "object", "properties": {
                   "shop": {"type": "string"},
                   "address": {"type": "object", "properties": {
                       "street": {"type": "string"}, "city": {"type": "string"}, "zip": {"type": "string"}},
                       "required": ["street", "city"], "additionalProperties": False},
                   "open": {"type": "boolean"}}, "required": ["shop", "address"]}),
    "array": ("List three fruits with their colours as JSON.",
              {"type": "object", "properties": {"fruits": {"type": "array", "minItems": 1, "maxItems": 5, "items": {
                  "type": "object", "properties": {"name": {"type": "string"}, "colour": {"type": "string"}},
                  "required": ["name", "colour"]}}}, "required": ["fruits"]}),
    "enum": ("Classify the sentiment of 'I love this phone' as JSON.",
             {"type": "object", "properties": {
                 "sentiment": {"enum": ["positive", "negative", "neutral"]},
                 "confidence": {"type": "number"}}, "required": ["sentiment", "confidence"]}),
    "anyof": ("Give a product with either a price or the text 'free' as JSON.",
              {"type": "object", "properties": {
                  "product": {"type": "string"},
                  "price": {"anyOf": [{"type": "number"}, {"const": "free"}, {"type": "null"}]},
                  "tags": {"type": ["array", "null"], "items": {"type": "string"}}}, "required": ["product", "price"]}),
    "numbers": ("Give the coordinates and elevation of Mount Everest as JSON.",
                {"type": "object", "properties": {
                    "latitude": {"type": "number"}, "longitude": {"type": "number"}, "elevation_m": {"type": "integer"},
                    "readings": {"type": "array", "items": {"type": "number"}, "maxItems": 4}},
                 "required": ["latitude", "longitude", "elevation_m"]}),
    "escapes": ('Write a JSON object whose "quote" is: He said "hi" \\ then left, and whose "path" is C:\\temp.',
                {"type": "object", "properties": {"quote": {"type": "string"}, "path": {"type": "string"}},
                 "required": ["quote", "path"]}),
    "ref": ("Describe a folder tree with a root folder and two sub folders as JSON.",
            {"$defs": {"folder": {"type": "object", "properties": {
                "name": {"type": "string"},
                "children": {"type": "array", "maxItems": 3, "items": {"$ref": "#/$defs/folder"}}},
                "required": ["name"]}}, "$ref": "#/$defs/folder"}),
    "json_object": ("Give any JSON object about the weather today.", {"type": "object"}),
}
# (temperature, seed): greedy once, sampled with three seeds.
RUNS = [(0.0, 0), (0.8, 1), (0.8, 2), (1.0, 3)]
MAX_NEW_TOKENS = 96


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--binary", default="")
    parser.add_argument("--model", default=quantserve_grpc.DEFAULT_MODEL)
    parser.add_argument("--log", default="")
    args = parser.parse_args()
    if not os.path.exists(args.model):
        sys.exit(f"the default model is missing: {args.model} (scripts/setup.sh fetches it)")
    binary = bench_common.find_binary(args.binary)
    failures = []

    def fail(message):
        failures.append(message)
        print("FAIL:", message)

    with quantserve_grpc.serve(binary, args.model, ["--max-batch-size", "16"], log_path=args.log or None) as (stub, pb2, _):
        def generate(name, temperature, seed, stream=False, max_new_tokens=MAX_NEW_TOKENS, schema=None):
            prompt, default_schema = SCHEMAS[name] if name in SCHEMAS else ("Write JSON.", None)
            request = pb2.GenerateRequest(prompt=prompt, chat=True, max_new_tokens=max_new_tokens,
                                          temperature=temperature, seed=seed,
                                          json_schema=json.dumps(schema or default_schema))
            if not stream:
                r = stub.Generate(request, timeout=600)
                return r.text, r.finish_reason, r.usage.generated_tokens
            text, finish, generated = "", 0, 0
            for chunk in stub.GenerateStream(request, timeout=600):
                text += chunk.text
                finish = chunk.finish_reason or finish
                generated = chunk.usage.generated_tokens or generated
            return text, finish, generated

        jobs = [(name, t, s, i % 3 == 0) for name in SCHEMAS for i, (t, s) in enumerate(RUNS)]
        complete = 0
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(lambda j: generate(*j), jobs))
        for (name, temperature, seed, stream), (text, finish, generated) in zip(jobs, results):
            where = f"{name} t={temperature} seed={seed}{' stream' if stream else ''}"
            if finish == pb2.FINISH_REASON_EOS:
                try:
                    doc = json.loads(text)
                    jsonschema.validate(doc, SCHEMAS[name][1])
                    complete += 1
                    print(f"ok   {where}: {text}")
                except (ValueError, jsonschema.ValidationError) as e:
                    fail(f"{where}: EOS on output that does not validate ({e}): {text!r}")
            elif finish == pb2.FINISH_REASON_LENGTH:
                print(f"len  {where}: {text}")
                if generated != MAX_NEW_TOKENS:
                    fail(f"{where}: LENGTH after {generated} tokens, not {MAX_NEW_TOKENS}")
            else:
                fail(f"{where}: finish reason {pb2.FinishReason.Name(finish)}")
        # The default model writes real documents: most runs must end with a complete one.
        if complete < 0.75 * len(jobs):
            fail(f"only {complete} of {len(jobs)} runs ended with a complete document")
        print(f"{complete}/{len(jobs)} complete documents")

        # A schema that needs more tokens than max_new_tokens: LENGTH, and the text is not a complete document.
        text, finish, generated = generate("x", 0.0, 0, max_new_tokens=12,
                                           schema={"type": "array", "items": {"type": "integer"}, "minItems": 200})
        if finish != pb2.FINISH_REASON_LENGTH or generated != 12:
            fail(f"unsatisfiable within max_new_tokens: finish {finish}, {generated} tokens")
        try:
            json.loads(text)
            fail(f"unsatisfiable within max_new_tokens: the prefix parses: {text!r}")
        except ValueError:
            pass

        # Bad schemas and bad combinations: INVALID_ARGUMENT, naming the problem.
        import grpc
        bad = [({"type": "object", "patternProperties": {"a": {}}}, "keyword 'patternProperties' is not supported"),
               ({"type": "strng"}, "unknown type 'strng'"),
               ("{not json", "json_schema: not valid JSON"),
               ({"description": "x" * 70000}, "over the limit of 65536"),
               ({"$ref": "#/$defs/nope"}, "does not resolve")]
        for schema, expected in bad:
            request = pb2.GenerateRequest(prompt="x", max_new_tokens=4,
                                          json_schema=schema if isinstance(schema, str) else json.dumps(schema))
            try:
                stub.Generate(request, timeout=60)
                fail(f"schema {str(schema)[:60]} was accepted")
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.INVALID_ARGUMENT or expected not in e.details():
                    fail(f"schema {str(schema)[:60]}: {e.code().name}: {e.details()[:200]}")
        try:
            stub.Generate(pb2.GenerateRequest(prompt="x", max_new_tokens=4, stop=["}"], json_schema='{"type":"object"}'),
                          timeout=60)
            fail("stop sequences with json_schema were accepted")
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.INVALID_ARGUMENT or "cannot be combined with json_schema" not in e.details():
                fail(f"stop with json_schema: {e.code().name}: {e.details()[:200]}")

    if failures:
        print(f"{len(failures)} failure(s)")
        return 1
    print("pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
