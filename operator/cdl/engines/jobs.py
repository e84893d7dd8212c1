"""Background jobs with persisted results, for work a reconciler must not wait on.

A job runs a function in a thread; its outcome is written as JSON under the root, so a
restarted operator finds the result (or re-runs a job that was cut off) instead of starting a
second copy. Used for ModelVersion evaluation and compression.
"""

from __future__ import annotations

import json
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdl.engines.base import JobState


@dataclass
class JobRecord:
    id: str
    state: JobState
    result: Any = None
    error: str = ""


class JobRunner:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}

    def _file(self, job_id: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in job_id)
        return self.root / f"{safe}.json"

    def _write(self, record: JobRecord) -> None:
        path = self._file(record.id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"id": record.id, "state": record.state.value, "result": record.result,
                                   "error": record.error}, default=str))
        tmp.replace(path)

    def get(self, job_id: str) -> JobRecord | None:
        path = self._file(job_id)
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return JobRecord(data["id"], JobState(data["state"]), data.get("result"), data.get("error", ""))

    def ensure(self, job_id: str, fn: Callable[[], Any]) -> JobRecord:
        """Start the job unless it finished or is running in this process; return its record."""
        with self._lock:
            record = self.get(job_id)
            if record is not None and record.state.finished:
                return record
            thread = self._threads.get(job_id)
            if thread is not None and thread.is_alive():
                return record or JobRecord(job_id, JobState.RUNNING)
            record = JobRecord(job_id, JobState.RUNNING)
            self._write(record)
            thread = threading.Thread(target=self._run, args=(job_id, fn), name=f"job-{job_id}", daemon=True)
            self._threads[job_id] = thread
            thread.start()
            return record

    def _run(self, job_id: str, fn: Callable[[], Any]) -> None:
        try:
            result = fn()
            self._write(JobRecord(job_id, JobState.SUCCEEDED, result))
        except Exception as exc:  # the job's own failure, reported to the reconciler
            tail = "".join(traceback.format_exception(exc)[-3:])
            self._write(JobRecord(job_id, JobState.FAILED, None, f"{exc}\n{tail}" if str(exc) else tail))

    def forget(self, prefix: str) -> None:
        for path in self.root.glob(f"{prefix}*.json"):
            path.unlink(missing_ok=True)
