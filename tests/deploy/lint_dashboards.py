#!/usr/bin/env python3
"""Offline lint of the Grafana dashboards, the alert rules and the metric contract.

  lint_dashboards.py dashboards   every panel has a query; ids, refIds, grid,
                                  data source and template variables are sound;
                                  every query parses as PromQL (promtool, when
                                  installed); provisioning files are well formed
  lint_dashboards.py contract     every metric name used in the dashboards,
                                  the alert rules and the prometheus-adapter
                                  rules is in deploy/METRICS.md, and every
                                  metric of the contract is on a dashboard

Exit 0 = pass, 1 = failure.
"""
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deploy_exprs as dx  # noqa: E402

errors = []


def fail(msg):
    errors.append(msg)


REQUIRED_VARS = {"instance", "model"}


def lint_dashboards():
    files = dx.dashboards()
    if not files:
        fail("no dashboards under deploy/grafana/dashboards/")
    exprs = []
    uids = set()
    for f in files:
        try:
            d = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            fail(f"{f.name}: invalid JSON: {e}")
            continue
        for k in ("uid", "title", "panels", "schemaVersion"):
            if k not in d:
                fail(f"{f.name}: no {k}")
        if d.get("uid") in uids:
            fail(f"{f.name}: duplicate dashboard uid {d.get('uid')}")
        uids.add(d.get("uid"))
        if d.get("id") not in (None,):
            fail(f"{f.name}: set \"id\": null (or omit it) so provisioning can assign one")
        tv = dx.template_variables(d)
        for v in REQUIRED_VARS - set(tv):
            fail(f"{f.name}: no template variable ${v}")
        ds_vars = [n for n, v in tv.items() if v.get("type") == "datasource"]
        for n, v in tv.items():
            if v.get("type") == "query":
                q = v.get("query")
                q = q.get("query") if isinstance(q, dict) else q
                if not q:
                    fail(f"{f.name}: variable ${n} has no query")
                elif not re.match(r"^\s*(label_values|label_names|metrics|query_result)\(", q):
                    fail(f"{f.name}: variable ${n} query {q!r} is not a Prometheus variable query")
                else:
                    exprs.append((f"{f.name} variable ${n}", re.sub(r"^\s*label_values\((.*),\s*\w+\)\s*$", r"\1", q)
                                  if q.strip().startswith("label_values(") and "," in q else None))
                if v.get("multi") or v.get("includeAll"):
                    if v.get("includeAll") and v.get("allValue") not in (".*", ".+"):
                        fail(f"{f.name}: variable ${n} includes All but has no regex allValue")
        ids, titles = set(), set()
        n_panels = 0
        for p in dx.iter_panels(d):
            where = f"{f.name} panel {p.get('title')!r}"
            if p.get("id") in ids:
                fail(f"{where}: duplicate panel id {p.get('id')}")
            ids.add(p.get("id"))
            gp = p.get("gridPos", {})
            if not all(isinstance(gp.get(k), int) for k in ("h", "w", "x", "y")) or gp.get("x", 0) + gp.get("w", 0) > 24:
                fail(f"{where}: bad gridPos {gp}")
            if p.get("type") == "row":
                continue
            n_panels += 1
            if not p.get("title"):
                fail(f"{f.name}: panel {p.get('id')} has no title")
            if p.get("title") in titles:
                fail(f"{where}: duplicate title")
            titles.add(p.get("title"))
            ds = p.get("datasource")
            if not (isinstance(ds, dict) and ds.get("type") == "prometheus"
                    and (ds.get("uid", "").strip("${}") in ds_vars)):
                fail(f"{where}: datasource must be the ${{datasource}} Prometheus variable, got {ds}")
            targets = p.get("targets") or []
            if not targets:
                fail(f"{where}: no query")
            refs = set()
            for t in targets:
                e = (t.get("expr") or "").strip()
                if not e:
                    fail(f"{where}: target {t.get('refId')} has an empty expr")
                    continue
                if t.get("refId") in refs or not t.get("refId"):
                    fail(f"{where}: missing or duplicate refId {t.get('refId')}")
                refs.add(t.get("refId"))
                for v in dx.variables_used(e):
                    if v not in tv and v not in dx.BUILTIN_VARS:
                        fail(f"{where}: uses undefined variable ${v}")
                if "histogram_quantile" in e:
                    if "_bucket" not in e or not re.search(r"\bby\s*\([^)]*\ble\b", e):
                        fail(f"{where}: histogram_quantile must aggregate the _bucket series `by (le, ...)`")
                if re.search(r"\brate\(|\bincrease\(", e) and "$__rate_interval" not in e:
                    fail(f"{where}: use [$__rate_interval] as the rate window")
                if "instance" in tv and "$instance" not in e:
                    fail(f"{where}: query ignores the $instance variable: {e}")
                exprs.append((f"{where} {t.get('refId')}", e))
        if n_panels < 10:
            fail(f"{f.name}: only {n_panels} panels")
        print(f"{f.name}: {n_panels} panels, variables {sorted(tv)}")
    check_promql_syntax([(w, e) for w, e in exprs if e])
    lint_provisioning()


