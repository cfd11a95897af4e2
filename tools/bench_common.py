"""What the Python checks and benchmarks share: the repository root, finding the built quantserve binary, running
a command that must succeed, and the facts recorded beside every figure (commit, machine, load average)."""
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


def run(cmd):
    """Runs cmd and returns its stdout; a non-zero exit raises with the command and the end of its stderr."""
    p = subprocess.run(cmd, capture_output=True, text=True)
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
