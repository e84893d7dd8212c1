"""The rows cdl keeps in PostgreSQL, as plain dataclasses (one per table).

Fields left `None` that the database fills (timestamps) come back set when read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Literal, TypeVar

LabelSource = Literal["labelstudio", "auto"]
MetricKind = Literal["training", "validation"]
Stage = Literal["candidate", "staging", "production", "archived"]
STAGES: tuple[str, ...] = ("candidate", "staging", "production", "archived")


@dataclass
class LabelRow:
    """One labeled item of a DataPipeline output (ML Data)."""

    namespace: str
    pipeline: str
    repo: str
    commit: str
    path: str  # the item's path in the data repository
    label: str
    labeler: str | None = None
    annotated_at: datetime | None = None
    split: str | None = None  # train | test | ...
    source: LabelSource = "labelstudio"
    project: str | None = None  # Label Studio project
    task_id: int | None = None  # Label Studio task id
    exported_at: datetime | None = None


@dataclass
class ExperimentRun:
    """One run of an Experiment: the work one generation submitted to an engine."""

    run_id: str
    namespace: str
    experiment: str
    engine: str
    state: str
    generation: int = 0
    spec: dict[str, Any] = field(default_factory=dict)
    data_repo: str | None = None
    data_commit: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass
class TrialRecord:
    """One trial of a run, with what it cost and where its best checkpoint is."""

    run_id: str
    trial_id: str
    state: str
    hparams: dict[str, Any] = field(default_factory=dict)
    stop_reason: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # framework, version, param count, layers, packages, seed
    wall_seconds: float | None = None
    cpu_seconds: float | None = None
    peak_rss_bytes: int | None = None
    gpu_utilization: float | None = None
    best_metric: float | None = None
    checkpoint_uuid: str | None = None
    checkpoint_uri: str | None = None
    updated_at: datetime | None = None


@dataclass
class TrialMetric:
    """Metrics a trial reported at one point of its training (batches seen so far)."""

    run_id: str
    trial_id: str
    kind: MetricKind
    batches: int
    metrics: dict[str, Any]
    epoch: float | None = None
    recorded_at: datetime | None = None


@dataclass
class ModelVersionRecord:
    """A registered model version: artifact, evaluation, stage and lineage."""

    model: str
    version: int
    namespace: str | None = None
    resource: str | None = None  # the ModelVersion resource's name
    stage: Stage = "candidate"
    artifact_uri: str | None = None
    artifact_sha256: str | None = None
    artifact_bytes: int | None = None
    artifact_format: str | None = None
    metrics: dict[str, Any] | None = None
    gates: list[dict[str, Any]] | None = None
    passed: bool | None = None
    report_uri: str | None = None
    lineage: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    promoted_at: datetime | None = None


@dataclass
class LineageEdge:
    """`from` produced or fed `to` (a data commit fed an experiment, a trial made a checkpoint ...).

    `depth` is set by `Database.lineage_chain`: 1 for an edge touching the node asked about.
    """

    from_kind: str
    from_id: str
    to_kind: str
    to_id: str
    relation: str
    attrs: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    depth: int = 0


@dataclass
class ScoringRow:
    """One request a Deployment answered (or failed to), for Model Monitoring."""

    namespace: str
    deployment: str
    model_version: str
    status_code: int
    latency_ms: float
    request: Any = None
    response: Any = None
    shadow: bool = False
    error: str | None = None
    created_at: datetime | None = None
    id: int | None = None


R = TypeVar("R")


def from_row(cls: type[R], row: dict[str, Any]) -> R:
    """A dataclass from a dict row, ignoring columns the dataclass does not have."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in row.items() if k in names})
