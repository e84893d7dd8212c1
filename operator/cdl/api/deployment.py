"""Deployment: Model Packaging, Model Deployment, Scoring Data and Model Monitoring."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from cdl.api.common import CdlModel, CommonStatus, ComputeResources, LocalRef, StatusModel
from cdl.api.modelversion import MODEL_NAME, Stage

PREDICTOR = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"


class ModelByStage(CdlModel):
    name: Annotated[str, Field(pattern=MODEL_NAME)] = Field(description="Registered model name.")
    stage: Stage = Field("production", description="Serve whichever version is in this stage.")


class Canary(CdlModel):
    model_version_ref: LocalRef
    traffic_percent: int = Field(ge=0, le=100, description="Share of requests sent to the canary.")


class Shadow(CdlModel):
    model_version_ref: LocalRef


class RequestLogging(CdlModel):
    enabled: bool = True
    sample_rate: float = Field(1.0, ge=0, le=1)


class Batching(CdlModel):
    """MLServer's adaptive batching: concurrent requests are merged into one model call."""

    max_batch_size: int = Field(32, ge=1, le=4096, description="Most examples merged into one model call.")
    max_batch_time_ms: float = Field(
        2.0, gt=0, le=1000, description="Longest a request waits for others to join its batch (milliseconds).")


class Drift(CdlModel):
    metric: Literal["psi"] = "psi"
    threshold: float = Field(0.2, gt=0)
    window: int = Field(1000, ge=10, le=1_000_000, description="Most recent predictions compared.")


class Retrain(CdlModel):
    experiment_ref: LocalRef


class Monitoring(CdlModel):
    drift: Drift | None = None
    retrain: Retrain | None = None


class DeploymentSpec(CdlModel):
    engine: Literal["local", "seldon"] | None = None
    model_version_ref: LocalRef | None = None
    model: ModelByStage | None = None
    predictor: Annotated[str, Field(pattern=PREDICTOR)] = Field(
        description="module:Class in the model path with load(artifact_dir) and predict(X)."
    )
    image: str | None = None
    server: Literal["seldon", "mlserver"] = Field(
        "seldon", description="Model server: seldon (seldon-core microservice, Seldon protocol) or mlserver "
                              "(MLServer, Open Inference Protocol V2 over REST and gRPC).")
    batching: Batching | None = Field(None, description="Adaptive batching (server: mlserver only).")
    replicas: int = Field(1, ge=0, le=100)
    resources: ComputeResources | None = None
    canary: Canary | None = None
    shadow: Shadow | None = None
    request_logging: RequestLogging | None = None
    monitoring: Monitoring | None = None

    @model_validator(mode="after")
    def _exactly_one_model(self) -> DeploymentSpec:
        if (self.model_version_ref is None) == (self.model is None):
            raise ValueError("exactly one of modelVersionRef and model is required")
        if self.batching is not None and self.server != "mlserver":
            raise ValueError("batching needs server: mlserver (seldon-core's server does not batch); "
                             f"got server: {self.server}")
        return self

    @property
    def protocol(self) -> str:
        """What the Deployment's URL speaks: `seldon` or `v2` (the Open Inference Protocol)."""
        return "v2" if self.server == "mlserver" else "seldon"


class TrafficEntry(StatusModel):
    model_version: str
    percent: int
    role: str | None = None


class MonitoringStatus(StatusModel):
    requests: int = 0
    errors: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    drift: float | None = None
    drift_detected: bool | None = None
    last_retrain: str | None = None
    window_start: str | None = None


class DeploymentStatus(CommonStatus):
    phase: Literal["Pending", "Deploying", "Available", "Degraded", "Failed"] | None = None
    url: str | None = None
    replicas: dict[str, int] | None = None
    traffic: list[TrafficEntry] = Field(default_factory=list)
    engine_ref: dict[str, str] | None = None
    model_version: str | None = None
    monitoring: MonitoringStatus | None = None
