"""The persisted state of a local training run: everything a restarted engine needs to resume.

One `run.json` per run holds the request, every trial's hyperparameters, validations,
checkpoints and resource figures, and the searcher's position (which is derived from the
trials). It is rewritten atomically by the run's single driver thread.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cdl.files import write_atomic

# Trial states. "paused" is ASHA's: the trial finished a rung and waits for a promotion.
PENDING, RUNNING, PAUSED, SUCCEEDED, FAILED, CANCELED = (
    "pending", "running", "paused", "succeeded", "failed", "canceled",
)
TRIAL_FINISHED = (SUCCEEDED, FAILED, CANCELED)


@dataclass
class Validation:
    steps: int  # batches (or the script's own step count) at the validation
    units: int  # epochs or batches done, in the searcher's unit
    value: float | None  # the searcher metric (None when the trial did not report it)
    metrics: dict[str, float]
    time: float
    # The trial's cumulative cpu_seconds, wall_seconds and peak_rss_bytes when it was reported
    # (and gpu_peak_bytes where the trial has a GPU).
    resources: dict[str, float] | None = None


@dataclass
class Checkpoint:
    uuid: str
    units: int
    steps: int
    time: float


@dataclass
class ProcessInfo:
    pid: int
    create_time: float
    started: float
    segment: int
    target: int | None  # absolute length this segment trains to
    stop: str | None = None  # the stop reason sent to it
    stop_sent: float | None = None
    killed: str | None = None  # why the engine killed it (budget) when it did


@dataclass
class TrialState:
    id: str
    index: int  # creation order, 0-based: the hyperparameter sample index
    hparams: dict[str, Any]
    seed: int
    state: str = PENDING
    stop_reason: str | None = None
    error: str | None = None
    target: int | None = None  # the current segment's absolute target length
    rung: int | None = None  # ASHA: the rung the current (or last) segment trains to
    rung_values: dict[str, float | None] = field(default_factory=dict)  # ASHA: rung -> metric there
    units_done: int = 0
    steps_done: int = 0
    segments: int = 0
    validations: list[Validation] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_bytes: int = 0
    gpu_utilization: float | None = None
    gpu_samples: int = 0
    process: ProcessInfo | None = None
    events_offset: int = 0
    uploaded: dict[str, str] | None = None  # {uuid, uri} once the best checkpoint is stored
    started: float | None = None
    finished: float | None = None
    recorded_validations: int = 0  # how many validations the database has

    # ------------------------------------------------------------------ derived values

    @property
    def finished_state(self) -> bool:
        return self.state in TRIAL_FINISHED

    def best_validation(self, smaller_is_better: bool) -> Validation | None:
        best: Validation | None = None
        for v in self.validations:
            if v.value is None or math.isnan(v.value):
                continue
            if best is None or (v.value < best.value if smaller_is_better else v.value > best.value):  # type: ignore[operator]
                best = v
        return best

    def latest_checkpoint(self) -> Checkpoint | None:
        return max(self.checkpoints, key=lambda c: (c.steps, c.time), default=None)

    def best_checkpoint(self, smaller_is_better: bool) -> Checkpoint | None:
        """The checkpoint taken at the best validation, else the latest one."""
        best = self.best_validation(smaller_is_better)
        if best is not None:
            at_best = [c for c in self.checkpoints if c.steps == best.steps]
            if at_best:
                return at_best[-1]
        return self.latest_checkpoint()


@dataclass
class RunState:
    id: str
    namespace: str
    name: str
    uid: str
    generation: int
    run: int
    spec: dict[str, Any]  # the ExperimentSpec on the wire (camelCase)
    model_dir: str
    data: dict[str, Any] | None
    created: float = field(default_factory=time.time)
    state: str = "pending"  # a JobState value
    message: str = ""
    canceled: bool = False
    finished: float | None = None
    trials: list[TrialState] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # one-off facts for the status message
    recorded: bool = False  # the database has the experiment run row

    def trial(self, trial_id: str) -> TrialState:
        for t in self.trials:
            if t.id == trial_id:
                return t
        raise KeyError(trial_id)


def _trial_from(raw: dict[str, Any]) -> TrialState:
    raw = dict(raw)
    raw["validations"] = [Validation(**v) for v in raw.get("validations", [])]
    raw["checkpoints"] = [Checkpoint(**c) for c in raw.get("checkpoints", [])]
    raw["process"] = ProcessInfo(**raw["process"]) if raw.get("process") else None
    return TrialState(**raw)


def run_from(raw: dict[str, Any]) -> RunState:
    raw = dict(raw)
    raw["trials"] = [_trial_from(t) for t in raw.get("trials", [])]
    return RunState(**raw)


def _json_default(value: Any) -> Any:
    return str(value)


def save(run: RunState, path: Path) -> None:
    """Write atomically: a crash leaves the previous complete state, never half a file."""
    write_atomic(path, json.dumps(asdict(run), default=_json_default, indent=1))


def load(path: Path) -> RunState:
    return run_from(json.loads(path.read_text()))
