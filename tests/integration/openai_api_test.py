#!/usr/bin/env python3
"""The OpenAI-compatible HTTP API against the real quantserve binary, with the official `openai` client.

Two servers: the default model (SmolLM2-135M-Instruct, int8) for real text, chat templates and the comparison with
the gRPC API; the tiny GPT-2 fixture slowed down per step (--step-delay-ms) for what needs time to observe: a full
queue, a client that leaves mid-stream, SIGTERM drain, slow and idle connections.

    python3 tests/integration/openai_api_test.py --binary build/server/quantserve [-k pattern]
"""
import argparse
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import openai

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from quantserve_grpc import free_port, load_stubs as load_grpc_stubs  # noqa: E402
DEFAULT_MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "models", "gpt2")
BINARY = os.environ.get("QUANTSERVE_BIN", os.path.join(ROOT, "build", "server", "quantserve"))


class Server:
    """`quantserve serve` on free loopback ports; waits until GET /health says ok."""

    def __init__(self, args, timeout=180, health_tls_ca=None):
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="quantserve-openai-", suffix=".log", delete=False)
        cmd = [BINARY, "serve", "--listen", f"127.0.0.1:{self.grpc_port}",
               "--http-listen", f"127.0.0.1:{self.http_port}",
               "--metrics-listen", f"127.0.0.1:{self.metrics_port}"] + args
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"quantserve exited with {self.proc.returncode}:\n{self.read_log()}")
            if health_tls_ca:
                import ssl
                try:
                    c = http.client.HTTPSConnection("localhost", self.http_port, timeout=5,
                                                    context=ssl.create_default_context(cafile=health_tls_ca))
                    c.request("GET", "/health")
                    if c.getresponse().status == 200:
                        return
                except (OSError, http.client.HTTPException):
                    pass
            elif self.get("/health")[0] == 200:
                return
            time.sleep(0.2)
        raise RuntimeError(f"quantserve not healthy after {timeout}s:\n{self.read_log()}")

    def read_log(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def client(self, **kwargs):
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.http_port}/v1", api_key="unused", max_retries=0,
                             timeout=120, **kwargs)

    def request(self, method, path, body=None, headers=None, timeout=30):
        """Raw HTTP: (status, body bytes, headers); (0, b"", {}) when the connection fails."""
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            c.close()
            return r.status, data, dict(r.getheaders())
        except (OSError, http.client.HTTPException):
            return 0, b"", {}

    def get(self, path):
        status, data, _ = self.request("GET", path, timeout=5)
        return status, data

    def post_json(self, path, payload, content_type="application/json"):
        body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        return self.request("POST", path, body=body, headers={"Content-Type": content_type})

    def metric(self, name, *labels):
        """Sum of the samples of `name` whose labels contain every string in `labels`."""
        c = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=5)
        try:
            c.request("GET", "/metrics")
            text = c.getresponse().read().decode()
        finally:
            c.close()
        total, found = 0.0, False
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                if all(label in line for label in labels):
                    total += float(line.rsplit(" ", 1)[1])
                    found = True
        return total if found else None

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class DefaultModel(unittest.TestCase):
    """Real text: the default model at int8."""

    @classmethod
    def setUpClass(cls):
        # Prefix caching off: the comparisons with gRPC ask the same prompt twice, and a cached prefix takes other
        # kernel paths (a shorter prefill), which may move a near-tie in int8 greedy decoding.
        cls.server = Server(["--model", DEFAULT_MODEL, "--precision", "int8", "--threads", "2",
                             "--max-new-tokens", "256", "--max-prompt-tokens", "512", "--prefix-cache", "off"])
        cls.client = cls.server.client()
        cls.model = cls.client.models.list().data[0].id

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def chat(self, content, **kwargs):
        return self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": content}], **kwargs)

    def test_models_list_and_retrieve(self):
        models = self.client.models.list().data
        self.assertEqual(len(models), 1)
        self.assertEqual(models[0].object, "model")
        self.assertEqual(self.client.models.retrieve(self.model).id, self.model)
        with self.assertRaises(openai.NotFoundError):
            self.client.models.retrieve("no-such-model")

    def test_chat_greedy_answers_and_reports_usage(self):
        r = self.chat("What is the capital of France?", temperature=0, max_tokens=24)
        self.assertEqual(r.object, "chat.completion")
        self.assertTrue(r.id.startswith("chatcmpl-"))
        self.assertEqual(r.model, self.model)
        choice = r.choices[0]
        self.assertEqual(choice.message.role, "assistant")
        # The engine's own answer, not a fixed string: int8 greedy text of a 135M model turns on the last bits of
        # its rounding (it answers "Paris" in fp32, a list of French words in int8 by row or by group), and which
        # rounding is right is not the API's business. `quantserve generate` applies the same chat template.
        local = subprocess.run([BINARY, "generate", "--model", DEFAULT_MODEL, "--precision", "int8", "--threads",
                                "2", "-t", "0", "-n", "24", "What is the capital of France?"],
                               capture_output=True, text=True, timeout=120, check=True).stdout
        self.assertTrue(choice.message.content)
        self.assertEqual(choice.message.content.strip(), local.strip())
        if choice.finish_reason == "length":
            self.assertEqual(r.usage.completion_tokens, 24)
        else:
            self.assertEqual(choice.finish_reason, "stop")
            self.assertLessEqual(r.usage.completion_tokens, 24)
        self.assertGreater(r.usage.prompt_tokens, 5)
        self.assertGreater(r.usage.completion_tokens, 0)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)

    def test_chat_multi_turn_goes_through_the_template(self):
        messages = [{"role": "system", "content": "You are a terse assistant."},
                    {"role": "user", "content": "My name is Ada."},
                    {"role": "assistant", "content": "Hello Ada."},
                    {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]}]
        r = self.client.chat.completions.create(model=self.model, messages=messages, temperature=0, max_tokens=16)
        self.assertTrue(r.choices[0].message.content)
        one = self.client.chat.completions.create(model=self.model, messages=[messages[0], messages[3]],
                                                  temperature=0, max_tokens=16)
        self.assertGreater(r.usage.prompt_tokens, one.usage.prompt_tokens + 10)
        # Through gRPC's messages field the same conversation gives the same tokens (one template, two doors).
        pb2, pb2_grpc = load_grpc_stubs()
        import grpc
        with grpc.insecure_channel(f"127.0.0.1:{self.server.grpc_port}") as channel:
            turns = [pb2.ChatMessage(role=m["role"], content=m["content"] if isinstance(m["content"], str)
                                     else m["content"][0]["text"]) for m in messages]
            g = pb2_grpc.InferenceStub(channel).Generate(
                pb2.GenerateRequest(messages=turns, max_new_tokens=16, temperature=0), timeout=120)
        self.assertEqual(g.text, r.choices[0].message.content)
        self.assertEqual(g.usage.prompt_tokens, r.usage.prompt_tokens)

    def test_chat_stream_equals_the_whole_reply_and_carries_usage(self):
        whole = self.chat("Name three colours.", temperature=0, max_tokens=20)
        chunks = list(self.chat("Name three colours.", temperature=0, max_tokens=20, stream=True,
                                stream_options={"include_usage": True}))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, whole.choices[0].message.content)
        finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(finals, [whole.choices[0].finish_reason])
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, whole.usage.completion_tokens)
        self.assertEqual(chunks[-1].usage.prompt_tokens, whole.usage.prompt_tokens)
        self.assertTrue(all(c.usage is None for c in chunks[:-1]))

    def test_completions_default_max_tokens_stream_and_length(self):
        r = self.client.completions.create(model=self.model, prompt="The history of Rome", temperature=0,
                                           extra_body={"ignore_eos": True})
        self.assertEqual(r.object, "text_completion")
        self.assertEqual(r.usage.completion_tokens, 16)   # OpenAI's default max_tokens
        self.assertEqual(r.choices[0].finish_reason, "length")
        streamed = "".join(c.choices[0].text for c in self.client.completions.create(
            model=self.model, prompt="The history of Rome", temperature=0, stream=True,
            extra_body={"ignore_eos": True}))
        self.assertEqual(streamed, r.choices[0].text)

    def test_stop_sequences_end_the_text_before_them(self):
        r = self.client.completions.create(model=self.model, prompt="1, 2, 3, 4,", temperature=0, max_tokens=30,
                                           stop=[" 7", "\n\n"])
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertNotIn(" 7", r.choices[0].text)
        self.assertIn("6", r.choices[0].text)

    def test_seeded_sampling_is_reproducible(self):
        kwargs = dict(temperature=1.0, top_p=0.95, max_tokens=24, seed=1234)
        a = self.chat("Write a line about the sea.", **kwargs).choices[0].message.content
        b = self.chat("Write a line about the sea.", **kwargs).choices[0].message.content
        self.assertEqual(a, b)
        others = {self.chat("Write a line about the sea.", **dict(kwargs, seed=s)).choices[0].message.content
                  for s in (1, 2, 3)}
        self.assertGreater(len(others | {a}), 1)

    def test_same_greedy_text_as_grpc(self):
        pb2, pb2_grpc = load_grpc_stubs()
        import grpc
        channel = grpc.insecure_channel(f"127.0.0.1:{self.server.grpc_port}")
        stub = pb2_grpc.InferenceStub(channel)
        prompt = "Quantization of neural networks"
        g = stub.Generate(pb2.GenerateRequest(prompt=prompt, max_new_tokens=24, temperature=0, ignore_eos=True),
                          timeout=120)
        h = self.client.completions.create(model=self.model, prompt=prompt, temperature=0, max_tokens=24,
                                           extra_body={"ignore_eos": True})
        self.assertEqual(h.choices[0].text, g.text)
        gc = stub.Generate(pb2.GenerateRequest(prompt="What is 2+2?", chat=True, max_new_tokens=24, temperature=0),
                           timeout=120)
        hc = self.chat("What is 2+2?", temperature=0, max_tokens=24)
        self.assertEqual(hc.choices[0].message.content, gc.text)
        self.assertEqual(hc.usage.prompt_tokens, gc.usage.prompt_tokens)
        channel.close()

    def test_logprobs_in_both_shapes(self):
        r = self.chat("Say hello.", temperature=0, max_tokens=8, logprobs=True, top_logprobs=3)
        content = r.choices[0].logprobs.content
        self.assertGreater(len(content), 0)
        for entry in content:
            self.assertLessEqual(entry.logprob, 0)
            self.assertEqual(len(entry.top_logprobs), 3)
            tops = [t.logprob for t in entry.top_logprobs]
            self.assertEqual(tops, sorted(tops, reverse=True))
            self.assertAlmostEqual(entry.top_logprobs[0].logprob, entry.logprob, places=4)   # greedy
        c = self.client.completions.create(model=self.model, prompt="Hello", temperature=0, max_tokens=5,
                                           logprobs=2, extra_body={"ignore_eos": True})
        lp = c.choices[0].logprobs
        self.assertEqual(len(lp.tokens), 5)
        self.assertEqual(len(lp.token_logprobs), 5)
        self.assertTrue(all(len(t) <= 2 for t in lp.top_logprobs))
        self.assertEqual(lp.text_offset[0], 0)
        self.assertEqual("".join(lp.tokens), c.choices[0].text)

    def test_penalties_apply_within_range(self):
        # Greedy on "1 1 1 1" repeats itself; penalties on the generated 1s must break the repetition.
        kwargs = dict(model=self.model, prompt="1 1 1 1 1 1 1 1", temperature=0, max_tokens=12,
                      extra_body={"ignore_eos": True})
        plain = self.client.completions.create(**kwargs).choices[0].text
        penalised = self.client.completions.create(presence_penalty=2.0, frequency_penalty=2.0, **kwargs).choices[0].text
        self.assertNotEqual(plain, penalised)
        self.assertLess(penalised.count(" 1"), plain.count(" 1"))
        with self.assertRaises(openai.BadRequestError) as e:
            self.chat("x", presence_penalty=2.5)
        self.assertEqual(e.exception.body["param"], "presence_penalty")

    def test_errors_name_the_parameter(self):
        cases = [
            (dict(temperature=-1), "temperature"),
            (dict(top_p=0), "top_p"),
            (dict(n=2), "n"),
            (dict(max_tokens=100000), "max_tokens"),
            (dict(top_logprobs=3), "top_logprobs"),
            (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]), "tools"),
            (dict(stop=[""]), "stop"),
        ]
        for kwargs, param in cases:
            with self.subTest(param=param):
                with self.assertRaises(openai.BadRequestError) as e:
                    self.chat("x", **kwargs)
                self.assertEqual(e.exception.status_code, 400)
                self.assertEqual(e.exception.body["param"], param)
                self.assertIn(param, e.exception.body["message"])
        with self.assertRaises(openai.BadRequestError):
            self.client.chat.completions.create(model=self.model, messages=[{"role": "tool", "content": "x"}])
        with self.assertRaises(openai.NotFoundError) as e:
            self.client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        self.assertEqual(e.exception.body["code"], "model_not_found")
        with self.assertRaises(openai.BadRequestError) as e:   # over --max-prompt-tokens 512 after tokenizing
            self.client.completions.create(model=self.model, prompt="word " * 2000, max_tokens=4)
        self.assertIn("--max-prompt-tokens", e.exception.body["message"])

    def test_bad_bodies_never_break_the_server(self):
        s = self.server
        for body, content_type, status in [
            (b"{not json", "application/json", 400),
            (b"[1, 2, 3]", "application/json", 400),
            (b"\xff\xfe\x00garbage", "application/json", 400),
            (b"[" * 100000, "application/json", 400),
            (json.dumps({"prompt": "hi"}), "text/plain", 415),
            (json.dumps({"prompt": ["a", "b"]}), "application/json", 400),
            (json.dumps({"prompt": {"x": 1}}), "application/json", 400),
            (json.dumps({"prompt": [-1]}), "application/json", 400),
            (json.dumps({"prompt": [10 ** 9]}), "application/json", 400),
            (json.dumps({"prompt": "hi", "max_tokens": "ten"}), "application/json", 400),
            (json.dumps({"prompt": "hi", "temperature": None}), "application/json", 200),
        ]:
            with self.subTest(body=body[:40]):
                got, data, _ = s.post_json("/v1/completions", body, content_type)
                self.assertEqual(got, status, data[:300])
                if status != 200:
                    self.assertIn("message", json.loads(data)["error"])
        # Over --max-message-bytes (4 MiB): refused from the headers, before the body is read.
        with socket.create_connection(("127.0.0.1", s.http_port), timeout=10) as raw:
            raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 5242880\r\n\r\n" + b"x" * 1000)
            reply = raw.recv(4096)
        self.assertTrue(reply.startswith(b"HTTP/1.1 413"), reply[:200])
        self.assertIn(b"request_too_large", reply)
        self.assertEqual(s.request("GET", "/v1/nothing")[0], 404)
        self.assertEqual(s.request("GET", "/v1/chat/completions")[0], 405)
        self.assertEqual(s.request("POST", "/v1/models")[0], 405)
        self.assertEqual(s.get("/health")[0], 200)
        self.assertIsNotNone(self.chat("Hi", max_tokens=2).choices[0].message)

    def test_response_format_constrains_the_reply_to_json(self):
        import jsonschema
        schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
                  "required": ["city", "population"], "additionalProperties": False}
        for stream in (False, True):
            with self.subTest(stream=stream):
                kwargs = dict(temperature=0, max_tokens=64,
                              response_format={"type": "json_schema",
                                               "json_schema": {"name": "city", "schema": schema, "strict": True}})
                if stream:
                    text = "".join(c.choices[0].delta.content or "" for c in
                                   self.chat("Describe Paris as JSON.", stream=True, **kwargs) if c.choices)
                else:
                    r = self.chat("Describe Paris as JSON.", **kwargs)
                    self.assertEqual(r.choices[0].finish_reason, "stop")
                    text = r.choices[0].message.content
                jsonschema.validate(json.loads(text), schema)
        r = self.chat("Give me a JSON object about cats.", temperature=0.8, seed=7, max_tokens=96,
                      response_format={"type": "json_object"})
        if r.choices[0].finish_reason == "stop":
            self.assertIsInstance(json.loads(r.choices[0].message.content), dict)
        with self.assertRaises(openai.BadRequestError) as e:
            self.chat("x", response_format={"type": "json_schema",
                                            "json_schema": {"name": "x", "schema": {"type": "object",
                                                                                     "patternProperties": {}}}})
        self.assertEqual(e.exception.body["param"], "response_format")
        self.assertIn("patternProperties", e.exception.body["message"])
        with self.assertRaises(openai.BadRequestError):
            self.chat("x", response_format={"type": "yaml"})

    def test_quantization_error_and_bytes_saved_are_exported(self):
        s = self.server
        for tensor_class in ("attention", "mlp"):
            mean = s.metric("quantserve_quantization_relative_error", 'precision="int8"',
                            f'tensor_class="{tensor_class}"', 'stat="mean"')
            worst = s.metric("quantserve_quantization_relative_error", 'precision="int8"',
                             f'tensor_class="{tensor_class}"', 'stat="max"')
            self.assertGreater(mean, 0.001)   # int8 per-row scales: about 1%
            self.assertLess(worst, 0.05)      # the alert's bound
            self.assertLessEqual(mean, worst)
        self.assertGreater(s.metric("quantserve_model_weight_bytes_saved", 'precision="int8"'), 100e6)

    def test_requests_are_counted_by_api(self):
        before = self.server.metric("quantserve_requests_total", 'api="http"', 'status="OK"') or 0
        self.chat("Hi", max_tokens=2)
        after = self.server.metric("quantserve_requests_total", 'api="http"', 'status="OK"')
        self.assertEqual(after, before + 1)
        self.assertIsNotNone(self.server.metric("quantserve_api_request_duration_seconds_count", 'api="http"'))
        self.assertIsNotNone(self.server.metric("quantserve_requests_total", 'api="grpc"'))


