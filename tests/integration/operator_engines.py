"""Small engines that implement the engine protocols for the operator-core tests.

They stand in for the real engines (which have their own issues and tests) so these tests can
drive every path of the reconcilers: they count every call (a duplicate submission shows up as
a second call — they are deliberately NOT idempotent), finish after a few polls, and can be told
to fail transiently or permanently.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cdl.engines.base import (
    CheckpointInfo,
    DataRef,
    DataRunStatus,
    EngineRef,
    JobState,
    RegisteredModel,
    ResourceKey,
    ServingStatus,
    TrainingStatus,
    TrialReport,
)
from cdl.engines.changes import ChangeFeed
from cdl.errors import PermanentEngineError, TransientEngineError


@dataclass
class Calls:
    log: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, what: str, who: str) -> None:
        with self.lock:
            self.log.append((what, who))

    def count(self, what: str, who: str | None = None) -> int:
        with self.lock:
            return sum(1 for w, k in self.log if w == what and (who is None or k == who))


class Faults:
    """Per-call scripted failures: `transient[name] = n` fails the next n calls."""

    def __init__(self) -> None:
        self.transient: dict[str, int] = {}
        self.permanent: dict[str, str] = {}

    def check(self, name: str) -> None:
        if name in self.permanent:
            raise PermanentEngineError(self.permanent[name])
        if self.transient.get(name, 0) > 0:
            self.transient[name] -= 1
            raise TransientEngineError(f"{name}: connection refused (scripted)")


class ScriptedDataEngine:
    """By default a run finishes on its `polls + 1`-th status call. With `reports=True` it is an
    engine that reports changes (`base.ReportsChanges`) like the local one: a run finishes in
    the engine's own thread right after it started (or, while `hold` is set, when the test calls
    `finish`), the engine says so, and status calls only read the state."""

    name = "local"

    def __init__(self, root: Path, polls: int = 1, reports: bool = False) -> None:
        self.root, self.polls, self.calls, self.faults = root, polls, Calls(), Faults()
        self.runs: dict[str, int] = {}
        self.fingerprint = "v1"
        self.reports = reports
        self.started = 0
        self.finished: set[str] = set()
        self.hold = threading.Event()
        self._lock = threading.Lock()
        self._keys: dict[str, ResourceKey] = {}  # run id -> its resource
        if reports:
            self.changes = ChangeFeed()
            self.subscribe = self.changes.subscribe
            self._finishing: queue.Queue[str] = queue.Queue()
            threading.Thread(target=self._finisher, name="scripted-data-finisher", daemon=True).start()

    def _finisher(self) -> None:
        while True:
            self._finish(self._finishing.get())

    def _finish(self, run_id: str) -> None:
        with self._lock:
            self.finished.add(run_id)
            key = self._keys[run_id]
        self.changes.emit(key)

    def finish(self, key) -> None:
        """Finish every run of `key` now (while `hold` keeps them running)."""
        with self._lock:
            runs = [r for r, k in self._keys.items() if k.name == key.name and k.namespace == key.namespace]
        for run_id in runs:
            self._finish(run_id)

    def source_fingerprint(self, request) -> str:
        return self.fingerprint

    def start_run(self, request) -> EngineRef:
        self.faults.check("start_run")
        self.calls.add("start_run", str(request.key))
        with self._lock:
            self.started += 1  # numbers runs in start order (the benchmark reads the largest)
            run_id = f"run-{request.key.name}-{self.started}"
            self.runs[run_id] = 0
            self._keys[run_id] = request.key
        if self.reports and not self.hold.is_set():
            self._finishing.put(run_id)
        return EngineRef(run_id, engine="scripted")

    def run_status(self, key, run_id, request=None) -> DataRunStatus:
        self.faults.check("run_status")
        with self._lock:
            # Run ids are made of the resource's name: a resource of the same name in another
            # namespace (an earlier test's, still on the shared API server) may carry the same id
            # from another instance. Its polls are not this run's, and for it the run is over.
            own = self._keys.get(run_id)
            foreign = own is not None and (own.namespace, own.name) != (key.namespace, key.name)
            if not foreign:
                self.runs[run_id] = self.runs.get(run_id, 0) + 1
            # Reporting: a run this instance never started belongs to another operator process's
            # instance (the benchmark's shards); like all of them it finished at once.
            running = not foreign and ((run_id in self._keys and run_id not in self.finished) if self.reports
                                       else self.runs[run_id] <= self.polls)
        if running:
            return DataRunStatus(run_id, JobState.RUNNING, "Processing", "step 1/1", source_hash=self.fingerprint)
        return DataRunStatus(run_id, JobState.SUCCEEDED, "Ready", source_hash=self.fingerprint,
                             outputs=self.outputs(key), repos={"train": f"{key.name}-train"})

    def outputs(self, key) -> dict[str, DataRef]:
        path = self.root / key.name
        path.mkdir(parents=True, exist_ok=True)
        return {o: DataRef(f"{key.name}-{o}", f"c-{self.fingerprint}-{o}", files=3, path=str(path))
                for o in ("train", "test")}

    def resolve(self, key, output, commit=""):
        return self.outputs(key)[output]

    def delete(self, key) -> None:
        self.calls.add("delete", str(key))


class ScriptedTrainingEngine:
    name = "local"

    def __init__(self, polls: int = 2) -> None:
        self.polls, self.calls, self.faults = polls, Calls(), Faults()
        self.seen: dict[str, int] = {}
        self.hold = threading.Event()  # while set, runs stay Running
        self.requests: list = []

    def submit(self, request) -> EngineRef:
        self.faults.check("submit")
        self.calls.add("submit", str(request.key))
        self.requests.append(request)
        ref = f"exp-{request.key.name}-g{request.generation}-r{request.run}"
        self.seen[ref] = 0
        return EngineRef(ref, url=f"http://engine/{ref}", engine="scripted")

    def status(self, ref) -> TrainingStatus:
        self.faults.check("status")
        self.seen[ref.id] = self.seen.get(ref.id, 0) + 1
        trial = TrialReport("1", JobState.RUNNING, {"lr": 0.1}, {"validation_accuracy": 0.5})
        if self.hold.is_set() or self.seen[ref.id] <= self.polls:
            return TrainingStatus(JobState.RUNNING, progress=0.5, trials=[trial], best=trial)
        done = TrialReport("1", JobState.SUCCEEDED, {"lr": 0.1}, {"validation_accuracy": 0.91},
                           checkpoint=CheckpointInfo("ck-1", "file:///tmp/ck-1", "/tmp/ck-1"))
        return TrainingStatus(JobState.SUCCEEDED, progress=1.0, trials=[done], best=done)

    def kill(self, ref) -> None:
        self.calls.add("kill", ref.id)

    def logs(self, ref, trial_id=None) -> str:
        return ""


class ScriptedRegistryEngine:
    name = "local"

    def __init__(self) -> None:
        self.calls, self.stages = Calls(), {}

    def register(self, request) -> RegisteredModel:
        self.calls.add("register", f"{request.model_name}:{request.version}")
        return RegisteredModel(request.version, f"file:///tmp/{request.model_name}/{request.version}.tar.gz",
                               "ab" * 32, 1234, "test", {"engine": "local", "id": str(request.version)})

    def set_stage(self, model_name, version, stage) -> None:
        self.stages[(model_name, version)] = stage

    def delete(self, model_name, version) -> None:
        self.calls.add("delete", f"{model_name}:{version}")


class ScriptedServingEngine:
    name = "local"

    def __init__(self) -> None:
        self.calls, self.applied = Calls(), {}

    def apply(self, request) -> EngineRef:
        self.calls.add("apply", str(request.key))
        self.applied[str(request.key)] = request
        return EngineRef(f"srv-{request.key.name}", engine="scripted")

    def status(self, key) -> ServingStatus:
        request = self.applied.get(str(key))
        if request is None:
            return ServingStatus("Deploying")
        return ServingStatus("Available", url=f"http://127.0.0.1:1/{key.name}", desired=request.replicas,
                             ready=request.replicas)

    def delete(self, key) -> None:
        self.calls.add("delete", str(key))
