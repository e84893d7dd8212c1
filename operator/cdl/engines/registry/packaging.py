"""Packaging rules shared by every registry engine: which files of a model directory go in (ignore
rules, as Determined reads `.detignore`), how requirements are pinned, which framework a checkpoint
holds, and which entrypoints (predictor, evaluate) the model code offers.

Engine-neutral: the local registry builds its packages with them, and the Determined registry
engine (and the training engines' context upload) read the same ignore rules.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pathspec

from cdl.errors import PermanentEngineError
from cdl.runtime.package import REQUIREMENTS, file_sha256

DEFAULT_EXCLUDES = (
    "__pycache__/", "*.pyc", "*.pyo", ".git/", ".hg/", ".svn/", ".ipynb_checkpoints/", ".pytest_cache/",
    ".mypy_cache/", ".ruff_cache/", ".venv/", "venv/", ".DS_Store", "*.egg-info/",
)
CHECKPOINT_EXCLUDES = ("__pycache__/", "*.pyc", "/code/")
IGNORE_FILES = (".gitignore", ".detignore")
FRAMEWORK_DISTS = {"pytorch": "torch", "keras": "keras", "tensorflow": "tensorflow"}


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
