"""Where a pipeline step reads its datum and writes its output, locally and on Pachyderm.

A step is a command run once per datum (one glob match of its input). On a Pachyderm cluster the
datum's files are mounted at `/pfs/<input>/...` and the output goes to `/pfs/out/`; the local data
engine gives the same layout in a scratch directory and names it through environment variables,
so the same step code runs unchanged in both places. Only the standard library is used.

Environment a step process gets from the local engine (all optional on a cluster, where the
`/pfs` defaults hold):
  PFS_ROOT          the `/pfs` directory of this datum (holds `<input>/` and `out/`)
  PFS_INPUT_DIR     the input directory (`/pfs/<input>`); files keep their repo paths below it
  PFS_INPUT_NAME    the input's name: `in`, as the Pachyderm engine names every step's input
  PFS_<INPUT>       the same directory under an upper-case name: `PFS_IN`
  <input>           Pachyderm's own variable: the datum's path, e.g. `in=/pfs/in/business/001.txt`
  PFS_DATUM_PATH    the datum's path (a file, or a directory for globs such as `/*` or `/`)
  PFS_DATUM         the datum's path relative to the input, e.g. `/business/001.txt`
  PFS_OUT, PFS_OUT_DIR   the output directory (`/pfs/out`); write files at their repo paths
  PACH_JOB_ID, PACH_DATUM_ID, PPS_PIPELINE_NAME   as on Pachyderm (job id, datum id, step name)
  CDL_INPUT_DIR, CDL_OUTPUT_DIR, CDL_STEP, CDL_PIPELINE (ns/name), CDL_FORMAT, CDL_LABELS_FROM
                    what the Pachyderm engine sets in its pipelines; the local engine sets them too

A step may write a report of what it kept and discarded to `<out>/.cdl-report.json` (see
`Report`); the engine merges the datums' reports into one per step output.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_ROOT = "PFS_ROOT"
ENV_INPUT_DIR = "PFS_INPUT_DIR"
ENV_INPUT_NAME = "PFS_INPUT_NAME"
ENV_DATUM_PATH = "PFS_DATUM_PATH"
ENV_DATUM = "PFS_DATUM"
ENV_OUT = "PFS_OUT"
ENV_OUT_DIR = "PFS_OUT_DIR"
ENV_CDL_INPUT_DIR = "CDL_INPUT_DIR"
ENV_CDL_OUTPUT_DIR = "CDL_OUTPUT_DIR"
DEFAULT_ROOT = "/pfs"
REPORT_NAME = ".cdl-report.json"


def input_env_name(name: str) -> str:
    """`PFS_<INPUT>`: the variable naming one input's directory (`validate` -> `PFS_VALIDATE`)."""
    return "PFS_" + "".join(c if c.isalnum() else "_" for c in name).upper()


def pfs_root() -> Path:
    return Path(os.environ.get(ENV_ROOT) or DEFAULT_ROOT)


def out_dir() -> Path:
    """The output directory (`/pfs/out`); created if missing."""
    value = os.environ.get(ENV_OUT) or os.environ.get(ENV_OUT_DIR) or os.environ.get(ENV_CDL_OUTPUT_DIR)
    path = Path(value) if value else pfs_root() / "out"
    path.mkdir(parents=True, exist_ok=True)
    return path


def input_dirs() -> dict[str, Path]:
    """Every input directory by input name (one for a single-input step)."""
    named = os.environ.get(ENV_INPUT_DIR) or os.environ.get(ENV_CDL_INPUT_DIR)
    if named:
        return {os.environ.get(ENV_INPUT_NAME) or Path(named).name: Path(named)}
    root = pfs_root()
    if not root.is_dir():
        return {}
    return {
        p.name: p for p in sorted(root.iterdir())
        if p.is_dir() and p.name != "out" and not p.name.startswith(".")
    }


