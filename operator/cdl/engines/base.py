"""Engine protocols: the narrow interfaces reconcilers use to drive engines.

Each protocol is implemented by a local engine (`cdl.engines.<role>.local`) and a cluster engine
(pachyderm, determined, seldon). Engines know nothing of Kubernetes: they receive plain values
(the validated spec models, resolved secrets, data references) and return plain values. They
raise `cdl.errors.TransientEngineError` for retryable trouble and `PermanentEngineError` when
the engine refused the work.

Every submit-style call is idempotent for the same `(key, generation, run)` so a restarted
operator that calls it again gets the same job back, never a second one.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cdl.api.datapipeline import DataPipelineSpec, Labeling
from cdl.api.experiment import ExperimentSpec


@dataclass(frozen=True)
class ResourceKey:
    """Which resource a piece of engine work belongs to."""

    namespace: str
    name: str
    uid: str = ""

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def slug(self) -> str:
        """A filesystem- and DNS-safe identifier, unique per namespace and name."""
        return f"{self.namespace}--{self.name}"


ChangeListener = Callable[[ResourceKey], None]


@runtime_checkable
class ReportsChanges(Protocol):
    """An engine that says when the work of a resource changed state (a run finished, a trial
    reported, a server died), so the operator follows only what changed instead of polling
    every resource. One channel per engine: the listener is called with the affected key, from
    any thread, and must return at once (the operator only queues the key)."""

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Start calling `listener(key)` on changes; returns the function that stops it."""


class JobState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED)


@dataclass
class EngineRef:
    """The engine's own id for a job (written to status before waiting on it) and a UI link."""

    id: str
    url: str = ""
    engine: str = ""

    def wire(self) -> dict[str, str]:
        return {k: v for k, v in {"id": self.id, "url": self.url, "engine": self.engine}.items() if v}


# --------------------------------------------------------------------------- data


@dataclass
class DataRef:
    """One immutable data version: a commit of a repo, and where its files can be read.

    `path` is a local directory holding the commit's files (local engine); `uri` names it for
    engines that read it themselves (e.g. `pfs://repo@commit`)."""

    repo: str
    commit: str
    branch: str = "master"
    files: int = 0
    bytes: int = 0
    path: str | None = None
    uri: str | None = None

    def wire(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "branch": self.branch,
            "commit": self.commit,
            "files": self.files,
            "bytes": self.bytes,
        }


@dataclass
class DataRunRequest:
    key: ResourceKey
    spec: DataPipelineSpec
    generation: int
    secrets: dict[str, str] = field(default_factory=dict)  # "secret-name/key" -> value; never logged
    base_dir: Path | None = None  # where relative paths in the spec are resolved (the repo root)
    force: bool = False  # run even when the source and spec are unchanged (schedule)


@dataclass
class StepReport:
    step: str
    input_commit: str | None
    output_commit: str | None
    job: str
    datums_processed: int = 0
    datums_skipped: int = 0
    datums_failed: int = 0
    failed_datum_log: str = ""
    report: dict[str, Any] = field(default_factory=dict)  # the step's .cdl-report.json: kept/discarded counts


@dataclass
class DataRunStatus:
    run_id: str
    state: JobState
    phase: str  # Ingesting | Processing | Ready | Failed
    message: str = ""
    progress: float | None = None
    source_hash: str | None = None
    repos: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, DataRef] = field(default_factory=dict)
    lineage: list[StepReport] = field(default_factory=list)


@runtime_checkable
class DataEngine(Protocol):
    name: str

    def source_fingerprint(self, request: DataRunRequest) -> str:
        """A content hash of the source, cheap enough to poll; it changes when the data does."""

    def start_run(self, request: DataRunRequest) -> EngineRef:
        """Start ingest + split + steps; idempotent for the same key, generation and source hash."""

    def run_status(self, key: ResourceKey, run_id: str, request: DataRunRequest | None = None) -> DataRunStatus:
        """Where a run stands. A run whose driver died (operator restart) is resumed; `request`
        carries what resuming needs again (secrets are never persisted by engines)."""

    def outputs(self, key: ResourceKey) -> dict[str, DataRef]:
        """The current (last successful) outputs, by output name (train, test, <step>...)."""

    def resolve(self, key: ResourceKey, output: str, commit: str = "") -> DataRef:
        """A DataRef with a readable `path`/`uri` for one output at a commit ('' = current)."""

    def delete(self, key: ResourceKey) -> None:
        """Remove the pipeline's repos, jobs and runs."""


@dataclass
class LabelItem:
    path: str  # path of the file in the repo
    text: str | None = None  # inline content for text tasks
    url: str | None = None  # a URL the labeling server can read (images)
    label: str | None = None  # automatic label (pre-annotation)
    split: str | None = None
    repo: str | None = None  # the item's own repo and commit (e.g. the test output's); default the request's
    commit: str | None = None


@dataclass
class LabelingRequest:
    key: ResourceKey
    labeling: Labeling
    repo: str
    commit: str
    items: list[LabelItem]
    token: str  # Label Studio API token; never logged
    database_url: str
    labels: list[str] = field(default_factory=list)  # known classes for the default label config


