#!/usr/bin/env python3
"""quantserve-client bench through both doors (gRPC and the OpenAI HTTP API, streamed and unary) against the real
server on the tiny GPT-2 fixture: the counts it reports agree with the server's own (usage and /metrics), its
errors are reported by kind, and both doors get the same prompt. No timing is asserted beyond "was measured".

    python3 tests/integration/client_bench_test.py --binary build/server/quantserve \
        --client build/client/quantserve-client [-k pattern]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import openai_api_test  # noqa: E402  (its Server: `quantserve serve` on free ports, ready once /health says ok)

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "models", "gpt2")
CLIENT = os.path.join(ROOT, "build", "client", "quantserve-client")
LIMIT = 32   # the server's --max-new-tokens


def bench(address, *args, token=None):
    """Runs `quantserve-client bench --json`; (exit code, summary or None, stderr)."""
    cmd = [CLIENT, "--address", address, "--timeout", "60"] + (["--token", token] if token else [])
    cmd += ["bench", "--json"] + list(args)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    try:
        summary = json.loads(p.stdout)
    except json.JSONDecodeError:
        summary = None
    return p.returncode, summary, p.stderr


def counters(server):
    return {name: server.metric(name) or 0.0
            for name in ("quantserve_requests_total", "quantserve_generated_tokens_total")}


class ClientBench(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = openai_api_test.Server(["--model", f"gpt2={FIXTURE}", "--device", "cpu", "--threads", "1",
                                             "--max-new-tokens", str(LIMIT), "--prefix-cache", "off"])
        cls.doors = {"grpc": f"127.0.0.1:{cls.server.grpc_port}", "http": f"127.0.0.1:{cls.server.http_port}"}

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def run_ok(self, api, stream):
        before = counters(self.server)
        rc, s, err = bench(self.doors[api], "--api", api, *([] if stream else ["--unary"]), "--concurrency", "3",
                           "--requests", "7", "--prompt-tokens", "16", "--max-new-tokens", "8")
        after = counters(self.server)
        self.assertEqual(rc, 0, err)
        self.assertEqual((s["api"], s["stream"], s["requests"], s["requests_ok"], s["errors"]),
                         (api, stream, 7, 7, {}))
        # ignore_eos: every request generates exactly what it asked for, as the server's usage said.
        self.assertEqual(s["generated_tokens"], 7 * 8)
        # The server's own count: the bench's requests plus its one-token prompt probes (k probes: k requests and
        # k tokens), so generated - requests is the bench's requests' tokens less one each.
        requests = after["quantserve_requests_total"] - before["quantserve_requests_total"]
        generated = after["quantserve_generated_tokens_total"] - before["quantserve_generated_tokens_total"]
        self.assertGreater(requests, 7)
        self.assertEqual(generated - requests, 7 * (8 - 1))
        self.assertTrue(0 < s["prompt_tokens"] <= 16, s["prompt_tokens"])
        self.assertGreater(s["tokens_per_second"], 0)
        self.assertGreater(s["request_latency_seconds"]["p50"], 0)
        if stream:
            # A chunk carries at least one token; the fixture's tokens may be part of a character (no text yet).
            self.assertTrue(0 < s["content_chunks"] <= s["generated_tokens"], s["content_chunks"])
            self.assertGreater(s["ttft_seconds"]["p50"], 0)
            self.assertGreaterEqual(s["inter_token_latency_seconds"]["p50"], 0)
        else:
            self.assertIsNone(s["ttft_seconds"])
            self.assertIsNone(s["inter_token_latency_seconds"])
        return s

    def test_grpc_streamed(self):
        self.run_ok("grpc", True)

    def test_grpc_unary(self):
        self.run_ok("grpc", False)

    def test_http_streamed(self):
        self.run_ok("http", True)

    def test_http_unary(self):
        self.run_ok("http", False)

    def test_both_doors_get_the_same_prompt(self):
        grpc_summary, http_summary = self.run_ok("grpc", False), self.run_ok("http", True)
        self.assertEqual(grpc_summary["prompt_tokens"], http_summary["prompt_tokens"])

    def test_refused_requests_are_counted_by_kind_with_the_servers_words(self):
        for api, kind in (("grpc", "INVALID_ARGUMENT"), ("http", "HTTP 400")):
            for stream in (True, False):
                with self.subTest(api=api, stream=stream):
                    rc, s, err = bench(self.doors[api], "--api", api, *([] if stream else ["--unary"]),
                                       "--concurrency", "2", "--requests", "4", "--max-new-tokens", str(LIMIT + 1))
                    self.assertEqual(rc, 1, err)   # no request succeeded
                    self.assertEqual((s["requests"], s["requests_ok"], s["errors"]), (4, 0, {kind: 4}))
                    self.assertIn("limit", s["error_messages"][kind])
                    self.assertEqual(s["generated_tokens"], 0)

    def test_no_server_is_a_clear_error(self):
        port = openai_api_test.free_port()
        rc, s, err = bench(f"127.0.0.1:{port}", "--api", "http", "--requests", "1")
        self.assertEqual(rc, 1)
        self.assertIsNone(s)
        self.assertIn("curl: Couldn't connect", err)


class ClientBenchAuth(unittest.TestCase):
    """A server with bearer tokens: the HTTP door sends the client's --token."""

    def test_token_is_sent_and_a_missing_one_is_refused(self):
        token = "loadgen-test-token-0123456789"
        with tempfile.NamedTemporaryFile("w", suffix=".tokens", delete=False) as f:
            f.write(token + "\n")
        server = openai_api_test.Server(["--model", f"gpt2={FIXTURE}", "--device", "cpu", "--threads", "1",
                                         "--auth-token-file", f.name])
        try:
            address = f"127.0.0.1:{server.http_port}"
            rc, s, err = bench(address, "--api", "http", "--requests", "2", "--max-new-tokens", "4", token=token)
            self.assertEqual(rc, 0, err)
            self.assertEqual((s["requests_ok"], s["generated_tokens"]), (2, 8))
            rc, s, err = bench(address, "--api", "http", "--requests", "2")
            self.assertEqual(rc, 1)
            self.assertIn("HTTP 401", err)
        finally:
            server.stop()
            os.unlink(f.name)


def main():
    global CLIENT
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=openai_api_test.BINARY)
    parser.add_argument("--client", default=CLIENT)
    args, rest = parser.parse_known_args()
    openai_api_test.BINARY = os.path.abspath(args.binary)
    CLIENT = os.path.abspath(args.client)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
