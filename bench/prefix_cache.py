#!/usr/bin/env python3
"""Prefix caching on the CPU (issue 16): time to first token of a request whose 1,024-token system prompt an
earlier request already sent, against that first request's, with `quantserve serve --prefix-cache on` and, as the
control, `--prefix-cache off`. Target: second / first <= 0.2 with the cache on.

Two servers on the default model (same flags but the cache) run side by side and are asked in turn, one request
at a time, so they never compete for the cores. Each repetition builds a fresh ChatML system prompt of exactly
1,024 tokens (its own words, so no repetition finds another's blocks), then sends two conversations that share it
with different user messages — first, second — to the server whose turn it is, then to the other; which server
goes first alternates. Both TTFTs are recorded as the server measures them (arrival -> first token, in the final
response's timings) and as the client sees them (request sent -> first streamed chunk). The prompts go as token
ids, so both servers see exactly the same tokens; the greedy outputs of the two servers are compared too.

Writes bench/results/prefix_cache.json. `--model models/gemma-3-270m-q4_k_m.gguf` runs Gemma 3 270M (its turns
in Gemma's chat markup), whose KV cache is in layer groups: a hit then shares the global layers' blocks and the
last window (512 positions) of the sliding layers' blocks; it writes bench/results/prefix_cache_gemma3.json.

  python3 bench/prefix_cache.py [--binary build/server/quantserve] [--repetitions 7] [--threads 0] [--model PATH]
"""
import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from bench_common import ROOT, find_binary, git_commit, load_average, machine_info  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "client", "python"))
from example import load_stubs  # noqa: E402  (stubs generated from the proto at run time)

MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "bench", "results", "prefix_cache.json")
SYSTEM_TOKENS = 1024
WORDS = ("model server cache block token prompt answer question careful helpful policy customer order refund "
         "shipping account password invoice product warranty support hours weekend holiday manager escalate "
         "polite concise accurate summary detail example format list table date time price discount region").split()
USERS = ["What are your support hours on weekends?", "How do I get a refund for a damaged product?"]
# Each model's chat markup: the system turn's opening and end, and a user turn up to the answer's start.
MARKUP = {
    "chatml": ("<|im_start|>system\n", "<|im_end|>\n", "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"),
    # Gemma 3 has no system role: its instructions open the first user turn.
    "gemma": ("<start_of_turn>user\n", "\n", "{}<end_of_turn>\n<start_of_turn>model\n"),
}