class SlowServer(unittest.TestCase):
    """The tiny fixture at 30 ms a step, one sequence at a time, one waiting: time to watch things happen."""

    def start(self, *extra):
        return Server(["--model", f"gpt2={FIXTURE}", "--device", "cpu", "--threads", "1", "--step-delay-ms", "30",
                       "--max-batch-size", "1", "--max-queued", "1", "--drain-grace-seconds", "20",
                       "--http-request-timeout", "2"] + list(extra))

    def setUp(self):
        self.server = self.start()
        self.client = self.server.client()

    def tearDown(self):
        self.server.stop(signal.SIGKILL)

    def long_stream(self, max_tokens=120):   # the fixture's context is 128
        return self.client.completions.create(model="gpt2", prompt="Hello", max_tokens=max_tokens, stream=True,
                                              extra_body={"ignore_eos": True})

    def wait_for(self, predicate, timeout=10):
        end = time.time() + timeout
        while time.time() < end:
            if predicate():
                return True
            time.sleep(0.05)
        return False

    def test_client_leaving_mid_stream_frees_its_kv_blocks(self):
        stream = self.long_stream()
        for i, _ in enumerate(stream):
            if i == 3:
                break
        self.assertGreater(self.server.metric("quantserve_kv_cache_blocks_used"), 0)
        t0 = time.time()
        stream.close()
        stream.response.close()
        self.assertTrue(self.wait_for(lambda: self.server.metric("quantserve_kv_cache_blocks_used") == 0, 5),
                        self.server.read_log()[-2000:])
        self.assertLess(time.time() - t0, 2.0)
        self.assertTrue(self.wait_for(lambda: self.server.metric(
            "quantserve_requests_total", 'api="http"', 'status="CANCELLED"') == 1))
        self.assertEqual(self.client.completions.create(model="gpt2", prompt="Hi", max_tokens=2).usage
                         .completion_tokens, 2)

    def test_full_queue_is_429_with_retry_after(self):
        running = self.long_stream()
        next(iter(running))
        waiting = threading.Thread(target=lambda: self.client.completions.create(
            model="gpt2", prompt="wait", max_tokens=2))
        waiting.start()
        self.assertTrue(self.wait_for(lambda: self.server.metric("quantserve_requests_waiting") == 1))
        t0 = time.time()
        status, data, headers = self.server.post_json("/v1/completions", {"prompt": "third", "max_tokens": 2})
        self.assertEqual(status, 429, data)
        self.assertLess(time.time() - t0, 1.0)
        self.assertEqual(headers.get("Retry-After"), "1")
        self.assertEqual(json.loads(data)["error"]["type"], "rate_limit_error")
        running.close()
        waiting.join(30)

    def test_sigterm_drains_running_streams_and_refuses_new_work(self):
        stream = self.client.completions.create(model="gpt2", prompt="Hello", max_tokens=40, stream=True,
                                                extra_body={"ignore_eos": True})
        first = next(iter(stream))
        self.server.proc.send_signal(signal.SIGTERM)
        self.assertTrue(self.wait_for(lambda: self.server.get("/health")[0] == 503))
        status, data, headers = self.server.post_json("/v1/completions", {"prompt": "late", "max_tokens": 2})
        self.assertEqual(status, 503, data)
        text = first.choices[0].text + "".join(c.choices[0].text for c in stream)
        self.assertGreater(len(text), 0)
        self.assertEqual(self.server.proc.wait(30), 0)
        log = self.server.read_log()
        self.assertRegex(log, r"api=http .*generated_tokens=40 .*status=OK")

    def test_slow_and_idle_connections_do_not_block_others(self):
        # A client trickling its headers a byte at a time, and 1,000 idle connections: others (the API and the
        # /metrics scrape, the same HTTP server) are answered at once, and the trickler is cut off at
        # --http-request-timeout (2 s) even though it keeps sending.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
        idle = []
        for _ in range(1000):
            s = socket.create_connection(("127.0.0.1", self.server.http_port))
            idle.append(s)
        trickler = socket.create_connection(("127.0.0.1", self.server.http_port))
        cut = threading.Event()

        def trickle():
            try:
                for byte in b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n" + b"X" * 100:
                    trickler.send(bytes([byte]))
                    time.sleep(0.2)
            except OSError:
                cut.set()
                return
            if trickler.recv(1) == b"":
                cut.set()

        t = threading.Thread(target=trickle)
        t.start()
        t0 = time.time()
        for _ in range(10):
            self.assertEqual(self.server.get("/health")[0], 200)
            self.assertIsNotNone(self.server.metric("quantserve_requests_total"))
        self.assertLess(time.time() - t0, 2.0)
        self.assertTrue(cut.wait(6), "the trickling client was not cut off")
        t.join(10)
        for s in idle:
            s.close()
        trickler.close()
        self.assertEqual(self.client.completions.create(model="gpt2", prompt="Hi", max_tokens=2).usage
                         .completion_tokens, 2)

    def test_connection_storm_and_garbage(self):
        def one(i):
            try:
                with socket.create_connection(("127.0.0.1", self.server.http_port), timeout=10) as s:
                    s.sendall([b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00\xff garbage\r\n\r\n",
                               b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n"][i % 3])
                    s.recv(4096)
            except OSError:
                pass

        threads = [threading.Thread(target=one, args=(i,)) for i in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(self.server.get("/health")[0], 200)
        self.assertTrue(self.wait_for(lambda: self.server.proc.poll() is None))


class Tokens(unittest.TestCase):
    """--auth-token-file on both doors: a full token, a read-only one, rotation by rewriting the file."""

    FULL, READ, NEW = "full-token-0123456789abcdef", "read-token-0123456789abcdef", "rotated-token-0123456789ab"

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="quantserve-auth-")
        cls.token_file = os.path.join(cls.dir, "tokens")
        with open(cls.token_file, "w") as f:
            f.write(f"# comment\n{cls.FULL}\n{cls.READ} read\n")
        cls.server = Server(["--model", f"gpt2={FIXTURE}", "--device", "cpu", "--threads", "1",
                             "--auth-token-file", cls.token_file])
        cls.pb2, pb2_grpc = load_grpc_stubs()
        import grpc
        cls.grpc = grpc
        cls.channel = grpc.insecure_channel(f"127.0.0.1:{cls.server.grpc_port}")
        cls.stub = pb2_grpc.InferenceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.server.stop()

    def http(self, token):
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.server.http_port}/v1", api_key=token,
                             max_retries=0, timeout=60)

    def generate(self, token):
        metadata = [("authorization", f"Bearer {token}")] if token is not None else []
        return self.stub.Generate(self.pb2.GenerateRequest(prompt="Hello", max_new_tokens=2), metadata=metadata,
                                  timeout=30)

    def test_http_tokens_and_scopes(self):
        self.assertEqual(self.http(self.FULL).completions.create(model="gpt2", prompt="Hi", max_tokens=2)
                         .usage.completion_tokens, 2)
        for bad in ("x", "wrong-token-0123456789abcdef", self.FULL[:-1]):
            with self.subTest(token=bad[:6]):
                with self.assertRaises(openai.AuthenticationError) as e:
                    self.http(bad).completions.create(model="gpt2", prompt="Hi", max_tokens=2)
                self.assertNotIn(self.FULL, json.dumps(e.exception.body))
        status, _, headers = self.server.post_json("/v1/completions", {"prompt": "Hi"})
        self.assertEqual(status, 401)
        self.assertEqual(headers.get("WWW-Authenticate"), "Bearer")
        self.assertEqual(len(self.http(self.READ).models.list().data), 1)
        with self.assertRaises(openai.PermissionDeniedError):
            self.http(self.READ).completions.create(model="gpt2", prompt="Hi", max_tokens=2)
        self.assertEqual(self.server.get("/health")[0], 200)   # probes need no token

    def test_grpc_tokens_scopes_and_open_health(self):
        grpc = self.grpc
        self.assertEqual(self.generate(self.FULL).usage.generated_tokens, 2)
        for token, code in ((None, grpc.StatusCode.UNAUTHENTICATED), ("nope-0123456789abcdef", grpc.StatusCode.UNAUTHENTICATED),
                            (self.READ, grpc.StatusCode.PERMISSION_DENIED)):
            with self.subTest(code=code):
                with self.assertRaises(grpc.RpcError) as e:
                    self.generate(token)
                self.assertEqual(e.exception.code(), code)
                self.assertNotIn(self.FULL, e.exception.details())
        with self.assertRaises(grpc.RpcError) as e:
            list(self.stub.GenerateStream(self.pb2.GenerateRequest(prompt="Hello", max_new_tokens=2), timeout=30))
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        models = self.stub.ListModels(self.pb2.ListModelsRequest(), metadata=[("authorization", f"Bearer {self.READ}")],
                                      timeout=30)
        self.assertEqual(len(models.models), 1)
        client = os.path.join(os.path.dirname(os.path.dirname(BINARY)), "client", "quantserve-client")
        address = f"127.0.0.1:{self.server.grpc_port}"
        self.assertEqual(subprocess.run([client, "--address", address, "health"], capture_output=True).returncode, 0)
        refused = subprocess.run([client, "--address", address, "generate", "--max-new-tokens", "2", "Hi"], capture_output=True,
                                 text=True)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("UNAUTHENTICATED", refused.stderr)
        ok = subprocess.run([client, "--address", address, "--token", self.FULL, "generate", "--max-new-tokens", "2", "Hi"],
                            capture_output=True, text=True)
        self.assertEqual(ok.returncode, 0, ok.stderr)
        example = [sys.executable, os.path.join(ROOT, "client", "python", "example.py"), "--address", address,
                   "--max-new-tokens", "2", "Hi"]
        self.assertNotEqual(subprocess.run(example, capture_output=True).returncode, 0)
        self.assertEqual(subprocess.run(example + ["--token", self.FULL], capture_output=True).returncode, 0)

    def test_rotation_by_rewriting_the_file(self):
        with open(self.token_file + ".new", "w") as f:
            f.write(f"{self.NEW}\n{self.READ} read\n")
        os.replace(self.token_file + ".new", self.token_file)   # as a Secret update swaps the file
        end = time.time() + 10
        while time.time() < end:
            try:
                self.generate(self.NEW)
                break
            except self.grpc.RpcError:
                time.sleep(0.25)
        self.assertEqual(self.generate(self.NEW).usage.generated_tokens, 2)
        with self.assertRaises(self.grpc.RpcError):
            self.generate(self.FULL)
        with open(self.token_file, "w") as f:   # put the first token back for the other tests
            f.write(f"{self.FULL}\n{self.READ} read\n")
        time.sleep(3)


