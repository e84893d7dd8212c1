#!/usr/bin/env bash
# Creates the seldon virtual environment (.venvs/seldon, or $CDL_SELDON_VENV) that the local serving
# engine runs seldon-core-microservice from. Idempotent: a marker records the install list's hash
# (operator/cdl/engines/serving/local/requirements.txt), so a second run returns at once and a
# changed list rebuilds it. Needs the project's .venv (make venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
exec "$PY" -m cdl.engines.serving.local.venv "$@"
