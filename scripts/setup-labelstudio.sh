#!/usr/bin/env bash
# Create .venvs/label-studio with label-studio==1.23.2 (its own virtual environment: it is about
# 1 GB and pins Django and friends, which must not leak into the platform's .venv).
# Idempotent: does nothing when the venv already runs that version.
# Usage: bash scripts/setup-labelstudio.sh [VENV_DIR]   (default: <repo>/.venvs/label-studio)
set -euo pipefail

LS_VERSION="1.23.2"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$root/.venvs/label-studio}"
stamp="$venv/.installed-label-studio-$LS_VERSION"

if [ -f "$stamp" ] && [ -x "$venv/bin/label-studio" ]; then
  echo "label-studio $LS_VERSION already in $venv"
  exit 0
fi

python="${PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null; then python="$candidate"; break; fi
  done
fi
[ -n "$python" ] || { echo "python3 is needed to create $venv" >&2; exit 1; }

mkdir -p "$(dirname "$venv")"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q -U pip setuptools wheel
"$venv/bin/python" -m pip install -q "label-studio==$LS_VERSION"
# (`label-studio --version` looks for newer releases online and hangs without a network.)
"$venv/bin/python" -c "import label_studio, sys; sys.exit(label_studio.__version__ != '$LS_VERSION')" \
  || { echo "label-studio $LS_VERSION did not install into $venv" >&2; exit 1; }
rm -f "$venv"/.installed-label-studio-*
touch "$stamp"
echo "label-studio $LS_VERSION installed in $venv"
