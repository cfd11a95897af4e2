"""What the Python checks and benchmarks share: the repository root, finding the built quantserve binary, running
a command that must succeed, the facts recorded beside every figure (commit, machine, load average), and llama.cpp's
own quantizer (through llama-cpp-python) for the peers that run llama.cpp on the same weights."""
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_binary(explicit):
    candidates = [explicit] if explicit else [os.environ.get("QUANTSERVE_BIN", "")] + [
        os.path.join(ROOT, d, "server", "quantserve") for d in ("build", "build-q", "build-cli")]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    sys.exit(f"quantserve binary not found (tried {candidates}); pass --binary")


def run(cmd, env=None):
    """Runs cmd (with env's variables added to this process's) and returns its stdout; a non-zero exit raises with
    the command and the end of its stderr."""
    p = subprocess.run(cmd, capture_output=True, text=True, env=None if env is None else {**os.environ, **env})
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p.stdout


def git_commit():
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def load_average():
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return []


def machine_info(threads=None):
    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": threads or os.cpu_count()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def write_results(path, results, indent=2):
    """Writes a benchmark's JSON (made folders, a final newline) and says where."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=indent)
        f.write("\n")
    print(f"wrote {os.path.relpath(path, ROOT)}")


# llama.cpp's llama_ftype values (llama.h: LLAMA_FTYPE_ALL_F32, LLAMA_FTYPE_MOSTLY_*) for the types the benchmarks use.
LLAMA_FTYPES = {"F32": 0, "F16": 1, "Q4_1": 3, "Q8_0": 7, "Q4_K_M": 15}


def llama_cpp_quantize(source, out, ftype, threads):
    """Writes `source` (a GGUF) as llama.cpp type `ftype` to `out` with llama.cpp's own quantize API, in a child
    process (llama-cpp-python logs to the process's stderr). allow_requantize: a source that is itself quantized
    (Q4_1, Q4_K_M) is dequantized first. Kept if `out` exists. Returns the log lines of the tensors llama.cpp could
    not give that type (K-quants need rows that are multiples of 256) and what it used instead, or None when the
    file was kept from an earlier run."""
    if os.path.exists(out) and os.path.getsize(out) > 0:
        return None
    code = ("import ctypes, llama_cpp, sys\n"
            "p = llama_cpp.llama_model_quantize_default_params()\n"
            f"p.ftype = {LLAMA_FTYPES[ftype]}; p.allow_requantize = True; p.nthread = {threads}\n"
            "rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p))\n"
            "sys.exit(rc)\n")
    p = subprocess.run([sys.executable, "-c", code, source, out + ".tmp"], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"llama.cpp quantize {source} -> {ftype} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    os.replace(out + ".tmp", out)
    return [line.strip() for line in p.stderr.splitlines() if "fallback" in line]
