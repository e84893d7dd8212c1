"""Experiment: HP Optimization, (Distributed) Training, Experiment Registry and Evaluation."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from cdl.api.common import (
    AnyValue,
    CdlModel,
    CommonStatus,
    FreeForm,
    LocalRef,
    Quantity,
    SecretKeyRef,
    StatusModel,
)

ENTRYPOINT = r"^[A-Za-z_][A-Za-z0-9_.]*(:[A-Za-z_][A-Za-z0-9_]*)?$|^[^\s:]+\.py$"


class DataBinding(CdlModel):
    pipeline_ref: LocalRef = Field(description="The DataPipeline whose output is trained on.")
    output: Annotated[str, Field(min_length=1)] = Field("train", description="Which DataPipeline output.")
    commit: str = Field("", description="Pin a data version; empty = the latest Ready output.")


class CodeBundle(CdlModel):
    """The model code as `cdl push` / the GitLab job uploaded it (docs/cluster-path.md)."""

    uri: Annotated[str, Field(pattern=r"^(s3://|file:///)\S+$")] = Field(
        description="Where the bundle (.tar.gz) is in the artifact store.")
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] = Field(
        description="sha256 of the bundle's bytes; the operator refuses a bundle that differs.")


class GitRef(CdlModel):
    """The commit the code was built from (GitLab: CI_PROJECT_URL and CI_COMMIT_SHA)."""

    url: str | None = Field(None, description="The repository.")
    commit: Annotated[str, Field(pattern=r"^[0-9a-f]{7,64}$")] = Field(description="The commit id.")


class ModelCode(CdlModel):
    path: Annotated[str, Field(min_length=1)] | None = Field(
        None, description="Code directory on the operator's machine (embedded platform); "
        "on a cluster name a bundle instead.",
    )
    bundle: CodeBundle | None = Field(
        None, description="Content-addressed code bundle (cdl push); used instead of path when set.")
    git: GitRef | None = Field(None, description="The commit the code comes from, recorded in lineage.")
    image: str | None = Field(None, description="Container image for the cluster.")
    entrypoint: Annotated[str, Field(pattern=ENTRYPOINT)] = Field(
        description="module:PyTorchTrialClass, module:function, or a script.py using the Core API."
    )

    @model_validator(mode="after")
    def _code(self) -> ModelCode:
        if self.path is None and self.bundle is None:
            raise ValueError("one of path (embedded platform) or bundle (cdl push) is required")
        return self


class Length(CdlModel):
    """Training length: exactly one of epochs or batches."""

    epochs: int | None = Field(None, ge=1)
    batches: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one(self) -> Length:
        if (self.epochs is None) == (self.batches is None):
            raise ValueError("exactly one of epochs or batches is required")
        return self

    @property
    def units(self) -> int:
        return self.epochs if self.epochs is not None else self.batches  # type: ignore[return-value]

    @property
    def unit(self) -> str:
        return "epochs" if self.epochs is not None else "batches"


class Asha(CdlModel):
    divisor: int = Field(4, ge=2, le=16, description="Reduction factor between rungs.")
    max_rungs: int = Field(5, ge=1, le=10, description="Number of rungs.")


class PredictiveStopping(CdlModel):
    """Stop a trial whose predicted final metric cannot win (learning-curve extrapolation)."""

    min_completed_trials: int = Field(
        1, ge=1, le=1000,
        description="Completed trials whose curves the model needs; fewer: never stops (from 5 their errors widen the interval).",
    )
    min_validations: int = Field(1, ge=1, le=1000, description="Validations of a trial before it is predicted.")
    quantile: float = Field(
        1.0, gt=0, le=1,
        description="Stop when the optimistic bound cannot beat this quantile of completed trials (1 = the best).",
    )
    confidence: float = Field(
        0.5, ge=0.5, lt=1,
        description="Level of the prediction interval (higher: a wider interval, fewer trials stopped).",
    )


class MedianStopping(CdlModel):
    """Stop a trial whose best so far is worse than the completed trials' median at that length."""

    min_completed_trials: int = Field(3, ge=1, le=1000, description="Completed trials needed before it stops any.")
    warmup_validations: int = Field(2, ge=1, le=1000, description="Validations of a trial before it is compared.")


