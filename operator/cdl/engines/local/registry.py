"""The local Model Registry: a checkpoint, its code and its requirements as one reproducible package.

`LocalRegistryEngine.register` builds the package described in `cdl.runtime.package`
(`model/`, `checkpoint/`, pinned `requirements.txt`, `cdl-package.json`), writes it as a
reproducible tar.gz (the same inputs give the same sha256, so a restarted operator that registers
again gets the same artifact back) and stores it through the ArtifactStore at
`models/<name>/<version>/package.tar.gz`. A small JSON index under the engine's root keeps each
version's artifact and stage; PostgreSQL keeps the platform-wide record (the reconciler's job).

What goes in:
- `model/`: the model code directory, without what `.gitignore`/`.detignore` exclude and without
  caches (`__pycache__`, `*.pyc`, `.git`, virtual environments);
- `checkpoint/`: the Determined checkpoint directory (state_dict.pth, metadata.json and the
  assets the trial saved), from `CheckpointInfo.path` or downloaded from `CheckpointInfo.uri`;
  Determined's `code/` copy is left out (it is `model/` again) and only its hash is recorded;
- `requirements.txt`: the model's own requirements.txt with every requirement pinned to the
  version the training recorded (`metadata["packages"]`) or, failing that, the version installed
  here; without one, the third-party packages the model code imports (found by reading its
  import statements) and the framework, pinned the same way.

`requirements_site` builds a directory holding only a package's requirements (and their
dependencies), linked from this environment, so a package can be run isolated from everything
else installed here (see `cdl.engines.local.evaluation`).
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pathspec

from cdl.api.modelversion import MODEL_NAME, STAGES
from cdl.engines.base import RegisteredModel, RegistrationRequest
from cdl.errors import PermanentEngineError, TransientEngineError
from cdl.runtime.package import (
    CHECKPOINT_DIR,
    FORMAT,
    MODEL_DIR,
    REQUIREMENTS,
    file_sha256,
    load_package,
    pack,
    write_manifest,
)

DEFAULT_EXCLUDES = (
    "__pycache__/", "*.pyc", "*.pyo", ".git/", ".hg/", ".svn/", ".ipynb_checkpoints/", ".pytest_cache/",
    ".mypy_cache/", ".ruff_cache/", ".venv/", "venv/", ".DS_Store", "*.egg-info/",
)
CHECKPOINT_EXCLUDES = ("__pycache__/", "*.pyc", "/code/")
IGNORE_FILES = (".gitignore", ".detignore")
FRAMEWORK_DISTS = {"pytorch": "torch", "keras": "keras", "tensorflow": "tensorflow"}
KEY_TEMPLATE = "models/{name}/{version}/package.tar.gz"
VARIANT_KEY_TEMPLATE = "models/{name}/{version}/{variant}/package.tar.gz"
PASSED_METADATA = ("model", "training", "trials", "packages", "environment", "data", "evaluation", "description")


# --------------------------------------------------------------------------- ignore rules


class IgnoreRules:
    """`.gitignore`-style patterns (pathspec's GitIgnoreSpec, as Determined reads `.detignore`):
    `*`, `?`, `**`, `[...]`, trailing `/` for folders, a slash anchoring to the top, `!` to
    re-include; the last matching pattern decides."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.spec = pathspec.GitIgnoreSpec.from_lines(list(patterns))

    @classmethod
    def for_directory(cls, directory: Path, defaults: Sequence[str] = DEFAULT_EXCLUDES) -> IgnoreRules:
        patterns = list(defaults)
        for name in IGNORE_FILES:
            path = directory / name
            if path.is_file():
                patterns += path.read_text(errors="replace").splitlines()
        return cls(patterns)

    def ignored(self, rel: str, is_dir: bool) -> bool:
        return self.spec.match_file(f"{rel}/" if is_dir else rel)

    def files(self, root: Path) -> Iterator[tuple[str, Path]]:
        """(relative POSIX path, path) of each kept regular file under root, sorted; an ignored
        folder is not entered; symbolic links to files are followed, to folders not."""
        for dirpath, dirnames, filenames in os.walk(root):
            base = Path(dirpath)
            rel_base = base.relative_to(root).as_posix()
            prefix = "" if rel_base == "." else rel_base + "/"
            dirnames[:] = sorted(d for d in dirnames if not self.ignored(prefix + d, True)
                                 and not (base / d).is_symlink())
            for name in sorted(filenames):
                path = base / name
                if path.is_file() and not self.ignored(prefix + name, False):
                    yield prefix + name, path


def copy_filtered(src: Path, dest: Path, rules: IgnoreRules) -> list[str]:
    """Copy the kept files of src to dest; returns their relative paths."""
    copied = []
    for rel, path in rules.files(src):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        os.chmod(target, 0o755 if os.access(path, os.X_OK) else 0o644)
        copied.append(rel)
    return copied


def tree_sha256(root: Path, rules: IgnoreRules | None = None) -> str:
    """One hash for a folder's kept files and their paths."""
    digest = hashlib.sha256()
    for rel, path in (rules or IgnoreRules.for_directory(root)).files(root):
        digest.update(f"{rel}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- requirements

_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*?)\s*(;.*)?$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _satisfies(version: str, specifier: str) -> bool | None:
    """Whether version meets specifier; None when `packaging` is not there to tell."""
    try:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.version import InvalidVersion
    except ImportError:  # pragma: no cover - packaging ships with pip/setuptools nearly everywhere
        return None
    try:
        return SpecifierSet(specifier).contains(version, prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return None


def _pin_line(line: str, known: Mapping[str, str]) -> tuple[str, str | None]:
    """(pinned line, note or None) for one requirement line."""
    match = _REQ.match(line)
    if not match:
        return line, f"kept as written (not a plain requirement): {line}"
    name, extras, spec, marker = match.group(1), match.group(2) or "", match.group(3).strip(), match.group(4) or ""
    marker = f" {marker.strip()}" if marker else ""
    if spec.startswith("==") and "*" not in spec and "," not in spec:
        wanted = spec[2:].strip()
        have = known.get(canonical(name)) or _installed_version(name)
        note = None
        if have and have != wanted and _satisfies(have, f"=={wanted}") is not True:  # 2.13.0+cpu is ==2.13.0
            note = f"{name}: requirements.txt pins {wanted} but {have} was used; kept {wanted}"
        return f"{name}{extras}=={wanted}{marker}", note
    have = known.get(canonical(name)) or _installed_version(name)
    if have is None:
        return line.strip(), f"{name}: not installed here and not recorded by the training; left as {spec or 'any'}"
    if spec and _satisfies(have, spec) is False:
        return line.strip(), f"{name}: {have} is installed but requirements.txt asks for {spec}; left unpinned"
    return f"{name}{extras}=={have}{marker}", None


def imported_modules(code_dir: Path) -> set[str]:
    """Top-level names of the absolute imports in the code's .py files, minus its own modules
    and the standard library."""
    rules = IgnoreRules.for_directory(code_dir)
    local = set()
    found: set[str] = set()
    for rel, path in rules.files(code_dir):
        first = rel.split("/", 1)[0]
        local.add(first[:-3] if first.endswith(".py") else first)
        if not rel.endswith(".py"):
            continue
        try:
            tree = ast.parse(path.read_text(errors="replace"), filename=str(path))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in local and m not in sys.stdlib_module_names and m != "__future__"}


def pin_requirements(
    code_dir: Path, known: Mapping[str, str] | None = None, framework: str | None = None
) -> tuple[list[str], list[str]]:
    """(pinned requirement lines, notes) for the model code in code_dir; see the module docstring.

    `known` maps distribution names to the versions the training used."""
    known = {canonical(k): str(v) for k, v in (known or {}).items()}
    notes: list[str] = []
    own = code_dir / REQUIREMENTS
    if own.is_file():
        lines = []
        for raw in own.read_text(errors="replace").splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("-"):
                notes.append(f"option line left out: {line}")
                continue
            pinned, note = _pin_line(line, known)
            lines.append(pinned)
            if note:
                notes.append(note)
        return lines, notes
    by_module = importlib.metadata.packages_distributions()
    dists: dict[str, str] = {}
    for module in sorted(imported_modules(code_dir)):
        names = by_module.get(module)
        if not names:
            notes.append(f"import {module}: no installed distribution provides it")
            continue
        dists.setdefault(canonical(names[0]), names[0])
    if framework in FRAMEWORK_DISTS and _installed_version(FRAMEWORK_DISTS[framework]):
        dists.setdefault(canonical(FRAMEWORK_DISTS[framework]), FRAMEWORK_DISTS[framework])
    lines = []
    for key, name in sorted(dists.items()):
        version = known.get(key) or _installed_version(name)
        lines.append(f"{name}=={version}" if version else name)
    notes.append("inferred from the model code's imports (no requirements.txt)")
    return lines, notes


def requirement_names(lines: Sequence[str]) -> list[tuple[str, set[str]]]:
    """(name, extras) of each requirement line."""
    out = []
    for line in lines:
        match = _REQ.match(line.split("#", 1)[0])
        if match and match.group(1):
            extras = {e.strip() for e in (match.group(2) or "").strip("[]").split(",") if e.strip()}
            out.append((match.group(1), extras))
    return out


def _dependencies(dist: importlib.metadata.Distribution, extras: set[str]) -> list[tuple[str, set[str]]]:
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # pragma: no cover
        Requirement = None  # type: ignore[assignment,misc]  # noqa: N806
    out = []
    for text in dist.requires or []:
        if Requirement is None:
            if "extra ==" in text:
                continue
            match = _REQ.match(text)
            if match:
                out.append((match.group(1), set()))
            continue
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is not None:
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if not any(req.marker.evaluate(env) for env in envs):
                continue
        out.append((req.name, set(req.extras)))
    return out


def _top_level(dist: importlib.metadata.Distribution) -> set[str]:
    tops = set()
    for entry in dist.files or []:
        parts = entry.parts
        if (not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith(".pth")
                or parts[0].startswith("__editable__")):
            continue
        tops.add(parts[0])
    return tops


def requirements_site(requirements: Sequence[str], dest: Path, *, runtime: bool = True) -> Path:
    """A directory holding only the given requirements and their dependencies, linked from
    this environment; with `runtime`, also the `cdl` package (the platform's runner).

    Running `python -I -S` with this directory as the only site directory shows whether a
    package's requirements.txt is complete: anything it forgot is not importable. The versions
    are this environment's; a pinned version that differs from the installed one is an error,
    since the check would then not be about the pinned versions."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    pending = list(requirement_names(requirements))
    pinned = {canonical(n): line for line in requirements for n, _ in requirement_names([line])}
    seen: dict[str, set[str]] = {}
    while pending:
        name, extras = pending.pop()
        key = canonical(name)
        if key in seen and extras <= seen[key]:
            continue
        seen[key] = seen.get(key, set()) | extras
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise PermanentEngineError(f"requirement {name} is not installed in this environment") from None
        line = pinned.get(key, "")
        if "==" in line:
            wanted = line.split("==", 1)[1].split(";", 1)[0].strip()
            if wanted != dist.version and _satisfies(dist.version, f"=={wanted}") is not True:
                raise PermanentEngineError(f"requirement {name}=={wanted}: this environment has {dist.version}")
        _link_distribution(dist, dest)
        pending.extend(_dependencies(dist, seen[key]))
    if runtime:
        _link_module("cdl", dest)
    return dest


def _link_distribution(dist: importlib.metadata.Distribution, dest: Path) -> None:
    linked = False
    for top in sorted(_top_level(dist)):
        source = Path(str(dist.locate_file(top)))
        if source.exists():
            _symlink(source, dest / top)
            linked = linked or not top.endswith((".dist-info", ".egg-info"))
    if not linked:  # an editable install: its code lives elsewhere, found by import name
        names = (dist.read_text("top_level.txt") or "").split()
        for name in names:
            _link_module(name, dest)


def _link_module(name: str, dest: Path) -> None:
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise PermanentEngineError(f"module {name} is not importable in this environment")
    if spec.submodule_search_locations:
        _symlink(Path(list(spec.submodule_search_locations)[0]), dest / name)
    elif spec.origin:
        _symlink(Path(spec.origin), dest / Path(spec.origin).name)


def _symlink(source: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        return
    link.symlink_to(source.resolve(), target_is_directory=source.is_dir())


# --------------------------------------------------------------------------- checkpoint and metadata


def detect_framework(checkpoint_dir: Path, code_dir: Path | None = None) -> tuple[str, str]:
    """(framework, version) from the checkpoint's metadata.json, its files, or the code's imports."""
    meta = checkpoint_dir / "metadata.json"
    if meta.is_file():
        with contextlib.suppress(ValueError):
            text = str(json.loads(meta.read_text()).get("framework") or "")
            lib, _, version = text.partition("-")
            if lib == "torch":
                return "pytorch", version
            if lib in ("tensorflow", "keras"):
                return lib, version
    if (checkpoint_dir / "state_dict.pth").is_file():
        return "pytorch", _installed_version("torch") or ""
    names = {p.name for p in checkpoint_dir.iterdir()} if checkpoint_dir.is_dir() else set()
    if any(n.startswith("model_checkpoint") or n.endswith((".keras", ".h5")) or n == "saved_model.pb" for n in names):
        return "keras", _installed_version("keras") or _installed_version("tensorflow") or ""
    imports = imported_modules(code_dir) if code_dir is not None and code_dir.is_dir() else set()
    if "torch" in imports:
        return "pytorch", _installed_version("torch") or ""
    if imports & {"tensorflow", "keras"}:
        return "keras", _installed_version("keras") or ""
    return "unknown", ""


def discover_entrypoints(code_dir: Path) -> dict[str, str]:
    """Entrypoints found by reading the code: the one predictor class (defines `load` and
    `predict`) and the `evaluate(model_dir, data_dir)` function, when unambiguous."""
    predictors, evaluators = [], []
    for rel, path in IgnoreRules.for_directory(code_dir).files(code_dir):
        if "/" in rel or not rel.endswith(".py"):
            continue
        module = rel[:-3]
        try:
            tree = ast.parse(path.read_text(errors="replace"))
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
                if {"load", "predict"} <= methods:
                    predictors.append(f"{module}:{node.name}")
            elif isinstance(node, ast.FunctionDef) and node.name == "evaluate" and len(node.args.args) >= 2:
                evaluators.append(f"{module}:{node.name}")
    found = {}
    if len(predictors) == 1:
        found["predictor"] = predictors[0]
    preferred = [e for e in evaluators if e.startswith("evaluate:")]
    if preferred or len(evaluators) == 1:
        found["evaluate"] = (preferred or evaluators)[0]
    return found


def _created(metadata: Mapping[str, Any], checkpoint_dir: Path, local: bool) -> str | None:
    """When the checkpoint was made: the caller's value, else a local checkpoint's file time.

    A downloaded copy's file times are the download's, which would make the package differ
    between two registrations of the same checkpoint, so none is recorded then."""
    if metadata.get("created"):
        return str(metadata["created"])
    if not local:
        return None
    times = [p.stat().st_mtime for p in checkpoint_dir.rglob("*")
             if p.is_file() and p.relative_to(checkpoint_dir).parts[0] != "code"]
    if not times:
        return None
    return datetime.fromtimestamp(int(max(times)), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


# --------------------------------------------------------------------------- the engine


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LocalRegistryEngine:
    """Model packages in an ArtifactStore, stages in a JSON index under `root`."""

    name = "local"

    def __init__(self, root: Path, artifacts: Any, s3: Any | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.artifacts = artifacts  # cdl.stores.artifacts.ArtifactStore
        self.s3 = s3  # cdl.stores.artifacts.S3Settings for checkpoints in another bucket
        self._index_path = self.root / "index.json"

    # ------------------------------------------------------------------ index

    @contextlib.contextmanager
    def _index(self) -> Iterator[dict[str, Any]]:
        """The index, locked across processes for the block and written back atomically."""
        with open(self.root / ".index.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = json.loads(self._index_path.read_text()) if self._index_path.is_file() else {}
                data.setdefault("models", {})
                before = json.dumps(data, sort_keys=True)
                yield data
                if json.dumps(data, sort_keys=True) != before:
                    tmp = self._index_path.with_suffix(".tmp")
                    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
                    tmp.replace(self._index_path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def get(self, model_name: str, version: int) -> dict[str, Any] | None:
        """The index record of one version (artifact, stage, variants), or None."""
        with self._index() as index:
            record = index["models"].get(model_name, {}).get(str(version))
            return dict(record) if record else None

    def versions(self, model_name: str) -> dict[int, dict[str, Any]]:
        with self._index() as index:
            return {int(v): dict(r) for v, r in index["models"].get(model_name, {}).items()}

    def stages(self, model_name: str) -> dict[int, str]:
        return {v: r.get("stage", "candidate") for v, r in self.versions(model_name).items()}

    def package_path(self, model_name: str, version: int) -> Path:
        """Where this engine keeps the unpacked copy of a version."""
        return self.root / "packages" / model_name / str(version)

    # ------------------------------------------------------------------ register

    def register(self, request: RegistrationRequest) -> RegisteredModel:
        name, version = request.model_name, int(request.version)
        if not re.match(MODEL_NAME, name) or version < 1:
            raise PermanentEngineError(f"registry: invalid model name {name!r} or version {version}")
        model_dir = Path(request.model_dir)
        if not model_dir.is_dir():
            raise PermanentEngineError(f"registry: model code directory {model_dir} does not exist")
        staging_root = self.root / "staging"
        staging_root.mkdir(exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{name}-{version}-", dir=staging_root))
        try:
            pkg = staging / "package"
            pkg.mkdir()
            manifest = self._build(request, pkg, staging)
            archive = staging / "package.tar.gz"
            sha256, size = pack(pkg, archive)
            key = KEY_TEMPLATE.format(name=name, version=version)
            existing = self.get(name, version)
            if existing and existing.get("sha256") != sha256:
                raise PermanentEngineError(
                    f"registry: {name} version {version} is already registered with a different package "
                    f"(sha256 {existing.get('sha256', '')[:12]}, now {sha256[:12]}); versions are immutable: "
                    f"delete it first or register a new version")
            stored = self._put(key, archive)
            target = self.package_path(name, version)
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            pkg.replace(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        with self._index() as index:
            versions = index["models"].setdefault(name, {})
            record = versions.get(str(version)) or {"stage": "candidate", "registered": _now(),
                                                    "stageHistory": [{"stage": "candidate", "at": _now()}]}
            record.update(uri=stored.uri, key=key, sha256=sha256, bytes=size, format=FORMAT,
                          resource=str(request.key), framework=manifest["framework"])
            versions[str(version)] = record
        return RegisteredModel(
            version=version, artifact_uri=stored.uri, sha256=sha256, bytes=size, format=FORMAT,
            registry={"engine": self.name, "id": f"{name}/{version}", "url": stored.uri},
            package_dir=str(self.package_path(name, version)),
        )

    def _put(self, key: str, archive: Path) -> Any:
        try:
            return self.artifacts.put_file(key, archive)
        except PermanentEngineError:
            raise
        except Exception as exc:  # noqa: BLE001 - the store's own errors: unreachable S3 is transient
            from cdl.errors import TransientError

            if isinstance(exc, TransientError):
                raise TransientEngineError(f"registry: cannot store {key}: {exc}") from exc
            raise PermanentEngineError(f"registry: cannot store {key}: {exc}") from exc

    def _checkpoint(self, request: RegistrationRequest, staging: Path) -> tuple[Path, bool]:
        """(a local directory holding the checkpoint, whether it is the original rather than a download)."""
        ck = request.checkpoint
        if ck.path and Path(ck.path).is_dir():
            return Path(ck.path), True
        if ck.uri.startswith("file://") or ck.uri.startswith("/"):
            from cdl.stores.artifacts import file_uri_path

            path = file_uri_path(ck.uri) if ck.uri.startswith("file://") else Path(ck.uri)
            if path.is_dir():
                return path, True
            raise PermanentEngineError(f"registry: checkpoint {ck.uuid or ck.uri}: {path} is not a directory")
        download = staging / "download"
        try:
            try:
                key = self.artifacts.key_for(ck.uri)
            except ValueError:
                key = None
            if key is not None:
                self.artifacts.get_dir(key, download)
            else:
                from cdl.stores.artifacts import download_uri

                download_uri(ck.uri, download, s3=self.s3)
        except (PermanentEngineError, TransientEngineError):
            raise
        except Exception as exc:  # noqa: BLE001
            from cdl.errors import TransientError

            cls = TransientEngineError if isinstance(exc, TransientError) else PermanentEngineError
            raise cls(f"registry: cannot fetch checkpoint {ck.uri}: {exc}") from exc
        return download, False

    def _build(self, request: RegistrationRequest, pkg: Path, staging: Path) -> dict[str, Any]:
        model_dir = Path(request.model_dir)
        copy_filtered(model_dir, pkg / MODEL_DIR, IgnoreRules.for_directory(model_dir))
        source, local = self._checkpoint(request, staging)
        if not (source / "state_dict.pth").is_file() and not any(source.iterdir()):
            raise PermanentEngineError(f"registry: checkpoint {request.checkpoint.uri} is empty")
        copy_filtered(source, pkg / CHECKPOINT_DIR, IgnoreRules(CHECKPOINT_EXCLUDES))
        framework, framework_version = detect_framework(pkg / CHECKPOINT_DIR, pkg / MODEL_DIR)
        metadata = dict(request.metadata or {})
        lines, notes = pin_requirements(model_dir, metadata.get("packages"), framework)
        header = [f"# pinned by cdl for {request.model_name} version {request.version}"]
        (pkg / REQUIREMENTS).write_text("\n".join(header + lines) + "\n")
        experiment = metadata.get("experiment") or {}
        entrypoints = discover_entrypoints(pkg / MODEL_DIR)
        trial_entry = (experiment.get("model") or {}).get("entrypoint") if isinstance(experiment, dict) else None
        if trial_entry:
            entrypoints["trial"] = trial_entry
        entrypoints.update(metadata.get("entrypoints") or {})
        checkpoint_meta: dict[str, Any] = {"uuid": request.checkpoint.uuid, "uri": request.checkpoint.uri}
        det_meta = pkg / CHECKPOINT_DIR / "metadata.json"
        if det_meta.is_file():
            with contextlib.suppress(ValueError):
                checkpoint_meta["determined"] = json.loads(det_meta.read_text())
        if (source / "code").is_dir():
            checkpoint_meta["codeSha256"] = tree_sha256(source / "code")
        manifest: dict[str, Any] = {
            "name": request.model_name,
            "version": int(request.version),
            "resource": str(request.key),
            "framework": framework,
            "frameworkVersion": framework_version,
            "entrypoints": dict(sorted(entrypoints.items())),
            "hparams": request.hparams or {},
            "lineage": metadata.get("lineage") or {},
            "created": _created(metadata, source, local),
            "checkpoint": checkpoint_meta,
            "codeSha256": tree_sha256(pkg / MODEL_DIR, IgnoreRules(())),
            "requirements": lines,
            "requirementNotes": notes,
            "experiment": {"spec": experiment} if experiment else {},
            "python": ".".join(map(str, sys.version_info[:3])),
            "variant": None,
        }
        if request.experiment_ref is not None:
            manifest["experiment"]["engineRef"] = request.experiment_ref.wire()
        for key in PASSED_METADATA:
            if metadata.get(key) is not None:
                manifest[key] = metadata[key]
        return write_manifest(pkg, _plain(manifest))

    # ------------------------------------------------------------------ variants, stages, delete

    def store_variant(self, model_name: str, version: int, variant: str, package_dir: Path) -> RegisteredModel:
        """Store a derived package (e.g. the dynamic-int8 compression) beside the version."""
        info = load_package(package_dir)
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            archive = Path(tmp) / "package.tar.gz"
            sha256, size = pack(info.root, archive)
            key = VARIANT_KEY_TEMPLATE.format(name=model_name, version=version, variant=variant)
            stored = self._put(key, archive)
        with self._index() as index:
            record = index["models"].get(model_name, {}).get(str(version))
            if record is not None:
                record.setdefault("variants", {})[variant] = {"uri": stored.uri, "key": key, "sha256": sha256,
                                                            "bytes": size, "format": FORMAT}
        return RegisteredModel(version=version, artifact_uri=stored.uri, sha256=sha256, bytes=size, format=FORMAT,
                               registry={"engine": self.name, "id": f"{model_name}/{version}/{variant}",
                                         "url": stored.uri})

    def set_stage(self, model_name: str, version: int, stage: str) -> None:
        if stage not in STAGES:
            raise PermanentEngineError(f"registry: unknown stage {stage!r}; allowed: {', '.join(STAGES)}")
        with self._index() as index:
            record = index["models"].get(model_name, {}).get(str(version))
            if record is None:
                raise PermanentEngineError(f"registry: {model_name} version {version} is not registered")
            if record.get("stage") != stage:
                record["stage"] = stage
                record.setdefault("stageHistory", []).append({"stage": stage, "at": _now()})

    def delete(self, model_name: str, version: int) -> None:
        """Remove the version's artifacts (package and variants), local copy and index entry.
        Deleting what is not there is not an error."""
        try:
            self.artifacts.delete_prefix(f"models/{model_name}/{version}")
        except Exception as exc:  # noqa: BLE001
            from cdl.errors import TransientError

            if isinstance(exc, TransientError):
                raise TransientEngineError(f"registry: cannot delete {model_name} version {version}: {exc}") from exc
            raise PermanentEngineError(f"registry: cannot delete {model_name} version {version}: {exc}") from exc
        shutil.rmtree(self.package_path(model_name, version), ignore_errors=True)
        with self._index() as index:
            versions = index["models"].get(model_name, {})
            versions.pop(str(version), None)
            if not versions:
                index["models"].pop(model_name, None)
