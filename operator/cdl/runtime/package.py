"""ModelVersion packages as user code sees them: unpack, read the manifest, import model code.

A package is a gzip'd tar of one directory:

    model/             the model code directory (trial, evaluate, predictor modules)
    checkpoint/        the Determined checkpoint (state_dict.pth, metadata.json, assets)
    requirements.txt   pinned requirements for loading and running the model
    cdl-package.json   the manifest: name, version, framework, entrypoints, hparams, lineage,
                       created, and the sha256 of every other file

This module runs inside user processes (evaluation, serving), so it imports only the standard
library; torch is imported lazily, and only for compressed variants. `pack` writes the archive
reproducibly (sorted entries, fixed owner, mode and mtime, no gzip timestamp) so the same files
always give the same sha256: the registry and compression share it.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import importlib
import json
import os
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "cdl-package.json"
FORMAT = "cdl-package/v1+tar.gz"
MANIFEST_FORMAT = "cdl-package/v1"
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoint"
REQUIREMENTS = "requirements.txt"
STATE_FILE = "state_dict.pth"
CLASS_NAMES_FILE = "class_names.json"
FIXED_MTIME = 315532800  # 1980-01-01T00:00:00Z: every archive entry gets it, so archives are reproducible
_CHUNK = 1 << 20


class PackageError(Exception):
    """A directory or archive is not a usable cdl package; the message says what is missing."""


@dataclass
class PackageInfo:
    """The manifest of an unpacked package, plus where its parts are."""

    root: Path
    name: str
    version: int
    framework: str
    framework_version: str
    entrypoints: dict[str, str] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    created: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    variant: dict[str, Any] | None = None  # e.g. {"method": "dynamic-int8", ...} for a compressed copy
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def model_dir(self) -> Path:
        return self.root / MODEL_DIR

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / CHECKPOINT_DIR

    @property
    def requirements_file(self) -> Path:
        return self.root / REQUIREMENTS

    def requirements(self) -> list[str]:
        """The pinned requirement lines (comments and blanks dropped)."""
        if not self.requirements_file.is_file():
            return []
        lines = (ln.split("#", 1)[0].strip() for ln in self.requirements_file.read_text().splitlines())
        return [ln for ln in lines if ln]

    def class_names(self) -> list[str] | None:
        """`checkpoint/class_names.json` when the trial saved one."""
        path = self.checkpoint_dir / CLASS_NAMES_FILE
        if not path.is_file():
            return None
        try:
            names = json.loads(path.read_text())
        except ValueError:
            return None
        return [str(n) for n in names] if isinstance(names, list) else None

    def verify(self) -> list[str]:
        """Files that are missing or whose content differs from the manifest (empty when intact)."""
        bad = []
        for rel, digest in sorted(self.files.items()):
            path = self.root / rel
            if not path.is_file() or file_sha256(path) != digest:
                bad.append(rel)
        return bad


# --------------------------------------------------------------------------- hashing and archives


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def package_files(root: Path) -> list[str]:
    """Every regular file under root as a sorted relative POSIX path (the manifest excluded).

    Bytecode caches are never part of a package, even when running its code wrote some."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in filenames:
            if name.endswith((".pyc", ".pyo")):
                continue
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write `cdl-package.json` with the sha256 of every other file under root; returns it."""
    body = {k: v for k, v in manifest.items() if k != "files"}
    body["format"] = MANIFEST_FORMAT
    body["files"] = {rel: file_sha256(root / rel) for rel in package_files(root)}
    (root / MANIFEST).write_text(json.dumps(body, indent=2, sort_keys=True, default=str) + "\n")
    return body


def pack(root: Path, archive: Path) -> tuple[str, int]:
    """Write root's files as a reproducible tar.gz; returns (sha256, bytes) of the archive.

    Entries are sorted, owned by 0:0 with empty names, mode 0644 (0755 for executables and
    directories) and a fixed mtime; the gzip header carries no name or time."""
    root = Path(root)
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".part")
    rels = package_files(root) + ([MANIFEST] if (root / MANIFEST).is_file() else [])
    dirs = sorted({p.as_posix() for rel in rels for p in Path(rel).parents if p.as_posix() != "."})
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(dirs + rels):
                path = root / name
                info = tarfile.TarInfo(name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = FIXED_MTIME
                if name in dirs:
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
                    continue
                info.size = path.stat().st_size
                info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
    tmp.replace(archive)
    return file_sha256(archive), archive.stat().st_size


UNPACK_ATTEMPTS = 20  # moves into place tried when other unpackers of the same dest race this one


def unpack(tar_path: str | Path, dest: str | Path) -> Path:
    """Extract a package archive into dest (created; replaced if it exists) and return dest.

    Only regular files and directories inside dest are accepted (tarfile's `data` filter), so an
    archive cannot write outside dest or create links and devices. The archive is extracted
    beside dest first and moved into place, so dest never holds half a package, even when two
    threads unpack the same archive at once."""
    tar_path, dest = Path(tar_path), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".unpacking", dir=dest.parent))
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            tar.extractall(staging, filter="data")
        if not (staging / MANIFEST).is_file():
            raise PackageError(f"{tar_path} is not a cdl package: it has no {MANIFEST}")
        for attempt in range(UNPACK_ATTEMPTS):
            try:
                staging.replace(dest)
                break
            except OSError as exc:  # dest exists: move it aside, then put the new copy in its place
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or attempt == UNPACK_ATTEMPTS - 1:
                    raise
                # another unpacker may put its copy in between the two moves: then go round again
                old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
                with contextlib.suppress(FileNotFoundError):
                    dest.replace(old / "package")
                _rmtree(old)
    except (tarfile.TarError, OSError) as exc:
        raise PackageError(f"cannot unpack {tar_path}: {exc}") from exc
    finally:
        if staging.exists():
            _rmtree(staging)
    return dest


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- manifest


def load_package(package_dir: str | Path) -> PackageInfo:
    """Read `cdl-package.json` of an unpacked package."""
    root = Path(package_dir)
    path = root / MANIFEST
    if not path.is_file():
        raise PackageError(f"{root} is not an unpacked cdl package: {MANIFEST} is missing")
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        raise PackageError(f"{path} is not valid JSON: {exc}") from exc
    return PackageInfo(
        root=root,
        name=str(raw.get("name", "")),
        version=int(raw.get("version") or 0),
        framework=str(raw.get("framework") or "unknown"),
        framework_version=str(raw.get("frameworkVersion") or ""),
        entrypoints=dict(raw.get("entrypoints") or {}),
        hparams=dict(raw.get("hparams") or {}),
        lineage=dict(raw.get("lineage") or {}),
        created=raw.get("created"),
        files=dict(raw.get("files") or {}),
        variant=raw.get("variant"),
        raw=raw,
    )


# --------------------------------------------------------------------------- importing model code

_ROOTS: set[str] = set()  # model directories put on sys.path by import_from_package


def _under(path: str | None, root: str) -> bool:
    return bool(path) and os.path.abspath(path).startswith(root + os.sep)


def _activate(code_dir: Path) -> None:
    """Put code_dir first on sys.path; forget modules another package's code dir provided.

    Two packages usually have modules of the same name (`serve`, `evaluate`); without this the
    second package would silently get the first one's modules from `sys.modules`."""
    root = str(code_dir.resolve())
    for other in list(_ROOTS):
        if other == root:
            continue
        for name, module in list(sys.modules.items()):
            if _under(getattr(module, "__file__", None), other):
                del sys.modules[name]
        while other in sys.path:
            sys.path.remove(other)
        _ROOTS.discard(other)
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    _ROOTS.add(root)
    importlib.invalidate_caches()


def code_dir(package_dir: str | Path) -> Path:
    """`model/` of an unpacked package, or the directory itself when it is bare model code."""
    root = Path(package_dir)
    return root / MODEL_DIR if (root / MODEL_DIR).is_dir() else root


def import_from_package(package_dir: str | Path, entrypoint: str) -> Any:
    """Import `module:Name` (or `module`, or `file.py`) from the package's model code.

    `Name` may be dotted (`module:Class.attr`). Returns the object, or the module when no name
    is given."""
    code = code_dir(package_dir)
    sys.dont_write_bytecode = True  # a package is an artifact: running its code must not change it
    module_name, _, attr = entrypoint.partition(":")
    if module_name.endswith(".py"):
        module_name = module_name[: -len(".py")].replace("/", ".")
    _activate(code)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name.split(".")[0]:
            raise PackageError(f"entrypoint {entrypoint!r}: no module {module_name!r} in {code}") from exc
        raise
    target: Any = module
    for part in filter(None, attr.split(".")):
        if not hasattr(target, part):
            raise PackageError(f"entrypoint {entrypoint!r}: {module_name} has no attribute {attr!r}")
        target = getattr(target, part)
    return target


# --------------------------------------------------------------------------- compressed variants

_INT8_ADAPTED = False


def prepare_process(info: PackageInfo) -> None:
    """Make unchanged user code load this package; call before importing or running its code.

    A `dynamic-int8` variant holds dynamically quantized weights under the same Determined
    layout (`state_dict.pth` -> `models_state_dict[0]`). User code builds its float network and
    calls `load_state_dict` as usual; here that call first quantizes the network's `nn.Linear`
    layers in place when it is handed quantized weights, so the same evaluate function and
    predictor serve both the original and the compressed model."""
    if (info.variant or {}).get("method") == "dynamic-int8":
        adapt_dynamic_int8_loading()


def _packed(state_dict: Any) -> bool:
    try:
        return any(str(k).endswith("_packed_params._packed_params") for k in state_dict.keys())
    except AttributeError:
        return False


def adapt_dynamic_int8_loading() -> None:
    """Wrap `torch.nn.Module.load_state_dict` (idempotent; see `prepare_process`)."""
    global _INT8_ADAPTED
    if _INT8_ADAPTED:
        return
    import torch
    from torch.ao.quantization import quantize_dynamic

    original = torch.nn.Module.load_state_dict

    def load_state_dict(self: Any, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
        quantized = any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in self.modules())
        if _packed(state_dict) and not quantized:
            if isinstance(self, torch.nn.Linear):
                raise PackageError("a dynamic-int8 package cannot be loaded into a bare nn.Linear: wrap it in a module")
            quantize_dynamic(self, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        return original(self, state_dict, *args, **kwargs)

    torch.nn.Module.load_state_dict = load_state_dict  # type: ignore[method-assign]
    _INT8_ADAPTED = True
