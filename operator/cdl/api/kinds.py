"""The four kinds: names, spec and status models, and how `kubectl get` shows them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from cdl.api.common import API_VERSION, GROUP, VERSION
from cdl.api.datapipeline import DataPipelineSpec, DataPipelineStatus
from cdl.api.deployment import DeploymentSpec, DeploymentStatus
from cdl.api.experiment import ExperimentSpec, ExperimentStatus
from cdl.api.modelversion import ModelVersionSpec, ModelVersionStatus


def literal_values(annotation: Any) -> tuple[str, ...]:
    """The values of the Literal inside an annotation such as `Literal["a", "b"] | None`."""
    if get_origin(annotation) is Literal:
        return tuple(get_args(annotation))
    for arg in get_args(annotation):
        found = literal_values(arg)
        if found:
            return found
    return ()


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec_model: type[BaseModel]
    status_model: type[BaseModel]
    description: str
    columns: tuple[PrinterColumn, ...] = field(default=())

    group = GROUP
    version = VERSION
    api_version = API_VERSION

    @property
    def phases(self) -> tuple[str, ...]:
        """The phases the status model allows (its `phase` Literal), in their order."""
        return literal_values(self.status_model.model_fields["phase"].annotation)

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")
PHASE = PrinterColumn("Phase", ".status.phase", description="Lifecycle phase")

DATAPIPELINE = KindInfo(
    kind="DataPipeline",
    plural="datapipelines",
    singular="datapipeline",
    short_names=("dpl",),
    spec_model=DataPipelineSpec,
    status_model=DataPipelineStatus,
    description="Versioned data collection, splitting, cleaning, validation and labeling.",
    columns=(
        PHASE,
        PrinterColumn("Train-Commit", ".status.outputs.train.commit", description="Latest train output commit"),
        PrinterColumn("Files", ".status.outputs.train.files", "integer", "Files in the train output"),
        PrinterColumn("Message", ".status.message", priority=1),
        AGE,
    ),
)
EXPERIMENT = KindInfo(
    kind="Experiment",
    plural="experiments",
    singular="experiment",
    short_names=("exp",),
    spec_model=ExperimentSpec,
    status_model=ExperimentStatus,
    description="Hyperparameter search and (distributed) training running Determined code.",
    columns=(
        PHASE,
        PrinterColumn("Searcher", ".spec.searcher.name"),
        PrinterColumn("Trials", ".status.trials.total", "integer"),
        PrinterColumn("Best", ".status.bestMetric", "number", "Best validation metric"),
        PrinterColumn("Progress", ".status.progress", "number"),
        PrinterColumn("Message", ".status.message", priority=1),
        AGE,
    ),
)
MODELVERSION = KindInfo(
    kind="ModelVersion",
    plural="modelversions",
    singular="modelversion",
    short_names=("mv",),
    spec_model=ModelVersionSpec,
    status_model=ModelVersionStatus,
    description="A registered, evaluated and gated version of a model.",
    columns=(
        PrinterColumn("Model", ".spec.model"),
        PrinterColumn("Version", ".status.version", "integer"),
        PrinterColumn("Stage", ".status.stage"),
        PHASE,
        PrinterColumn("Passed", ".status.evaluation.passed", "boolean", "Evaluation gate result"),
        PrinterColumn("Message", ".status.message", priority=1),
        AGE,
    ),
)
DEPLOYMENT = KindInfo(
    kind="Deployment",
    plural="deployments",
    singular="deployment",
    short_names=("mdep",),
    spec_model=DeploymentSpec,
    status_model=DeploymentStatus,
    description="A served model with canary, shadow, scoring data and monitoring.",
    columns=(
        PHASE,
        PrinterColumn("Model-Version", ".status.modelVersion"),
        PrinterColumn("Ready", ".status.replicas.ready", "integer"),
        PrinterColumn("URL", ".status.url"),
        PrinterColumn("Message", ".status.message", priority=1),
        AGE,
    ),
)

KINDS: tuple[KindInfo, ...] = (DATAPIPELINE, EXPERIMENT, MODELVERSION, DEPLOYMENT)
BY_KIND: dict[str, KindInfo] = {k.kind: k for k in KINDS}
BY_PLURAL: dict[str, KindInfo] = {k.plural: k for k in KINDS}


def lookup(name: str) -> KindInfo:
    """Find a kind by kind, plural, singular or short name (case-insensitive)."""
    low = name.lower()
    for info in KINDS:
        if low in (info.kind.lower(), info.plural, info.singular, *info.short_names):
            return info
    allowed = ", ".join(k.kind for k in KINDS)
    raise KeyError(f"unknown kind {name!r}; cdl kinds are {allowed}")