@dataclass
class LabelingResult:
    project: str
    project_id: int | None
    tasks: int
    annotated: int
    exported_rows: int
    url: str = ""


@runtime_checkable
class LabelingEngine(Protocol):
    def sync(self, request: LabelingRequest) -> LabelingResult:
        """Create or reuse the project, import new items as tasks with pre-labels, and export the
        finished annotations into the labels table. Idempotent."""

    def delete(self, key: ResourceKey, labeling: Labeling, token: str) -> None: ...


# --------------------------------------------------------------------------- training


@dataclass
class TrainingRequest:
    key: ResourceKey
    spec: ExperimentSpec
    generation: int
    run: int  # a Model Maintenance retrain starts run N+1 of the same Experiment
    model_dir: Path  # absolute path of spec.model.path
    data: DataRef | None = None
    secrets: dict[str, str] = field(default_factory=dict)


@dataclass
class CheckpointInfo:
    uuid: str
    uri: str  # file:///... or s3://... of the checkpoint directory
    path: str | None = None  # a local directory when the engine has one


@dataclass
class TrialReport:
    id: str
    state: JobState
    hparams: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # the best validation metrics seen
    stop_reason: str | None = None  # e.g. "early-stopped: patience", "asha: not promoted"
    checkpoint: CheckpointInfo | None = None
    length_done: int = 0  # epochs or batches trained
    wall_seconds: float | None = None
    cpu_seconds: float | None = None
    peak_rss_bytes: int | None = None
    gpu_utilization: float | None = None


@dataclass
class TrainingStatus:
    state: JobState
    message: str = ""
    progress: float = 0.0
    trials: list[TrialReport] = field(default_factory=list)
    best: TrialReport | None = None

    def counts(self) -> dict[str, int]:
        out = {"total": len(self.trials), "running": 0, "completed": 0, "earlyStopped": 0, "failed": 0}
        for t in self.trials:
            if t.state == JobState.RUNNING:
                out["running"] += 1
            elif t.state == JobState.FAILED:
                out["failed"] += 1
            elif t.stop_reason:
                out["earlyStopped"] += 1
            elif t.state == JobState.SUCCEEDED:
                out["completed"] += 1
        return out


@runtime_checkable
class TrainingEngine(Protocol):
    name: str

    def submit(self, request: TrainingRequest) -> EngineRef:
        """Create the experiment; idempotent for the same key, generation and run."""

    def status(self, ref: EngineRef) -> TrainingStatus:
        """Where the experiment stands. A local run whose driver died is resumed, without
        re-running finished trials."""

    def kill(self, ref: EngineRef) -> None: ...

    def logs(self, ref: EngineRef, trial_id: str | None = None) -> str: ...


# --------------------------------------------------------------------------- registry


def registered_name(namespace: str, model: str) -> str:
    """The name a model is registered under in a registry engine: `<namespace>.<model>`, so two
    teams registering the same model name never collide (a namespace holds no '.', so the first
    '.' always separates the two)."""
    return f"{namespace}.{model}" if namespace else model


@dataclass
class RegistrationRequest:
    key: ResourceKey
    model_name: str
    version: int
    checkpoint: CheckpointInfo
    model_dir: Path  # the model code to package
    hparams: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)  # lineage, trial metadata
    experiment_ref: EngineRef | None = None


@dataclass
class RegisteredModel:
    version: int
    artifact_uri: str
    sha256: str
    bytes: int
    format: str
    registry: dict[str, str] = field(default_factory=dict)  # {engine, id, url}
    package_dir: str | None = None  # a local unpacked copy when the engine has one


@runtime_checkable
class RegistryEngine(Protocol):
    name: str

    def register(self, request: RegistrationRequest) -> RegisteredModel:
        """Package the checkpoint with its code and assets as a self-contained artifact."""

    def set_stage(self, model_name: str, version: int, stage: str) -> None: ...

    def delete(self, model_name: str, version: int) -> None: ...


# --------------------------------------------------------------------------- serving


@dataclass
class ServedModel:
    model_version: str  # ModelVersion resource name
    artifact_uri: str
    sha256: str
    predictor: str  # module:Class inside the package's code
    role: str = "primary"  # primary | canary | shadow
    percent: int = 100


@dataclass
class ServingRequest:
    key: ResourceKey
    generation: int
    models: list[ServedModel]
    replicas: int = 1
    image: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    request_logging: bool = True
    sample_rate: float = 1.0
    secrets: dict[str, str] = field(default_factory=dict)
    server: str = "seldon"  # seldon (Seldon protocol) | mlserver (Open Inference Protocol V2)
    max_batch_size: int = 0  # MLServer adaptive batching; 0: off
    max_batch_time_ms: float = 0.0

    @property
    def protocol(self) -> str:
        return "v2" if self.server == "mlserver" else "seldon"


@dataclass
class ServingStatus:
    state: str  # Deploying | Available | Degraded | Failed
    url: str = ""
    desired: int = 0
    ready: int = 0
    message: str = ""
    ref: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class ServingEngine(Protocol):
    name: str

    def apply(self, request: ServingRequest) -> EngineRef:
        """Create or update the served models and the traffic split; idempotent."""

    def status(self, key: ResourceKey) -> ServingStatus: ...

    def delete(self, key: ResourceKey) -> None: ...
