"""Running one pipeline step over its input commit, datum by datum, as Pachyderm does.

The input commit is cut into datums by the step's glob (`/` = the whole commit, `/*` = each top
entry, `/*/*` = each entry two levels down, `**` = any depth). Each datum runs the step's command
as a subprocess (own process group, own log) with the datum's files linked read-only under
`<scratch>/pfs/<input>/` and an empty `<scratch>/pfs/out/`, named by the `PFS_*` variables of
`cdl.runtime.pfs`. Datums run in parallel up to the worker count.

A datum's output is cached by (step hash, datum hash): the step hash covers the command, glob,
image, env, input name and the step's own code under the repo root; the datum hash covers its
path and file contents. So after a change to the source only new or changed datums run again,
and after a change to the step every datum does. A datum that fails `datumTries` times fails
the step with its log; the outputs of the datums that ran are cached all the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdl.api.datapipeline import Step
from cdl.engines.data.objects import FileEntry, ObjectStore, sha256_file
from cdl.files import read_only_tree, remove_tree, write_atomic
from cdl.processes import kill_group
from cdl.runtime.pfs import REPORT_NAME, input_env_name, merge_reports

LOG_TAIL = 4000
PASS_ENV = ("PATH", "HOME", "USER", "LANG", "LANGUAGE", "TZ", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "SSL_CERT_FILE",
            "SSL_CERT_DIR", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NLTK_DATA", "XDG_CACHE_HOME")
PYTHONS = ("python", "python3", f"python{sys.version_info.major}.{sys.version_info.minor}")


# --------------------------------------------------------------------------- datums


@dataclass
class Datum:
    """One glob match: a path in the input repo and the files at or under it."""

    path: str  # "/business/001.txt", "/business", or "/"
    files: dict[str, FileEntry]

    @property
    def hash(self) -> str:
        h = hashlib.sha256(self.path.encode())
        for rel in sorted(self.files):
            h.update(b"\x00" + rel.encode() + b"\x00" + self.files[rel].sha256.encode())
        return h.hexdigest()


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Pachyderm glob semantics: `*`, `?` and `[...]` stay within one path segment; `**` crosses."""
    body = pattern.strip("/")
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if body.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = body.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
                i += 1
            else:
                inner = body[i + 1:end].replace("\\", "\\\\")
                if inner.startswith("!"):
                    inner = "^" + inner[1:]
                out.append(f"[{inner}]")
                i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


def glob_datums(files: dict[str, FileEntry], pattern: str) -> list[Datum]:
    """The datums of a commit for a glob, in path order."""
    if not files:
        return []
    if pattern.strip("/") == "":
        return [Datum("/", dict(files))]
    regex = glob_regex(pattern)
    depth = None if "**" in pattern else len(pattern.strip("/").split("/"))
    groups: dict[str, dict[str, FileEntry]] = {}
    for rel, entry in files.items():
        parts = rel.split("/")
        levels = range(1, len(parts) + 1) if depth is None else [depth] if depth <= len(parts) else []
        for n in levels:
            candidate = "/".join(parts[:n])
            if regex.match(candidate):
                groups.setdefault(candidate, {})[rel] = entry
                break
    return [Datum("/" + path, group) for path, group in sorted(groups.items())]


# --------------------------------------------------------------------------- step identity


def code_fingerprint(command: list[str], base_dir: Path | None) -> str:
    """A hash of the step's own code under the repo root: the package of `-m module`, or scripts
    named in the command, so that editing a step re-runs it like changing its spec does."""
    if base_dir is None:
        return ""
    paths: list[Path] = []
    for i, arg in enumerate(command):
        if arg == "-m" and i + 1 < len(command):
            top = command[i + 1].split(".")[0]
            if (base_dir / top).is_dir():
                paths.extend(sorted(p for p in (base_dir / top).rglob("*.py") if "__pycache__" not in p.parts))
            elif (base_dir / f"{top}.py").is_file():
                paths.append(base_dir / f"{top}.py")
        elif arg.endswith((".py", ".sh", ".R", ".jl")) and (base_dir / arg).is_file():
            paths.append(base_dir / arg)
    h = hashlib.sha256()
    for path in paths:
        h.update(path.relative_to(base_dir).as_posix().encode() + b"\x00" + sha256_file(path)[0].encode())
    return h.hexdigest() if paths else ""