class Watchdog(unittest.TestCase):
    """A stuck engine (here: 3 s steps) with work queued turns health NOT_SERVING, and back once it moves."""

    def test_stalled_engine_turns_health_not_serving(self):
        import grpc
        server = Server(["--model", f"gpt2={FIXTURE}", "--device", "cpu", "--threads", "1", "--step-delay-ms", "3000",
                         "--engine-stall-seconds", "1"])
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
            check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)

            def status(service):   # HealthCheckRequest{service}, HealthCheckResponse{status}: 1 SERVING, 2 NOT_SERVING
                name = service.encode()
                reply = check(b"\x0a" + bytes([len(name)]) + name if name else b"", timeout=5)
                return reply[1] if len(reply) > 1 else 0

            self.assertEqual((status(""), status("quantserve.liveness")), (1, 1))
            worker = threading.Thread(target=lambda: server.client().completions.create(
                model="gpt2", prompt="Hi", max_tokens=3, extra_body={"ignore_eos": True}))
            worker.start()
            end, seen = time.time() + 15, False
            while time.time() < end and not seen:
                seen = server.get("/health") == (503, b'{"status":"stalled"}\n')
                time.sleep(0.2)
            self.assertTrue(seen, server.read_log()[-1500:])
            self.assertEqual((status(""), status("quantserve.liveness")), (2, 2))
            worker.join(60)
            end = time.time() + 10
            while time.time() < end and server.get("/health")[0] != 200:
                time.sleep(0.2)
            self.assertEqual(server.get("/health")[0], 200)
            self.assertEqual(status("quantserve.liveness"), 1)
            self.assertIn("watchdog: the engine of model gpt2 made no progress", server.read_log())
            channel.close()
        finally:
            server.stop(signal.SIGKILL)


