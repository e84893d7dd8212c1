"""Code bundles: a team's model directory, pinned by content, as the cluster receives it.

On a cluster the operator never reads a team's repository from its own disk: the GitLab job (or
`cdl push`) packs the model directory into a bundle, uploads it to the artifact store under its
sha256, and the Experiment names it (`spec.model.bundle: {uri, sha256}`). The operator fetches
it, checks the hash and unpacks it into its cache; the result is the model directory Determined
receives and the registry packages.

Format (docs/cluster-path.md): gzip'd POSIX tar of the regular files under the model directory
minus what `.detignore` and Determined's default ignore rules exclude, members sorted, mode 0644
or 0755, uid/gid 0, mtime 0, gzip mtime 0: the same directory always gives the same bytes, so
the sha256 names the code itself.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pathspec

# Determined's own defaults (determined.common.constants.DEFAULT_DETIGNORE, 0.38), so the bundle
# holds what `create_experiment(model_dir=...)` would upload.
DEFAULT_IGNORE = ("__pycache__/", "*.py[co]", "*$py.class", "terraform", "terraform_data", "terraform.tfstate*",
                  "terraform.tfvars*", ".terraform*", ".git/", ".vscode/", ".idea/", ".mypy_cache/", "/shared_fs")
KEY_TEMPLATE = "code/{sha256}.tar.gz"
MAX_BYTES = 96 * 1024 * 1024  # Determined refuses model directories above 96 MiB


class BundleError(ValueError):
    """A bundle that cannot be built or trusted."""


@dataclass(frozen=True)
class Bundle:
    archive: Path
    sha256: str
    bytes: int
    files: int

    @property
    def key(self) -> str:
        return KEY_TEMPLATE.format(sha256=self.sha256)


def bundle_files(model_dir: Path) -> list[tuple[str, Path]]:
    """(relative posix path, file) of everything the bundle holds, sorted."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise BundleError(f"model directory {model_dir} does not exist")
    lines = list(DEFAULT_IGNORE)
    if (model_dir / ".detignore").is_file():
        lines += (model_dir / ".detignore").read_text().splitlines()
    spec = pathspec.GitIgnoreSpec.from_lines(lines)
    out: list[tuple[str, Path]] = []
    for root, dirs, names in os.walk(model_dir):
        base = Path(root)
        dirs[:] = sorted(d for d in dirs if not spec.match_file((base / d).relative_to(model_dir).as_posix() + "/"))
        for name in names:
            full = base / name
            rel = full.relative_to(model_dir).as_posix()
            if full.is_file() and not full.is_symlink() and not spec.match_file(rel):
                out.append((rel, full))
    return sorted(out)


def build(model_dir: Path, dest: Path) -> Bundle:
    """Pack `model_dir` into `dest` (a .tar.gz), reproducibly."""
    files = bundle_files(model_dir)
    if not files:
        raise BundleError(f"model directory {model_dir} holds no files to bundle")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for rel, path in files:
                    info = tarfile.TarInfo(rel)
                    info.size = path.stat().st_size
                    info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    info.mtime = 0
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
    sha256, size = _sha256(dest)
    if size > MAX_BYTES:
        raise BundleError(f"model directory {model_dir}: the bundle is {size} bytes, more than Determined accepts "
                          f"({MAX_BYTES}); list data and outputs in .detignore")
    return Bundle(dest, sha256, size, len(files))


def _sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def unpack(archive: Path, sha256: str, dest: Path) -> Path:
    """Check the archive's sha256, then extract it into `dest` (complete or absent)."""
    found, _ = _sha256(archive)
    if found != sha256.lower():
        raise BundleError(f"code bundle sha256 mismatch: the archive is {found}, the manifest says {sha256}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            bad = [m.name for m in members if not m.isfile()]
            if bad:
                raise BundleError(f"code bundle {sha256[:12]}: only files are allowed, not {bad[0]!r}")
            tar.extractall(staging, members=members, filter="data")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest

