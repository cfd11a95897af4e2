#!/usr/bin/env python3
"""promtool checks of deploy/prometheus/.

  check_prometheus.py config   promtool check config on every deploy/prometheus/*.yml
  check_prometheus.py rules    promtool check rules on every rule file
  check_prometheus.py test     promtool test rules on every deploy/prometheus/tests/*.test.yml

Debian's prometheus package (the promtool scripts/setup.sh installs) is built
without the Kubernetes service discovery, so it rejects `kubernetes_sd_configs`
as an unknown field. When -- and only when -- promtool fails for that reason,
the file is checked in two parts: promtool checks a copy in which each
kubernetes_sd_configs block is replaced by an empty static_configs (so
everything else: relabelling regexes and actions, rule files, timeouts, is
still promtool's verdict), and the kubernetes_sd_configs blocks themselves are
checked here against the fields Prometheus documents for them.

Exit 0 = pass, 1 = failure, 77 = promtool missing (CTest SKIP_RETURN_CODE).
"""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SKIP = 77
REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy" / "prometheus"

K8S_SD_KEYS = {"api_server", "role", "kubeconfig_file", "namespaces", "selectors", "attach_metadata",
               "basic_auth", "authorization", "oauth2", "follow_redirects", "enable_http2", "tls_config",
               "proxy_url", "no_proxy", "proxy_from_environment", "proxy_connect_header"}
K8S_ROLES = {"node", "service", "pod", "endpoints", "endpointslice", "ingress"}


def run(cmd, cwd=None):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    out = (r.stdout + r.stderr).strip()
    print(f"$ {' '.join(map(str, cmd))}\n{out}")
    return r.returncode, out


def check_k8s_sd(blocks, where):
    errs = []
    for b in blocks:
        if not isinstance(b, dict):
            errs.append(f"{where}: kubernetes_sd_configs entry is not a mapping")
            continue
        unknown = set(b) - K8S_SD_KEYS
        if unknown:
            errs.append(f"{where}: unknown kubernetes_sd_configs keys {sorted(unknown)}")
        if b.get("role") not in K8S_ROLES:
            errs.append(f"{where}: kubernetes_sd_configs role {b.get('role')!r} not in {sorted(K8S_ROLES)}")
        ns = b.get("namespaces", {})
        if ns and (set(ns) - {"names", "own_namespace"} or not isinstance(ns.get("names", []), list)):
            errs.append(f"{where}: bad namespaces block {ns}")
        for s in b.get("selectors", []):
            if s.get("role") not in K8S_ROLES or set(s) - {"role", "label", "field"}:
                errs.append(f"{where}: bad selectors entry {s}")
    return errs


def check_config(promtool, path):
    rc, out = run([promtool, "check", "config", path.name], cwd=path.parent)
    if rc == 0:
        return []
    if "field kubernetes_sd_configs not found" not in out:
        return [f"promtool check config {path.name} failed"]
    import yaml
    print(f"note: this promtool lacks Kubernetes service discovery; checking {path.name} in two parts")
    cfg = yaml.safe_load(path.read_text())
    errs = []
    jobs = list(cfg.get("scrape_configs", []))
    jobs += (cfg.get("alerting") or {}).get("alertmanagers", [])
    for job in jobs:
        if "kubernetes_sd_configs" in job:
            errs += check_k8s_sd(job["kubernetes_sd_configs"], f"{path.name} {job.get('job_name', 'alertmanagers')}")
            del job["kubernetes_sd_configs"]
            job.setdefault("static_configs", []).append({"targets": []})
    # promtool resolves rule_files relative to the config: check the copy beside a copy of rules/
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for sub in ("rules",):
            if (path.parent / sub).is_dir():
                shutil.copytree(path.parent / sub, tmp / sub)
        (tmp / path.name).write_text(yaml.safe_dump(cfg, sort_keys=False))
        rc, _ = run([promtool, "check", "config", path.name], cwd=tmp)
    if rc != 0:
        errs.append(f"promtool check config {path.name} (kubernetes_sd_configs stubbed) failed")
    return errs


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in ("config", "rules", "test"):
        print(__doc__)
        return 2
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not promtool:
        print("SKIP: promtool not found (Debian package `prometheus`, installed by scripts/setup.sh)")
        return SKIP
    mode = sys.argv[1]
    errs = []
    if mode == "config":
        files = sorted(PROM.glob("*.yml"))
        if not files:
            errs.append("no deploy/prometheus/*.yml")
        for f in files:
            errs += check_config(promtool, f)
    elif mode == "rules":
        files = sorted((PROM / "rules").glob("*.yml"))
        if not files:
            errs.append("no rule files")
        rc, _ = run([promtool, "check", "rules", *map(str, files)])
        if rc:
            errs.append("promtool check rules failed")
    else:
        files = sorted((PROM / "tests").glob("*.test.yml"))
        if not files:
            errs.append("no rule unit tests")
        for f in files:
            rc, _ = run([promtool, "test", "rules", f.name], cwd=f.parent)
            if rc:
                errs.append(f"promtool test rules {f.name} failed")
        # every alert must be exercised by some unit test, firing and not firing
        import yaml
        alerts = {r["alert"] for rf in (PROM / "rules").glob("*.yml")
                  for g in yaml.safe_load(rf.read_text())["groups"] for r in g["rules"] if "alert" in r}
        fired, quiet = set(), set()
        for f in files:
            for t in yaml.safe_load(f.read_text()).get("tests", []):
                for a in t.get("alert_rule_test", []):
                    (fired if a.get("exp_alerts") else quiet).add(a["alertname"])
        for a in sorted(alerts):
            if a not in fired:
                errs.append(f"alert {a} has no unit test where it fires")
            if a not in quiet:
                errs.append(f"alert {a} has no unit test where it stays quiet")
        print(f"alerts covered (firing and quiet): {sorted(alerts & fired & quiet)}")
    for e in errs:
        print("FAIL: " + e)
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main())
