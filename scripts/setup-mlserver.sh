#!/usr/bin/env bash
# Creates the MLServer virtual environment (.venvs/mlserver, or $CDL_MLSERVER_VENV) that the local
# serving engine runs `mlserver start` from for Deployments with `server: mlserver` (the Open
# Inference Protocol fast path). Wheels only; idempotent: a marker records the install list's hash
# (operator/cdl/engines/serving/local/requirements-mlserver.txt), so a second run returns at once
# and a changed list rebuilds it. Prints how long it took. Needs the project's .venv (make venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
exec "$PY" -m cdl.engines.serving.local.venv --kind mlserver "$@"