class ResourceComparison(CdlModel):
    """Stop a trial whose resource use per unit of metric gain is far above the completed trials' median."""

    resource: Literal["cpuSeconds", "wallSeconds", "peakMemory", "gpuMemory"] = Field(
        "cpuSeconds", description="Which resource figure of the trial's process tree (gpuMemory: peak GPU memory, "
        "where the trial has a GPU)."
    )
    factor: float = Field(3.0, gt=1, le=1000, description="How many times the median counts as far above.")
    min_completed_trials: int = Field(3, ge=1, le=1000, description="Completed trials needed before it stops any.")
    warmup_validations: int = Field(2, ge=2, le=1000, description="Validations of a trial before it is compared.")


class EarlyStopping(CdlModel):
    """Application and resource metrics that stop a trial (performance-tuning thesis)."""

    patience: int | None = Field(None, ge=1, description="Validations without improvement.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as improvement.")
    max_trial_seconds: int | None = Field(None, ge=1, description="Wall-clock budget per trial.")
    max_trial_memory: Quantity | None = Field(None, description="Peak RSS budget of the trial's process tree.")
    predict: PredictiveStopping | None = Field(None, description="Predictive stopping (needs searcher.maxLength).")
    median: MedianStopping | None = Field(None, description="The median stopping rule.")
    resources: ResourceComparison | None = Field(None, description="Resource use per metric gain, compared.")


class Searcher(CdlModel):
    name: Literal["single", "random", "grid", "asha"] = Field(description="Search method.")
    metric: Annotated[str, Field(min_length=1)] = Field(description="Validation metric to optimise.")
    smaller_is_better: bool = False
    max_trials: int = Field(1, ge=1, le=10000)
    max_concurrent_trials: int = Field(1, ge=1, le=256)
    max_length: Length | None = None
    asha: Asha | None = None
    early_stopping: EarlyStopping | None = None

    @model_validator(mode="after")
    def _rules(self) -> Searcher:
        if self.name == "asha" and self.max_length is None:
            raise ValueError("maxLength: Required value: required when searcher.name is asha")
        if self.name == "single" and self.max_trials != 1:
            raise ValueError("maxTrials: Invalid value: must be 1 when searcher.name is single")
        if self.asha is not None and self.name != "asha":
            raise ValueError("asha: Forbidden: only allowed when searcher.name is asha")
        if self.early_stopping and self.early_stopping.predict and self.max_length is None:
            raise ValueError(
                "earlyStopping.predict: Invalid value: needs searcher.maxLength (the length whose metric is predicted)"
            )
        return self


class TrainingResources(CdlModel):
    slots_per_trial: int = Field(1, ge=1, le=64, description="> 1 = distributed training.")
    gpu: bool = False
    resource_pool: str | None = None


class CheckpointStorage(CdlModel):
    uri: Annotated[str, Field(pattern=r"^(s3://|file:///)")]
    credentials_secret_ref: SecretKeyRef | None = None


class ExperimentSpec(CdlModel):
    engine: Literal["local", "determined"] | None = None
    data: DataBinding | None = None
    model: ModelCode
    hyperparameters: FreeForm = Field(default_factory=dict, description="Determined syntax.")
    searcher: Searcher
    resources: TrainingResources | None = None
    seed: int = Field(42, ge=0)
    checkpoint_storage: CheckpointStorage | None = None
    determined: FreeForm | None = Field(None, description="Raw Determined experiment-config overrides.")


class TrialCounts(StatusModel):
    total: int = 0
    running: int = 0
    completed: int = 0
    early_stopped: int = 0
    failed: int = 0


class CheckpointRef(StatusModel):
    uuid: str | None = None
    uri: str | None = None


class BestTrial(StatusModel):
    id: str | None = None
    hparams: FreeForm = Field(default_factory=dict)
    metrics: FreeForm = Field(default_factory=dict)
    checkpoint: CheckpointRef | None = None


class ExperimentStatus(CommonStatus):
    phase: Literal["Pending", "Submitted", "Running", "Completed", "Failed", "Canceled"] | None = None
    engine_ref: dict[str, str] | None = None
    trials: TrialCounts | None = None
    progress: float | None = Field(None, ge=0, le=1)
    best_trial: BestTrial | None = None
    best_metric: float | None = None
    data: dict[str, str] | None = None
    start_time: str | None = None
    completion_time: str | None = None
    run: int | None = Field(None, description="Run number; Model Maintenance retrains start a new run.")


__all__ = ["ExperimentSpec", "ExperimentStatus", "AnyValue"]
