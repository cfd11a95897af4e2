"""Shared helpers for the deploy tests: where the PromQL lives and how to read it.

Used by lint_dashboards.py (offline) and live_queries.py (against a real
Prometheus scraping a real server).
"""
import json
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
RULES = DEPLOY / "prometheus" / "rules"
METRICS_MD = DEPLOY / "METRICS.md"

# Grafana's built-in variables and what the tests put in their place.
BUILTIN_VARS = {"__rate_interval": "1m", "__interval": "30s", "__range": "1h", "__range_s": "3600"}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                   "unless", "offset", "atan2", "Inf", "NaN", "inf", "nan"}


def contract():
    """Metric names in deploy/METRICS.md: (all names, histogram base names)."""
    names, hists = set(), set()
    for m in re.finditer(r"^\|\s*`([a-zA-Z_:][a-zA-Z0-9_:]*)`\s*\|\s*([a-z]+)", METRICS_MD.read_text(), re.M):
        names.add(m.group(1))
        if m.group(2) == "histogram":
            hists.add(m.group(1))
    # `up` is written by Prometheus itself; METRICS.md lists it in prose
    names.add("up")
    return names, hists


def dashboards():
    return sorted(DASHBOARDS.glob("*.json"))


def iter_panels(dash):
    for p in dash.get("panels", []):
        yield p
        for sub in p.get("panels", []) or []:  # collapsed rows keep their panels inside
            yield sub


def dashboard_targets():
    """[(dashboard file name, panel title, refId, expr)] for every query of every panel."""
    out = []
    for f in dashboards():
        d = json.loads(f.read_text())
        for p in iter_panels(d):
            if p.get("type") == "row":
                continue
            for t in p.get("targets", []):
                out.append((f.name, p.get("title", ""), t.get("refId", ""), t.get("expr", "")))
    return out


def template_variables(dash):
    return {v["name"]: v for v in dash.get("templating", {}).get("list", [])}


def rule_files():
    return sorted(RULES.glob("*.yml"))


def rules():
    """[(rule file name, alert or record name, expr, is_alert)]."""
    out = []
    for f in rule_files():
        for g in yaml.safe_load(f.read_text())["groups"]:
            for r in g["rules"]:
                out.append((f.name, r.get("alert") or r.get("record"), r["expr"], "alert" in r))
    return out


def substitute(expr, values=None, rate_interval=None):
    """Replace Grafana variables: $name, ${name}, ${name:fmt}, [[name]].

    values maps variable name -> replacement; a template variable not given is
    replaced by ".*" (Grafana's "All" with allValue ".*").
    """
    vals = dict(BUILTIN_VARS)
    if rate_interval:
        vals["__rate_interval"] = rate_interval
        vals["__interval"] = rate_interval
    vals.update(values or {})

    def rep(m):
        name = m.group(1) or m.group(2) or m.group(3)
        return vals.get(name, ".*")
    return re.sub(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\[\[([A-Za-z0-9_]+)\]\]|\$([A-Za-z_][A-Za-z0-9_]*)", rep, expr)


def variables_used(expr):
    return set(a or b or c for a, b, c in
               re.findall(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\[\[([A-Za-z0-9_]+)\]\]|\$([A-Za-z_][A-Za-z0-9_]*)", expr))


def _strip(expr):
    """PromQL with string literals, label matchers, range/subquery brackets and
    grouping clauses removed: what is left are metric names, functions,
    aggregations, operators and numbers."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^{}]*\}", " ", s)
    s = re.sub(r"\[[^\[\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)
    s = re.sub(r"#.*", " ", s)
    return s


def metric_names(expr):
    """Metric names an expression reads (identifiers not called as functions)."""
    s = _strip(substitute(expr))
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w(])(\s*\()?", s):
        ident, call = m.group(1), m.group(2)
        if call or ident in PROMQL_KEYWORDS:
            continue
        # exponents like 1e9 are matched as a number by the lookbehind (digits before): skip leftovers
        names.add(ident)
    return names


def base_metric(name, histograms):
    for suf in ("_bucket", "_sum", "_count"):
        if name.endswith(suf) and name[: -len(suf)] in histograms:
            return name[: -len(suf)]
    return name


_CMP = r"(?:==|!=|>=|<=|>|<)"
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"


def probe_expr(alert_expr):
    """The part of an alert expression that must return data on a healthy server.

    An alert is `<signal> <cmp> <number>` (optionally joined with and/or/unless
    to more such terms). On a healthy server the comparisons filter every
    sample out, so the alert expression itself is rightly empty; what the live
    test asserts is that the *signal* exists. probe_expr removes every
    comparison against a numeric literal (`> 2`, `== 0`, `> bool 0.9`,
    also `0.9 < x`), leaving e.g.
        up{job=~"quantserve.*"} == 0                  ->  up{job=~"quantserve.*"}
        deriv(w[10m]) > 0.05 and w > 8                ->  deriv(w[10m]) and w
        histogram_quantile(0.99, ...) > 2             ->  histogram_quantile(0.99, ...)
    Numbers that are function arguments (0.99 above) or arithmetic operands are
    kept, since only comparison operators are touched.
    """
    s = re.sub(rf"\s*{_CMP}\s*(?:bool\s+)?{_NUM}(?![\w.])", "", alert_expr)
    s = re.sub(rf"(?<![\w.]){_NUM}\s*{_CMP}\s*(?:bool\s+)?", "", s)
    return s.strip()
