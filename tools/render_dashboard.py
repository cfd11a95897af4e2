#!/usr/bin/env python3
"""Render the Grafana dashboard's panels to PNG from a live Prometheus, without Grafana.

For the README and for review: runs every query of every panel of
deploy/grafana/dashboards/*.json over a time range through Prometheus's HTTP
API (/api/v1/query_range), and draws each panel with matplotlib -- time
series as lines (legend from the panel's legendFormat), stat and bar-gauge
panels as horizontal bars of the last value. Writes one PNG per panel plus
<dashboard>-overview.png with all panels in the dashboard's order, and
index.json (panel -> file, queries, series counts).

  tools/render_dashboard.py --prom http://127.0.0.1:9091 --out bench/results/dashboard \
      [--start UNIX --end UNIX --step 1 --window 2m] [--var instance=... --var model=...]

Template variables default to ".*" (Grafana's "All"); $__rate_interval is
--window. tests/deploy/test_prometheus_live.sh calls this after its load run.
Needs matplotlib (scripts/setup.sh --tools).
"""
import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "deploy"))
import deploy_exprs as dx  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

UNITS = {  # Grafana unit -> (divisor, axis label)
    "bytes": (2**20, "MiB"),
    "s": (1e-3, "ms"),
    "percentunit": (0.01, "%"),
    "reqps": (1, "req/s"),
    "short": (1, ""),
}


def query_range(prom, expr, start, end, step):
    url = f"{prom}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(url, timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(body.get("error"))
    return body["data"]["result"]


def legend(fmt, labels, expr):
    if fmt:
        return re.sub(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip() or expr[:40]
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or expr[:40]


def fetch_panel(args, panel, variables):
    series = []
    for t in panel.get("targets", []):
        expr = dx.substitute(t.get("expr", ""), variables, rate_interval=args.window)
        try:
            result = query_range(args.prom, expr, args.start, args.end, args.step)
        except Exception as e:  # noqa: BLE001 -- a broken query is drawn as an error, not a crash
            series.append({"ref": t.get("refId"), "expr": expr, "error": str(e), "points": []})
            continue
        for s in result:
            pts = [(float(ts), float(v)) for ts, v in s["values"]]
            series.append({"ref": t.get("refId"), "expr": expr, "label": legend(t.get("legendFormat"), s["metric"], expr),
                           "points": pts})
    return series


def draw(ax, panel, series, t0):
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    div, ulabel = UNITS.get(unit, (1, unit))
    ax.set_title(panel.get("title", ""), fontsize=10, loc="left")
    errors = [s for s in series if s.get("error")]
    drawn = [s for s in series if s["points"]]
    if not drawn:
        msg = "query error" if errors else "no data"
        ax.text(0.5, 0.5, msg, ha="center", va="center", transform=ax.transAxes, color="firebrick")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    if panel.get("type") in ("stat", "bargauge", "gauge", "table"):
        labels = [s["label"] for s in drawn]
        vals = [s["points"][-1][1] / div for s in drawn]
        vals = [0 if math.isnan(v) else v for v in vals]
        ax.barh(range(len(vals)), vals, color="tab:blue")
        ax.set_yticks(range(len(vals)))
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.4g} {ulabel}", va="center", fontsize=7)
        ax.set_xlabel(ulabel, fontsize=8)
    else:
        for s in drawn:
            xs = [p[0] - t0 for p in s["points"]]
            ys = [p[1] / div for p in s["points"]]
            ax.plot(xs, ys, label=s["label"], linewidth=1.2)
        ax.set_xlabel("seconds", fontsize=8)
        ax.set_ylabel(ulabel, fontsize=8)
        ax.legend(fontsize=6, loc="best")
        ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prom", required=True)
    ap.add_argument("--out", required=True)
    now = int(time.time())
    ap.add_argument("--start", type=float, default=now - 900)
    ap.add_argument("--end", type=float, default=now)
    ap.add_argument("--step", type=float, default=5)
    ap.add_argument("--window", default="1m", help="replacement for $__rate_interval")
    ap.add_argument("--var", action="append", default=[], help="template variable NAME=VALUE")
    args = ap.parse_args()
    variables = dict(v.split("=", 1) for v in args.var)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for dfile in dx.dashboards():
        dash = json.loads(dfile.read_text())
        panels = [p for p in dx.iter_panels(dash) if p.get("type") != "row"]
        fetched = [(p, fetch_panel(args, p, variables)) for p in panels]
        stem = dfile.stem
        for i, (p, series) in enumerate(fetched):
            fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
            draw(ax, p, series, args.start)
            fig.tight_layout()
            name = f"{stem}-{i:02d}-{re.sub(r'[^a-z0-9]+', '-', p.get('title', 'panel').lower()).strip('-')}.png"
            fig.savefig(out / name)
            plt.close(fig)
            index.append({"dashboard": dfile.name, "panel": p.get("title"), "file": name,
                          "queries": sorted({s["expr"] for s in series}),
                          "series": sum(1 for s in series if s["points"]),
                          "errors": [s["error"] for s in series if s.get("error")]})
        cols = 3
        rows = math.ceil(len(fetched) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.4 * rows), dpi=80, squeeze=False)
        for ax, (p, series) in zip(axes.flat, fetched):
            draw(ax, p, series, args.start)
        for ax in list(axes.flat)[len(fetched):]:
            ax.axis("off")
        fig.suptitle(f"{dash.get('title', stem)} (Prometheus {args.prom}, {int(args.end - args.start)} s)", fontsize=12)
        fig.tight_layout(rect=(0, 0, 1, 0.97))
        fig.savefig(out / f"{stem}-overview.png")
        plt.close(fig)
    (out / "index.json").write_text(json.dumps(index, indent=2))
    empty = [x["panel"] for x in index if not x["series"]]
    print(f"rendered {len(index)} panels to {out}" + (f"; without data: {empty}" if empty else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