def input_dir(name: str | None = None) -> Path:
    """One input directory: the named one, or the only one there is."""
    dirs = input_dirs()
    if name is not None:
        if name in dirs:
            return dirs[name]
        env = os.environ.get(input_env_name(name))
        if env:
            return Path(env)
        raise FileNotFoundError(f"no input named {name!r}; inputs: {', '.join(dirs) or 'none'}")
    if len(dirs) != 1:
        raise FileNotFoundError(
            f"expected one input under {pfs_root()}, found {len(dirs)}: {', '.join(dirs) or 'none'}; "
            f"set {ENV_INPUT_DIR} or pass the input's name"
        )
    return next(iter(dirs.values()))


@dataclass(frozen=True)
class DatumFile:
    """One input file of the current datum: where to read it and its path inside the repo."""

    path: Path
    rel: str  # repo path, posix, no leading slash: `business/001.txt`

    @property
    def label(self) -> str | None:
        """The automatic label: the parent folder's name (None for files at the top level)."""
        parent = Path(self.rel).parent.name
        return parent or None

    def output(self, rel: str | None = None) -> Path:
        """Where to write this file's result (the same repo path unless `rel` is given)."""
        return output_path(rel or self.rel)


def datum_files(name: str | None = None, include_hidden: bool = False) -> Iterator[DatumFile]:
    """The files of the current datum, in path order (hidden files skipped unless asked for)."""
    base = input_dir(name)
    for path in sorted(base.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(base).as_posix()
        if not include_hidden and any(part.startswith(".") for part in rel.split("/")):
            continue
        yield DatumFile(path, rel)


def output_path(rel: str) -> Path:
    """A path under the output directory, parents created; refuses paths that leave it."""
    rel = rel.lstrip("/")
    if not rel or any(part in ("", ".", "..") for part in rel.split("/")):
        raise ValueError(f"bad output path {rel!r}")
    path = out_dir() / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Report:
    """What a step kept, repaired and discarded (and why), written to `<out>/.cdl-report.json`.

    Counts are merged across datums by the engine: numbers add up, lists concatenate."""

    step: str = ""
    kept: int = 0
    discarded: Counter[str] = field(default_factory=Counter)
    repaired: Counter[str] = field(default_factory=Counter)
    files: list[dict[str, str]] = field(default_factory=list)  # {"path", "action", "reason"}

    def keep(self, rel: str) -> None:
        self.kept += 1

    def discard(self, rel: str, reason: str) -> None:
        self.discarded[reason] += 1
        self.files.append({"path": rel, "action": "discarded", "reason": reason})

    def repair(self, rel: str, reason: str) -> None:
        self.repaired[reason] += 1
        self.files.append({"path": rel, "action": "repaired", "reason": reason})

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "kept": self.kept,
            "discarded": dict(self.discarded),
            "repaired": dict(self.repaired),
            "discardedTotal": sum(self.discarded.values()),
            "files": self.files,
        }

    def write(self, directory: Path | None = None) -> Path:
        """Write (merging with a report already there, for steps that run more than once)."""
        path = (directory or out_dir()) / REPORT_NAME
        data = self.to_dict()
        if path.exists():
            data = merge_reports(json.loads(path.read_text()), data)
        path.write_text(json.dumps(data, indent=1, sort_keys=True))
        return path

    def summary(self) -> str:
        parts = [f"kept {self.kept}"]
        for reason, n in sorted(self.discarded.items()):
            parts.append(f"discarded {n} ({reason})")
        for reason, n in sorted(self.repaired.items()):
            parts.append(f"repaired {n} ({reason})")
        return ", ".join(parts)


def merge_reports(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Numbers add, dicts merge key by key, lists concatenate, other values: the last wins."""
    out = dict(a)
    for key, value in b.items():
        old = out.get(key)
        if isinstance(value, bool) or isinstance(old, bool):
            out[key] = value
        elif isinstance(value, int | float) and isinstance(old, int | float):
            out[key] = old + value
        elif isinstance(value, dict) and isinstance(old, dict):
            out[key] = merge_reports(old, value)
        elif isinstance(value, list) and isinstance(old, list):
            out[key] = old + value
        else:
            out[key] = value
    return out


def log(message: str) -> None:
    """A line in the datum's log (stderr, which the engine keeps for a failing datum)."""
    print(message, file=sys.stderr, flush=True)
