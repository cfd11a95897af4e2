#!/usr/bin/env python3
"""A/B of two quantserve binaries' `bench` (int8, default model): decode at batch 1 after a 128-token prompt, and
prefill of 128 and 2,000 tokens, the binaries alternating run by run so that the machine's load falls on both.

  python3 bench/attention_ab.py --before /tmp/quantserve_main --after build/server/quantserve \
      --repeats 5 -o bench/results/attention_invariance.json

Reports each run's figures, the medians and after/before ratios, and the load average before and after.
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

# (name, bench arguments, figures kept from its one result)
POINTS = [
    ("prompt128_decode64", ["--prompt-tokens", "128", "--new-tokens", "64"],
     ["prefill_tokens_per_second", "decode_tokens_per_second"]),
    ("prompt2000", ["--prompt-tokens", "2000", "--new-tokens", "2"], ["prefill_tokens_per_second"]),
]


def run_bench(binary, args, precision):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    try:
        subprocess.run([binary, "bench", "--precisions", precision, "--batch", "1", *args, "-o", path],
                       check=True, stdout=subprocess.DEVNULL)
        with open(path) as f:
            return json.load(f)["results"][0]
    finally:
        os.unlink(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--before-commit", default="")
    ap.add_argument("--after-commit", default="")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()

    binaries = {"before": a.before, "after": a.after}
    runs = []
    load_start = os.getloadavg()
    start = time.time()
    for rep in range(a.repeats):
        # Alternate which binary goes first, so neither always follows the other's warm caches.
        order = ["before", "after"] if rep % 2 == 0 else ["after", "before"]
        for name, args, keys in POINTS:
            for which in order:
                r = run_bench(binaries[which], args, a.precision)
                row = {"repeat": rep, "point": name, "binary": which, "load_1min": os.getloadavg()[0]}
                row.update({k: r[k] for k in keys})
                runs.append(row)
                print(json.dumps(row), flush=True)

    summary = {}
    for name, _, keys in POINTS:
        for k in keys:
            med = {w: statistics.median(r[k] for r in runs if r["point"] == name and r["binary"] == w)
                   for w in binaries}
            spread = {w: [min(r[k] for r in runs if r["point"] == name and r["binary"] == w),
                          max(r[k] for r in runs if r["point"] == name and r["binary"] == w)] for w in binaries}
            summary[f"{name}.{k}"] = {"median_before": med["before"], "median_after": med["after"],
                                      "after_over_before": med["after"] / med["before"],
                                      "range_before": spread["before"], "range_after": spread["after"]}
    out = {"tool": "bench/attention_ab.py", "precision": a.precision, "batch": 1, "repeats": a.repeats,
           "before": {"binary": a.before, "commit": a.before_commit},
           "after": {"binary": a.after, "commit": a.after_commit},
           "cpus": os.cpu_count(), "load_average_start": load_start, "load_average_end": os.getloadavg(),
           "wall_seconds": time.time() - start, "summary": summary, "runs": runs}
    with open(a.output, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    for k, v in summary.items():
        print(f"{k}: before {v['median_before']:.1f} after {v['median_after']:.1f} ratio {v['after_over_before']:.3f}")


if __name__ == "__main__":
    main()
