"""Persisted data runs: what a restarted operator needs to report a finished run or resume an
interrupted one, and which run's outputs are current.

`runs/<ns>--<name>/<run>.json` holds one run (its spec, generation, source hash, phase, outputs
and lineage; secret names, never values); `runs/<ns>--<name>/<run>.lock` is held (flock) by the
process running it, so a second process knows the run is alive. `pipelines/<ns>--<name>.json`
names the current outputs: it moves only when a run succeeds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cdl.engines.base import DataRef, DataRunStatus, JobState, StepReport
from cdl.engines.data.local.repo import now_iso
from cdl.files import write_json_atomic


@dataclass
class RunRecord:
    run_id: str
    namespace: str
    name: str
    generation: int
    spec: dict[str, Any]  # DataPipelineSpec.wire()
    base_dir: str | None = None
    force: bool = False
    secret_names: list[str] = field(default_factory=list)
    state: str = JobState.PENDING.value
    phase: str = "Ingesting"
    message: str = ""
    progress: float = 0.0
    source_hash: str | None = None
    repos: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {repo, branch, commit, files, bytes}
    lineage: list[dict[str, Any]] = field(default_factory=list)
    started: str = field(default_factory=now_iso)
    finished: str | None = None
    attempts: int = 0  # how many times a driver started on it (1 + resumes)
    # where the run stood when its last driver started: a driver that dies before the run moves on
    # counts against MAX_ATTEMPTS (a crash loop); one that made progress does not
    progress_at_start: float = -1.0
    phase_at_start: str = ""

    @property
    def job_state(self) -> JobState:
        return JobState(self.state)

    def to_status(self, paths: dict[str, str] | None = None) -> DataRunStatus:
        paths = paths or {}
        outputs = {
            name: DataRef(repo=o["repo"], commit=o["commit"], branch=o.get("branch", "master"),
                          files=o.get("files", 0), bytes=o.get("bytes", 0), path=paths.get(name))
            for name, o in self.outputs.items()
        }
        lineage = [StepReport(**entry) for entry in self.lineage]
        return DataRunStatus(
            run_id=self.run_id, state=self.job_state, phase=self.phase, message=self.message,
            progress=self.progress, source_hash=self.source_hash, repos=dict(self.repos), outputs=outputs,
            lineage=lineage,
        )


class RunStore:
    def __init__(self, root: Path) -> None:
        self.runs = root / "runs"
        self.pipelines = root / "pipelines"
        self.runs.mkdir(parents=True, exist_ok=True)
        self.pipelines.mkdir(parents=True, exist_ok=True)

    def _path(self, slug: str, run_id: str) -> Path:
        if "/" in run_id or run_id.startswith("."):
            raise ValueError(f"bad run id {run_id!r}")
        return self.runs / slug / f"{run_id}.json"

    def load(self, slug: str, run_id: str) -> RunRecord | None:
        path = self._path(slug, run_id)
        if not path.exists():
            return None
        return RunRecord(**json.loads(path.read_text()))

    def save(self, slug: str, record: RunRecord) -> None:
        write_json_atomic(self._path(slug, record.run_id), asdict(record))

    def list(self, slug: str) -> list[RunRecord]:
        folder = self.runs / slug
        if not folder.exists():
            return []
        records = [RunRecord(**json.loads(p.read_text())) for p in folder.glob("*.json")]
        return sorted(records, key=lambda r: r.started)

    def try_lock(self, slug: str, run_id: str) -> int | None:
        """An fd holding the run's lock, or None when another driver (thread or process) holds it."""
        path = self.runs / slug / f"{run_id}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    @staticmethod
    def unlock(fd: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # ------------------------------------------------------------------ the current outputs

    def current(self, slug: str) -> dict[str, Any]:
        path = self.pipelines / f"{slug}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def set_current(self, slug: str, data: dict[str, Any]) -> None:
        write_json_atomic(self.pipelines / f"{slug}.json", data)

    def forget(self, slug: str) -> None:
        import shutil

        shutil.rmtree(self.runs / slug, ignore_errors=True)
        (self.pipelines / f"{slug}.json").unlink(missing_ok=True)