class Server:
    """One `quantserve serve` with its gRPC stub; stopped with SIGTERM."""

    def __init__(self, binary, model, prefix_cache, port, metrics_port, threads, pb2, pb2_grpc):
        self.name = f"prefix-cache-{prefix_cache}"
        self.metrics_port = metrics_port
        cmd = [binary, "serve", "--model", f"bench={model}", "--device", "cpu", "--threads", str(threads),
               "--prefix-cache", prefix_cache, "--listen", f"127.0.0.1:{port}",
               "--metrics-listen", f"127.0.0.1:{metrics_port}", "--http-listen", ""]
        # The log to a file: a stderr pipe nobody reads fills after ~64 KB of request lines and then blocks the server.
        self.log = tempfile.NamedTemporaryFile(prefix=f"quantserve-{self.name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb2_grpc.InferenceStub(self.channel)
        self.pb2 = pb2
        for _ in range(600):
            if self.proc.poll() is not None:
                with open(self.log.name, errors="replace") as f:
                    raise RuntimeError(f"{self.name} exited {self.proc.returncode} (log {self.log.name}): "
                                       f"{f.read()[-2000:]}")
            try:
                self.info = self.stub.GetModel(pb2.GetModelRequest(), timeout=2)
                return
            except grpc.RpcError:
                time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not come up")

    def tokenize(self, text):
        r = self.stub.Tokenize(self.pb2.TokenizeRequest(text=text, parse_special=True), timeout=30)
        return list(r.token_ids)

    def first_token(self, ids, max_new_tokens):
        """Streams one greedy request; (server TTFT, client TTFT, generated ids)."""
        request = self.pb2.GenerateRequest(prompt_token_ids=ids, max_new_tokens=max_new_tokens, temperature=0,
                                           ignore_eos=True)
        sent = time.perf_counter()
        client_ttft, server_ttft, out = None, None, []
        for chunk in self.stub.GenerateStream(request, timeout=600):
            if client_ttft is None and chunk.token_ids:
                client_ttft = time.perf_counter() - sent
            out += list(chunk.token_ids)
            if chunk.finish_reason:
                server_ttft = chunk.timings.time_to_first_token_seconds
        return server_ttft, client_ttft, out

    def counters(self):
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        values = {}
        for name in ("quantserve_prefix_cache_queried_tokens_total", "quantserve_prefix_cache_hit_tokens_total",
                     "quantserve_kv_cache_blocks_cached", "quantserve_kv_cache_window_blocks_cached"):
            m = re.search(rf"^{name}{{[^}}]*}} ([0-9.e+-]+)$", text, re.M)
            values[name] = float(m.group(1)) if m else None
        return values

    def stop(self):
        self.channel.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def system_prompt_ids(server, repetition, markup):
    """A system turn of exactly SYSTEM_TOKENS tokens in `markup`, its words drawn for this repetition."""
    words = [WORDS[(repetition * 7919 + i * i * 31 + i * 17) % len(WORDS)] for i in range(SYSTEM_TOKENS)]
    body = server.tokenize(f"{MARKUP[markup][0]}Rule set {repetition}: " + " ".join(words))
    end = server.tokenize(MARKUP[markup][1])
    ids = body[:SYSTEM_TOKENS - len(end)] + end
    if len(ids) != SYSTEM_TOKENS:
        raise RuntimeError(f"system prompt has {len(ids)} tokens, wanted {SYSTEM_TOKENS}")
    return ids


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary")
    ap.add_argument("--repetitions", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="server CPU threads (0 = all cores)")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--port", type=int, default=50671)
    ap.add_argument("--model", default=MODEL, help="a GGUF; Gemma's chat markup where the name says gemma")
    ap.add_argument("--out")
    args = ap.parse_args()
    binary = find_binary(args.binary)
    model = os.path.abspath(args.model)
    if not os.path.isfile(model):
        sys.exit(f"{model} missing: run scripts/setup.sh (--extra-models for Gemma 3)")
    markup = "gemma" if "gemma" in os.path.basename(model).lower() else "chatml"
    out = args.out or (OUT.replace(".json", "_gemma3.json") if markup == "gemma" else OUT)
    pb2, pb2_grpc = load_stubs()
    load_before = load_average()
    servers = {mode: Server(binary, model, mode, args.port + 2 * i, args.port + 2 * i + 1, args.threads, pb2, pb2_grpc)
               for i, mode in enumerate(("on", "off"))}
    runs = []
    try:
        users = [servers["on"].tokenize(MARKUP[markup][2].format(u)) for u in USERS]
        # Warm-up (first-touch allocations, thread pools), its own system prompt, not recorded.
        warm = system_prompt_ids(servers["on"], 1000, markup)
        for s in servers.values():
            for u in users:
                s.first_token(warm + u, 2)
        for r in range(args.repetitions):
            system = system_prompt_ids(servers["on"], r, markup)
            order = ("on", "off") if r % 2 == 0 else ("off", "on")
            for mode in order:
                first = servers[mode].first_token(system + users[0], args.max_new_tokens)
                second = servers[mode].first_token(system + users[1], args.max_new_tokens)
                runs.append({"repetition": r, "prefix_cache": mode, "prompt_tokens": [len(system) + len(u) for u in users],
                             "first_ttft_s": first[0], "second_ttft_s": second[0],
                             "first_client_ttft_s": first[1], "second_client_ttft_s": second[1],
                             "ratio": second[0] / first[0], "client_ratio": second[1] / first[1],
                             "ids": [first[2], second[2]]})
                print(f"rep {r} cache {mode:3}: first {first[0] * 1e3:7.1f} ms, second {second[0] * 1e3:7.1f} ms, "
                      f"ratio {second[0] / first[0]:.3f}", flush=True)
        counters = {mode: s.counters() for mode, s in servers.items()}
        info = servers["on"].info
    finally:
        for s in servers.values():
            s.stop()

    def summary(mode):
        rs = [x for x in runs if x["prefix_cache"] == mode]
        return {"median_ratio": statistics.median(x["ratio"] for x in rs),
                "median_client_ratio": statistics.median(x["client_ratio"] for x in rs),
                "median_first_ttft_ms": statistics.median(x["first_ttft_s"] for x in rs) * 1e3,
                "median_second_ttft_ms": statistics.median(x["second_ttft_s"] for x in rs) * 1e3,
                "ratios": [round(x["ratio"], 4) for x in rs]}

    same = all(a["ids"] == b["ids"] for a in runs if a["prefix_cache"] == "on"
               for b in runs if b["prefix_cache"] == "off" and b["repetition"] == a["repetition"])
    on, off = summary("on"), summary("off")
    result = {
        "benchmark": "prefix_cache",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine_info(args.threads or None),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "model": os.path.relpath(model, ROOT),
        "precision": info.precision,
        "device": info.device,
        "system_prompt_tokens": SYSTEM_TOKENS,
        "max_new_tokens": args.max_new_tokens,
        "repetitions": args.repetitions,
        "target_ratio": 0.2,
        "prefix_cache_on": on,
        "prefix_cache_off": off,
        "meets_target": on["median_ratio"] <= 0.2,
        "greedy_ids_same_on_and_off": same,
        "metrics_at_end": counters,
        "runs": [{k: v for k, v in x.items() if k != "ids"} for x in runs],
    }
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"median second/first TTFT: cache on {on['median_ratio']:.3f} ({on['median_first_ttft_ms']:.0f} -> "
          f"{on['median_second_ttft_ms']:.0f} ms), off {off['median_ratio']:.3f}; same ids: {same}; "
          f"wrote {out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