def step_hash(step: Step, input_name: str, base_dir: Path | None) -> str:
    spec = {
        "command": step.command,
        "glob": step.glob,
        "image": step.image,
        "env": step.env,
        "secrets": [f"{s.name}/{s.key}" for s in step.secrets],
        "input": input_name,
        "code": code_fingerprint(step.command, base_dir),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def secret_env_name(key: str) -> str:
    """The variable a step secret is exposed under: its key, upper-cased (`token` -> `TOKEN`)."""
    return "".join(c if c.isalnum() else "_" for c in key).upper()


# --------------------------------------------------------------------------- results


@dataclass
class DatumOutcome:
    datum: Datum
    state: str  # processed | skipped | failed | canceled
    files: dict[str, FileEntry] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    log: str = ""
    returncode: int | None = None
    tries: int = 0


@dataclass
class StepResult:
    step: str
    job: str
    files: dict[str, FileEntry]
    report: dict[str, Any]
    datums: int
    processed: int
    skipped: int
    failed: int
    failed_datum: str = ""
    failed_log: str = ""
    error: str = ""  # set when the step failed (a datum failed, outputs collided, or it was canceled)


class StepCanceled(Exception):
    """The run was superseded or the engine is shutting down."""


# --------------------------------------------------------------------------- the runner


class StepRunner:
    """Runs steps for one engine: scratch space, datum cache and failed-datum logs under root."""

    def __init__(self, root: Path, objects: ObjectStore, workers: int) -> None:
        self.root = root
        self.cache = root / "cache"
        self.work = root / "work"
        self.logs = root / "logs"
        for d in (self.cache, self.work, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.objects = objects
        self.workers = max(1, workers)
        self._procs: dict[int, str] = {}  # pid -> job
        self._procs_lock = threading.Lock()

    # ------------------------------------------------------------------ cache

    def _cache_path(self, shash: str, dhash: str) -> Path:
        return self.cache / shash[:16] / dhash[:2] / f"{dhash}.json"

    def _cache_get(self, shash: str, dhash: str) -> tuple[dict[str, FileEntry], dict[str, Any]] | None:
        path = self._cache_path(shash, dhash)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        files = {rel: FileEntry.from_wire(v) for rel, v in data["files"].items()}
        if not all(self.objects.has(e.sha256) for e in files.values()):
            return None  # collected since; run again
        return files, data.get("report", {})

    def _cache_put(self, shash: str, dhash: str, files: dict[str, FileEntry], report: dict[str, Any]) -> None:
        path = self._cache_path(shash, dhash)
        write_atomic(path, json.dumps({"files": {r: e.wire() for r, e in files.items()}, "report": report},
                                      separators=(",", ":")))

    # ------------------------------------------------------------------ running

    def run(
        self,
        step: Step,
        input_name: str,
        input_files: dict[str, FileEntry],
        job: str,
        base_dir: Path | None,
        secrets: dict[str, str] | None = None,
        cancel: threading.Event | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> StepResult:
        """Run every datum (cached ones are skipped); never raises for a failing datum."""
        cancel = cancel or threading.Event()
        shash = step_hash(step, input_name, base_dir)
        datums = glob_datums(input_files, step.glob)
        env = self._base_env(step, base_dir, secrets or {})
        stop = threading.Event()
        done = [0]
        lock = threading.Lock()

        def one(datum: Datum) -> DatumOutcome:
            if stop.is_set() or cancel.is_set():
                return DatumOutcome(datum, "canceled")
            outcome = self._run_datum(step, shash, datum, input_name, job, base_dir, env, cancel)
            if outcome.state == "failed":
                stop.set()
            with lock:
                done[0] += 1
                if progress:
                    progress(done[0], len(datums))
            return outcome

        workers = min(step.parallelism or self.workers, max(1, len(datums)))
        if workers == 1:
            outcomes = [one(d) for d in datums]
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix=f"datum-{step.name}") as pool:
                outcomes = list(pool.map(one, datums))
        return self._merge(step, job, outcomes, cancel)

    def _merge(self, step: Step, job: str, outcomes: list[DatumOutcome], cancel: threading.Event) -> StepResult:
        files: dict[str, FileEntry] = {}
        owner: dict[str, str] = {}
        report: dict[str, Any] = {}
        counts = {"processed": 0, "skipped": 0, "failed": 0}
        failed = next((o for o in outcomes if o.state == "failed"), None)
        error = ""
        for o in outcomes:
            if o.state in counts:
                counts[o.state] += 1
            if o.state not in ("processed", "skipped"):
                continue
            report = merge_reports(report, o.report) if report else dict(o.report)
            for rel, entry in o.files.items():
                if rel in files and files[rel] != entry and not error:
                    error = (f"step {step.name}: datums {owner[rel]} and {o.datum.path} both wrote {rel} "
                             "with different content; write each output path from one datum only")
                files.setdefault(rel, entry)
                owner.setdefault(rel, o.datum.path)
        result = StepResult(step.name, job, files, report, len(outcomes), counts["processed"], counts["skipped"],
                            counts["failed"])
        if failed is not None:
            exit_text = f"exit code {failed.returncode}" if failed.returncode is not None else "an error"
            last = next((line for line in reversed(failed.log.strip().splitlines()) if line.strip()), "")
            result.failed_datum = failed.datum.path
            result.failed_log = failed.log
            result.error = (f"step {step.name}: datum {failed.datum.path} failed after {failed.tries} "
                            f"tr{'y' if failed.tries == 1 else 'ies'} with {exit_text}"
                            + (f": {last[:300]}" if last else ""))
        elif cancel.is_set():
            result.error = f"step {step.name}: canceled"
        elif error:
            result.error = error
        return result

    def _base_env(self, step: Step, base_dir: Path | None, secrets: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in PASS_ENV or k.startswith("LC_")}
        env.setdefault("PATH", os.defpath)
        paths = [str(base_dir)] if base_dir else []
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PPS_PIPELINE_NAME"] = step.name
        env.update(step.env)
        for ref in step.secrets:
            value = secrets.get(f"{ref.name}/{ref.key}")
            if value is None:
                raise KeyError(f"spec.steps[{step.name}].secrets: secret {ref.name} key {ref.key} was not provided")
            env[secret_env_name(ref.key)] = value
        return env

    def _command(self, step: Step) -> list[str]:
        command = list(step.command)
        if command and command[0] in PYTHONS:
            command[0] = sys.executable
        return command

    def _run_datum(self, step: Step, shash: str, datum: Datum, input_name: str, job: str,
                   base_dir: Path | None, base_env: dict[str, str], cancel: threading.Event) -> DatumOutcome:
        dhash = datum.hash
        cached = self._cache_get(shash, dhash)
        if cached is not None:
            return DatumOutcome(datum, "skipped", cached[0], cached[1])
        log = ""
        returncode: int | None = None
        for attempt in range(1, step.datum_tries + 1):
            if cancel.is_set():
                return DatumOutcome(datum, "canceled")
            scratch = Path(tempfile.mkdtemp(prefix=f"{step.name}-", dir=self.work))
            try:
                ok, returncode, log, files, report = self._attempt(step, datum, dhash, input_name, job, base_dir,
                                                                   base_env, scratch)
            finally:
                remove_tree(scratch)
            if ok:
                self._cache_put(shash, dhash, files, report)
                return DatumOutcome(datum, "processed", files, report, tries=attempt)
            if cancel.is_set():
                return DatumOutcome(datum, "canceled")
        log_path = self.logs / job / f"{dhash[:16]}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(f"datum {datum.path}\n{log}")
        return DatumOutcome(datum, "failed", log=log[-LOG_TAIL:], returncode=returncode, tries=step.datum_tries)

    def _attempt(self, step: Step, datum: Datum, dhash: str, input_name: str, job: str, base_dir: Path | None,
                 base_env: dict[str, str], scratch: Path
                 ) -> tuple[bool, int | None, str, dict[str, FileEntry], dict[str, Any]]:
        pfs = scratch / "pfs"
        inp = pfs / input_name
        out = pfs / "out"
        tmp = scratch / "tmp"
        for d in (inp, out, tmp):
            d.mkdir(parents=True)
        stats: dict[str, tuple[int, int, int]] = {}
        for rel, entry in datum.files.items():
            target = inp / rel
            self.objects.link(entry.sha256, target)
            st = target.stat()
            stats[rel] = (st.st_ino, st.st_size, st.st_mtime_ns)
        read_only_tree(inp)
        datum_path = str(inp / datum.path.lstrip("/")) if datum.path != "/" else str(inp)
        env = dict(base_env)
        env.update({
            "PFS_ROOT": str(pfs),
            "PFS_INPUT_DIR": str(inp),
            "PFS_INPUT_NAME": input_name,
            input_env_name(input_name): str(inp),
            "PFS_DATUM": datum.path,
            "PFS_DATUM_PATH": datum_path,
            "PFS_OUT": str(out),
            "PFS_OUT_DIR": str(out),
            "PACH_JOB_ID": job,
            "PACH_DATUM_ID": dhash[:32],
            "TMPDIR": str(tmp),
        })
        if input_name.isidentifier():
            env[input_name] = datum_path
        log_file = scratch / "log.txt"
        try:
            with open(log_file, "wb") as log_out:
                proc = subprocess.Popen(self._command(step), cwd=str(base_dir or scratch), env=env,
                                        stdin=subprocess.DEVNULL, stdout=log_out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                with self._procs_lock:
                    self._procs[proc.pid] = job
                try:
                    returncode = proc.wait()
                finally:
                    with self._procs_lock:
                        self._procs.pop(proc.pid, None)
                    kill_group(proc.pid)  # anything the step left running in its group
        except OSError as exc:
            return False, None, f"cannot start {step.command[0]!r}: {exc}", {}, {}
        log = log_file.read_text(errors="replace")
        changed = self._inputs_changed(datum, inp, stats)
        if changed:
            return False, returncode, log + f"\nthe step modified its input file {changed}; inputs are read-only", {}, {}
        if returncode != 0:
            return False, returncode, log, {}, {}
        try:
            files, report = self._collect(out, inp, datum)
        except (OSError, ValueError) as exc:
            return False, returncode, log + f"\ncannot read the datum's output: {exc}", {}, {}
        return True, 0, log, files, report

    def _inputs_changed(self, datum: Datum, inp: Path, stats: dict[str, tuple[int, int, int]]) -> str:
        """A changed input file (the step wrote through the hardlink) is restored from nothing:
        the damaged object is dropped so no later reader sees it."""
        for rel, sig in stats.items():
            try:
                st = (inp / rel).stat()
            except FileNotFoundError:
                continue  # removing a link does not touch the object
            if (st.st_ino, st.st_size, st.st_mtime_ns) != sig and st.st_ino == sig[0]:
                self.objects.remove(datum.files[rel].sha256)
                return rel
        return ""

    def _collect(self, out: Path, inp: Path, datum: Datum) -> tuple[dict[str, FileEntry], dict[str, Any]]:
        files: dict[str, FileEntry] = {}
        report: dict[str, Any] = {}
        inp_real = os.path.realpath(inp)
        for root, _dirs, names in os.walk(out):
            for name in names:
                path = Path(root) / name
                rel = path.relative_to(out).as_posix()
                if rel == REPORT_NAME:
                    report = json.loads(path.read_text() or "{}")
                    continue
                if path.is_symlink():
                    real = os.path.realpath(path)
                    if real.startswith(inp_real + os.sep):
                        source_rel = Path(real).relative_to(inp_real).as_posix()
                        if source_rel in datum.files:
                            files[rel] = datum.files[source_rel]
                            continue
                    if not os.path.isfile(real):
                        raise ValueError(f"output {rel} is a link to {real}, which is not a file")
                    files[rel] = self.objects.put_file(Path(real))
                    continue
                if not path.is_file():
                    continue
                files[rel] = self.objects.put_file(path, move=True)
        return files, report

    def kill_jobs(self, marker: str = "") -> None:
        """Stop the running datum processes of jobs whose id contains `marker` (all for ''),
        by process group."""
        with self._procs_lock:
            pids = [pid for pid, job in self._procs.items() if marker in job]
        for pid in pids:
            kill_group(pid)
