"""One run of a quantserve command for the CLI integration tests: exits the test with the command's stderr when it
fails where it should succeed, or is accepted where it should be refused."""
import os
import subprocess
import sys


def run(binary, args, env=None, ok=True, timeout=240):
    p = subprocess.run([binary] + args, capture_output=True, text=True, env={**os.environ, **(env or {})},
                       timeout=timeout)
    if ok and p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(args)} exited {p.returncode}: {p.stderr[-2000:]}")
    if not ok and p.returncode == 0:
        sys.exit(f"FAIL: {' '.join(args)} was accepted")
    return p
