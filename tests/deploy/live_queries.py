#!/usr/bin/env python3
"""Evaluate every dashboard query and every alert rule against a live Prometheus.

Used by test_prometheus_live.sh once Prometheus has scraped a real quantserve
under load. Asserts, through the HTTP API (/api/v1/query):

  * every query of every dashboard panel returns at least one sample with a
    number (not NaN), template variables replaced by ".*" (Grafana's "All")
    and $__rate_interval by --window (a window covering the load);
  * the selector inside every template-variable query returns data;
  * for every alert rule, its *signal* returns data: the expression with its
    threshold comparisons removed (deploy_exprs.probe_expr: `X > 2` -> `X`,
    `deriv(w[10m]) > 0.05 and w > 8` -> `deriv(w[10m]) and w`). The full alert
    expression is rightly empty on a healthy server, so it is evaluated too
    but only has to succeed, not to return data;
  * Prometheus loaded every rule file and evaluates every rule with health "ok".

Exit 0 = pass, 1 = failure. Writes a JSON report with --report.
"""
import argparse
import json
import math
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deploy_exprs as dx  # noqa: E402


def query(prom, expr, timeout=15):
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{body.get('errorType')}: {body.get('error')}")
    return body["data"]


def samples(data):
    """[(labels, float)] for vector/scalar results."""
    if data["resultType"] == "vector":
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]
    if data["resultType"] == "scalar":
        return [({}, float(data["result"][1]))]
    if data["resultType"] == "matrix":
        return [(s["metric"], float(s["values"][-1][1])) for s in data["result"] if s["values"]]
    return []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prom", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9091")
    ap.add_argument("--window", default="2m", help="replacement for $__rate_interval (covering the load)")
    ap.add_argument("--report", help="write a JSON report here")
    ap.add_argument("--retries", type=int, default=5, help="re-query an empty result this many times, 2 s apart")
    args = ap.parse_args()

    failures, report = [], []

    def check(kind, where, expr, need_data=True):
        data, err = None, None
        for attempt in range(args.retries + 1):
            try:
                data = query(args.prom, expr)
                err = None
            except Exception as e:  # noqa: BLE001 -- report any API error
                err = str(e)
            got = samples(data) if data else []
            numeric = [v for _, v in got if not math.isnan(v)]
            if err is None and (not need_data or numeric):
                break
            if attempt < args.retries:
                time.sleep(2)
        entry = {"kind": kind, "where": where, "expr": expr, "error": err,
                 "samples": [{"labels": l, "value": v if not math.isnan(v) else "NaN"} for l, v in got][:20]}
        report.append(entry)
        if err:
            failures.append(f"{kind} {where}: query failed: {err}\n    {expr}")
            status = "ERROR"
        elif need_data and not got:
            failures.append(f"{kind} {where}: no data\n    {expr}")
            status = "EMPTY"
        elif need_data and not numeric:
            failures.append(f"{kind} {where}: only NaN (no observations in the window?)\n    {expr}")
            status = "NaN"
        else:
            status = f"{len(got)} series"
        print(f"[{status:>10}] {kind}: {where}")

    for f, title, ref, expr in dx.dashboard_targets():
        check("panel", f"{f} {title!r} {ref}", dx.substitute(expr, rate_interval=args.window))
    for d in dx.dashboards():
        for name, v in dx.template_variables(json.loads(d.read_text())).items():
            if v.get("type") != "query":
                continue
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            if q and q.strip().startswith("label_values(") and "," in q:
                inner = q.strip()[len("label_values("):].rsplit(",", 1)[0]
                check("variable", f"{d.name} ${name}", dx.substitute(inner))
    for f, name, expr, is_alert in dx.rules():
        if is_alert:
            check("alert signal", f"{f} {name}", dx.probe_expr(expr))
            check("alert expr", f"{f} {name} (may be empty)", expr, need_data=False)
        else:
            check("recording rule", f"{f} {name}", expr)

    # Prometheus itself loaded and evaluates the rules
    try:
        with urllib.request.urlopen(f"{args.prom}/api/v1/rules", timeout=15) as r:
            groups = json.load(r)["data"]["groups"]
        loaded = {r["name"]: r for g in groups for r in g["rules"]}
        for _, name, _, _ in dx.rules():
            r = loaded.get(name)
            if r is None:
                failures.append(f"rule {name}: not loaded by Prometheus")
            elif r.get("health") not in ("ok", "unknown"):
                failures.append(f"rule {name}: health {r.get('health')}: {r.get('lastError')}")
            else:
                print(f"[{r.get('health'):>10}] rule loaded: {name} (state {r.get('state', '-')})")
    except Exception as e:  # noqa: BLE001
        failures.append(f"/api/v1/rules: {e}")

    if args.report:
        Path(args.report).write_text(json.dumps({"failures": failures, "queries": report}, indent=2))
    if failures:
        print(f"\n{len(failures)} failure(s):")
        for x in failures:
            print("  - " + x)
        return 1
    print(f"\nOK: {len(report)} expressions evaluated against {args.prom}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
