"""ModelVersion: Model Registry, Evaluation with gates, Compression, Review and promotion."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from cdl.api.common import CdlModel, CommonStatus, FreeForm, LocalRef, StatusModel
from cdl.api.experiment import ENTRYPOINT

MODEL_NAME = r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"
Stage = Literal["candidate", "staging", "production", "archived"]
STAGES: tuple[str, ...] = ("candidate", "staging", "production", "archived")


class ModelSource(CdlModel):
    experiment_ref: LocalRef = Field(description="Experiment whose best checkpoint is registered.")
    trial: str = Field("", description="Pin a trial id instead of the best trial.")
    checkpoint: str = Field("", description="Pin a checkpoint uuid or uri.")


class EvaluationData(CdlModel):
    pipeline_ref: LocalRef
    output: Annotated[str, Field(min_length=1)] = "test"


class Gate(CdlModel):
    """One acceptance rule: an absolute floor, or no worse than the version in a stage."""

    metric: Annotated[str, Field(min_length=1)]
    min: float | None = Field(None, description="The metric must be at least this.")
    max: float | None = Field(None, description="The metric must be at most this (for losses).")
    max_drop_vs_stage: Stage | None = Field(None, description="Compare with the current version in this stage.")
    value: float | None = Field(None, ge=0, description="Allowed drop for maxDropVsStage.")

    @model_validator(mode="after")
    def _one_rule(self) -> Gate:
        rules = [r for r in (self.min, self.max, self.max_drop_vs_stage) if r is not None]
        if len(rules) != 1:
            raise ValueError("exactly one of min, max or maxDropVsStage is required per gate")
        if self.max_drop_vs_stage is not None and self.value is None:
            raise ValueError("value: Required value: the allowed drop when maxDropVsStage is set")
        if self.value is not None and self.max_drop_vs_stage is None:
            raise ValueError("value: Forbidden: only used with maxDropVsStage")
        return self


class Evaluation(CdlModel):
    data: EvaluationData
    entrypoint: Annotated[str, Field(pattern=ENTRYPOINT)] = Field(
        "evaluate:evaluate",
        description=(
            "module:function in the model code, called as function(model_dir, data_dir) with the unpacked "
            "package and the evaluation data; returns {metric: value} or {metrics, labels, predictions, "
            "class_names}."
        ),
    )
    gates: list[Gate] = Field(default_factory=list)


class Compression(CdlModel):
    method: Literal["none", "dynamic-int8"] = "none"


class ModelVersionSpec(CdlModel):
    model: Annotated[str, Field(pattern=MODEL_NAME, max_length=128)] = Field(description="Registered model name.")
    source: ModelSource
    evaluation: Evaluation | None = None
    compression: Compression | None = None
    stage: Stage = Field("candidate", description="Promotion stage; production needs a passed gate.")


class GateResult(StatusModel):
    metric: str
    passed: bool
    value: float | None = None
    threshold: float | None = None
    rule: str | None = None


class EvaluationStatus(StatusModel):
    metrics: FreeForm = Field(default_factory=dict)
    gates: list[GateResult] = Field(default_factory=list)
    passed: bool | None = None
    report_uri: str | None = None
    compressed: FreeForm | None = None


class Artifact(StatusModel):
    uri: str
    sha256: str
    bytes: int
    format: str


class ModelVersionStatus(CommonStatus):
    phase: Literal["Pending", "Registering", "Evaluating", "Ready", "Rejected", "Failed"] | None = None
    version: int | None = None
    stage: Stage | None = None
    registry: dict[str, str] | None = None
    artifact: Artifact | None = None
    lineage: FreeForm | None = None
    evaluation: EvaluationStatus | None = None
    promoted_at: str | None = None