def make_ca_and_cert(directory, name):
    """A CA and a certificate it signed for localhost / 127.0.0.1, with openssl: (ca, cert, key) paths."""
    ca_key, ca, key, csr, cert = (os.path.join(directory, f"{name}-{x}") for x in
                                  ("ca.key", "ca.pem", "key.pem", "csr.pem", "cert.pem"))
    ext = os.path.join(directory, f"{name}.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    quiet = dict(check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
                    "-days", "2", "-subj", f"/CN={name} test CA"], **quiet)
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
                    "-subj", "/CN=localhost"], **quiet)
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                    "-out", cert, "-days", "2", "-extfile", ext], **quiet)
    return ca, cert, key


class Tls(unittest.TestCase):
    """--tls-cert / --tls-key on both doors, --tls-client-ca (mutual TLS) on gRPC, a certificate renewed in place."""

    @classmethod
    def setUpClass(cls):
        import grpc
        cls.grpc = grpc
        cls.pb2, cls.pb2_grpc = load_grpc_stubs()
        cls.dir = tempfile.mkdtemp(prefix="quantserve-tls-")
        cls.ca, cert, key = make_ca_and_cert(cls.dir, "server")
        cls.client_ca, cls.client_cert, cls.client_key = make_ca_and_cert(cls.dir, "client")
        cls.cert, cls.key = os.path.join(cls.dir, "serving-cert.pem"), os.path.join(cls.dir, "serving-key.pem")
        os.replace(cert, cls.cert)
        os.replace(key, cls.key)
        cls.server = Server(["--model", f"gpt2={FIXTURE}", "--device", "cpu", "--threads", "1",
                             "--tls-cert", cls.cert, "--tls-key", cls.key, "--tls-client-ca", cls.client_ca],
                            health_tls_ca=cls.ca)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def channel(self, ca, client_cert=True):
        read = lambda p: open(p, "rb").read()
        creds = self.grpc.ssl_channel_credentials(
            root_certificates=read(ca), private_key=read(self.client_key) if client_cert else None,
            certificate_chain=read(self.client_cert) if client_cert else None)
        return self.grpc.secure_channel(f"localhost:{self.server.grpc_port}", creds)

    def generate(self, channel):
        stub = self.pb2_grpc.InferenceStub(channel)
        return stub.Generate(self.pb2.GenerateRequest(prompt="Hello", max_new_tokens=2), timeout=10)

    def test_grpc_mutual_tls(self):
        with self.channel(self.ca) as c:
            self.assertEqual(self.generate(c).usage.generated_tokens, 2)
        with self.channel(self.ca, client_cert=False) as c, self.assertRaises(self.grpc.RpcError):
            self.generate(c)   # no client certificate: the handshake fails
        with self.grpc.insecure_channel(f"127.0.0.1:{self.server.grpc_port}") as c, \
                self.assertRaises(self.grpc.RpcError):
            self.generate(c)   # plaintext against TLS
        client = os.path.join(os.path.dirname(os.path.dirname(BINARY)), "client", "quantserve-client")
        ok = subprocess.run([client, "--address", f"localhost:{self.server.grpc_port}", "--tls-ca", self.ca,
                             "--tls-cert", self.client_cert, "--tls-key", self.client_key, "generate",
                             "--max-new-tokens", "2", "Hi"], capture_output=True, text=True)
        self.assertEqual(ok.returncode, 0, ok.stderr)

    def test_https_openai_api(self):
        client = openai.OpenAI(base_url=f"https://localhost:{self.server.http_port}/v1", api_key="unused",
                               max_retries=0, timeout=30, http_client=openai.DefaultHttpx2Client(verify=self.ca))
        self.assertEqual(client.completions.create(model="gpt2", prompt="Hi", max_tokens=2).usage.completion_tokens, 2)
        self.assertEqual(self.server.request("GET", "/health")[0], 0)   # plaintext HTTP gets no answer

    def test_zz_renewed_certificate_is_served_without_a_restart(self):
        new_ca, cert, key = make_ca_and_cert(self.dir, "renewed")
        os.replace(key, self.key)
        os.replace(cert, self.cert)
        end, served = time.time() + 20, False
        while time.time() < end and not served:
            try:
                with self.channel(new_ca) as c:
                    served = self.generate(c).usage.generated_tokens == 2
            except self.grpc.RpcError:
                time.sleep(0.5)
        self.assertTrue(served, "the renewed certificate was not picked up")


def main():
    global BINARY
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=BINARY)
    args, rest = parser.parse_known_args()
    BINARY = os.path.abspath(args.binary)
    if not os.path.exists(DEFAULT_MODEL):
        sys.exit(f"{DEFAULT_MODEL} is missing: run scripts/setup.sh")
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