def check_promql_syntax(exprs):
    """Parse every query with promtool by wrapping them as recording rules."""
    promtool = shutil.which("promtool")
    if not promtool:
        print("note: promtool not found; PromQL syntax of dashboard queries not checked")
        return
    rules = [{"record": f"dashboard:query:{i}", "expr": dx.substitute(e)} for i, (_, e) in enumerate(exprs)]
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "dashboard-queries.yml"
        p.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        r = subprocess.run([promtool, "check", "rules", str(p)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        out = r.stdout + r.stderr
        fail(f"promtool rejects dashboard PromQL:\n{out}")
        for i in sorted({int(n) for n in re.findall(r'"dashboard:query:(\d+)"', out)}):
            print(f"  rejected: {exprs[i][0]}: {exprs[i][1]}")
    else:
        print(f"promtool parsed all {len(exprs)} dashboard queries")


def lint_provisioning():
    prov = dx.DEPLOY / "grafana" / "provisioning"
    ds = prov / "datasources"
    db = prov / "dashboards"
    dsf = sorted(ds.glob("*.y*ml")) if ds.is_dir() else []
    dbf = sorted(db.glob("*.y*ml")) if db.is_dir() else []
    if not dsf:
        fail("no datasource provisioning under deploy/grafana/provisioning/datasources/")
    if not dbf:
        fail("no dashboard provisioning under deploy/grafana/provisioning/dashboards/")
    for f in dsf:
        y = yaml.safe_load(f.read_text())
        if y.get("apiVersion") != 1 or not y.get("datasources"):
            fail(f"{f.name}: needs apiVersion: 1 and datasources")
        for d in y.get("datasources", []):
            if d.get("type") != "prometheus" or not d.get("url") or not d.get("name"):
                fail(f"{f.name}: datasource needs name, type prometheus and url")
    for f in dbf:
        y = yaml.safe_load(f.read_text())
        if y.get("apiVersion") != 1 or not y.get("providers"):
            fail(f"{f.name}: needs apiVersion: 1 and providers")
        for p in y.get("providers", []):
            if p.get("type") != "file" or not p.get("options", {}).get("path"):
                fail(f"{f.name}: provider needs type file and options.path")


def lint_contract():
    names, hists = dx.contract()
    if len(names) < 15:
        fail(f"deploy/METRICS.md lists only {len(names)} metrics: table not found?")
    used_dash, used_rules = set(), set()
    for f, title, ref, e in dx.dashboard_targets():
        for m in dx.metric_names(e):
            b = dx.base_metric(m, hists)
            used_dash.add(b)
            if b not in names:
                fail(f"dashboard {f} panel {title!r} {ref}: metric {m} is not in deploy/METRICS.md")
        for h in hists:
            if re.search(rf"\b{h}\b(?!_)", e):
                fail(f"dashboard {f} panel {title!r} {ref}: histogram {h} used without _bucket/_sum/_count")
    for d in dx.dashboards():
        for n, v in dx.template_variables(json.loads(d.read_text())).items():
            if v.get("type") != "query":
                continue
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            for m in dx.metric_names(re.sub(r"^\s*label_values\((.*),\s*\w+\)\s*$", r"\1", q or "")) if q else ():
                if dx.base_metric(m, hists) not in names:
                    fail(f"dashboard {d.name} variable ${n}: metric {m} is not in deploy/METRICS.md")
    for f, name, e, _ in dx.rules():
        for m in dx.metric_names(e):
            b = dx.base_metric(m, hists)
            used_rules.add(b)
            if b not in names:
                fail(f"rules {f} {name}: metric {m} is not in deploy/METRICS.md")
    adapter = yaml.safe_load((dx.DEPLOY / "k8s" / "prometheus-adapter" / "config.yaml").read_text())
    for r in adapter.get("rules", []):
        for m in dx.metric_names(r.get("seriesQuery", "")):
            if m not in names:
                fail(f"prometheus-adapter seriesQuery metric {m} is not in deploy/METRICS.md")
    missing = sorted(names - used_dash)
    if missing:
        fail(f"metrics of the contract shown on no dashboard: {missing}")
    print(f"contract: {len(names)} metrics; dashboards use {len(used_dash)}, rules use {len(used_rules)}")


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in ("dashboards", "contract"):
        print(__doc__)
        return 2
    lint_dashboards() if sys.argv[1] == "dashboards" else lint_contract()
    for e in errors:
        print("FAIL: " + e)
    if not errors:
        print("OK")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
