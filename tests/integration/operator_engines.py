"""Small engines that implement the engine protocols for the operator-core tests.

They stand in for the real engines (which have their own issues and tests) so these tests can
drive every path of the reconcilers: they count every call (a duplicate submission shows up as
a second call — they are deliberately NOT idempotent), finish after a few polls, and can be told
to fail transiently or permanently.
"""

from __future__ import annotations

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
    ServingStatus,
    TrainingStatus,
    TrialReport,
)
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
    name = "local"

    def __init__(self, root: Path, polls: int = 1) -> None:
        self.root, self.polls, self.calls, self.faults = root, polls, Calls(), Faults()
        self.runs: dict[str, int] = {}
        self.fingerprint = "v1"

    def source_fingerprint(self, request) -> str:
        return self.fingerprint

    def start_run(self, request) -> EngineRef:
        self.faults.check("start_run")
        self.calls.add("start_run", str(request.key))
        run_id = f"run-{request.key.name}-{self.calls.count('start_run')}"
        self.runs[run_id] = 0
        return EngineRef(run_id, engine="scripted")

    def run_status(self, key, run_id, request=None) -> DataRunStatus:
        self.faults.check("run_status")
        self.runs[run_id] = self.runs.get(run_id, 0) + 1
        if self.runs[run_id] <= self.polls:
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
