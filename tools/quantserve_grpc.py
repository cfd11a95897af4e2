"""Starts a quantserve server on a free loopback port and hands back gRPC stubs for it: what the Python
integration tests and the serving benchmarks share (stubs generated at run time, as client/python/example.py does)."""
import contextlib
import importlib.util
import os
import socket
import subprocess
import time

import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def load_stubs():
    """(inference_pb2, inference_pb2_grpc), generated from proto/ by client/python/example.py's load_stubs."""
    spec = importlib.util.spec_from_file_location("quantserve_example", os.path.join(ROOT, "client", "python", "example.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example.load_stubs()


def cpu_seconds(pid):
    """User + system CPU time a process has used so far (/proc/PID/stat), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(binary, model, extra_args=(), startup_timeout=300, log_path=None):
    """Runs `quantserve serve` until the block ends; yields (stub, pb2, pid) once ListModels answers."""
    pb2, pb2_grpc = load_stubs()
    port, metrics_port = free_port(), free_port()
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([binary, "serve", "--model", model, "--listen", f"127.0.0.1:{port}",
                             "--metrics-listen", f"127.0.0.1:{metrics_port}", "--http-listen", "", *extra_args],
                            stdout=log, stderr=subprocess.STDOUT)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = pb2_grpc.InferenceStub(channel)
        deadline = time.time() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"quantserve serve exited with {proc.returncode} before answering"
                                   + (f" (log: {log_path})" if log_path else ""))
            try:
                stub.ListModels(pb2.ListModelsRequest(), timeout=2)
                break
            except grpc.RpcError:
                if time.time() > deadline:
                    raise RuntimeError(f"quantserve serve did not answer within {startup_timeout} s")
                time.sleep(0.2)
        yield stub, pb2, proc.pid
    finally:
        channel.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log_path:
            log.close()
