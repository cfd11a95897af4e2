#!/usr/bin/env python3
"""Calls a quantserve server from Python: Generate (unary) and GenerateStream (tokens as they arrive).

Stubs are generated at run time from proto/quantserve/v1/inference.proto with grpc_tools.protoc into a temporary
directory, so nothing generated is committed.  Needs `pip install grpcio grpcio-tools` (scripts/setup.sh does it).

    python3 client/python/example.py --address localhost:50051 "Write a haiku about quantization"
"""
import argparse
import importlib
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(ROOT, "proto")


def load_stubs():
    out = tempfile.mkdtemp(prefix="quantserve-proto-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")   # google/protobuf/*.proto
    rc = protoc.main(["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", os.path.join(PROTO_DIR, "quantserve/v1/inference.proto")])
    if rc != 0:
        sys.exit(f"protoc failed on {PROTO_DIR}/quantserve/v1/inference.proto")
    sys.path.insert(0, out)
    pb2 = importlib.import_module("quantserve.v1.inference_pb2")
    pb2_grpc = importlib.import_module("quantserve.v1.inference_pb2_grpc")
    return pb2, pb2_grpc


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", nargs="?", default="What is int8 quantization?")
    parser.add_argument("--address", default=os.environ.get("QUANTSERVE_ADDRESS", "localhost:50051"))
    parser.add_argument("--model", default="", help="served model name (default: the server's first)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-chat", action="store_true", help="send the prompt without the chat template")
    parser.add_argument("--timeout", type=float, default=120, help="deadline per call, seconds")
    parser.add_argument("--tls-ca", default=os.environ.get("QUANTSERVE_TLS_CA", ""),
                        help="TLS: the CA bundle (PEM) that signed the server's certificate")
    parser.add_argument("--token", default=os.environ.get("QUANTSERVE_TOKEN", ""),
                        help="bearer token, for a server started with --auth-token-file")
    parser.add_argument("--json-schema", default="",
                        help="constrain the output to this JSON Schema: a file, or the JSON itself "
                             "('{\"type\":\"object\"}' = any JSON object)")
    args = parser.parse_args()

    schema = args.json_schema
    if schema and not schema.lstrip().startswith("{"):
        with open(schema, encoding="utf-8") as f:
            schema = f.read()

    pb2, pb2_grpc = load_stubs()
    if args.tls_ca:
        with open(args.tls_ca, "rb") as f:
            channel = grpc.secure_channel(args.address, grpc.ssl_channel_credentials(root_certificates=f.read()))
    else:
        channel = grpc.insecure_channel(args.address)
    with channel:
        stub = pb2_grpc.InferenceStub(channel)
        request = pb2.GenerateRequest(model=args.model, prompt=args.prompt, chat=not args.no_chat,
                                      max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                      seed=args.seed, json_schema=schema)

        metadata = [("authorization", f"Bearer {args.token}")] if args.token else []

        # Unary: the whole generation in one response.
        try:
            response = stub.Generate(request, timeout=args.timeout, metadata=metadata)
        except grpc.RpcError as e:
            sys.exit(f"Generate failed: {e.code().name}: {e.details()}")
        print("== Generate ==")
        print(response.text)
        print(f"[{pb2.FinishReason.Name(response.finish_reason)}, {response.usage.prompt_tokens} prompt + "
              f"{response.usage.generated_tokens} generated tokens, time to first token "
              f"{response.timings.time_to_first_token_seconds * 1e3:.0f} ms, total "
              f"{response.timings.total_seconds * 1e3:.0f} ms]")

        # Streaming: the same request (same seed), printed as the chunks arrive; the text is the same.
        print("== GenerateStream ==")
        streamed = []
        try:
            for chunk in stub.GenerateStream(request, timeout=args.timeout, metadata=metadata):
                print(chunk.text, end="", flush=True)
                streamed.append(chunk.text)
                if chunk.finish_reason:
                    print(f"\n[{pb2.FinishReason.Name(chunk.finish_reason)}]")
        except grpc.RpcError as e:
            sys.exit(f"\nGenerateStream failed: {e.code().name}: {e.details()}")
        print("stream == unary:", "".join(streamed) == response.text)


if __name__ == "__main__":
    main()
