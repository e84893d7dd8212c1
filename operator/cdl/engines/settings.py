"""Connection settings and credentials of the three cluster engines (Pachyderm, Determined, Seldon).

They come from the operator configuration's `cluster:` section (Helm renders it into the
ConfigMap), and every field can also be set by an environment variable named
`CDL_<ENGINE>_<FIELD>` (e.g. `CDL_PACHYDERM_HOST`, `CDL_DETERMINED_PASSWORD`,
`CDL_SELDON_IMAGE`). Credentials are meant to arrive as environment variables filled from a
Kubernetes Secret (`valueFrom.secretKeyRef` in the operator's pod), never in the ConfigMap; the
explicit configuration wins over the environment, the environment over the defaults.

Credentials are `SecretStr`: they never show in a repr, a log line or an exception.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

ENV_PREFIX = "CDL_"


def _from_env(model: type[BaseModel], prefix: str, data: Any, env: Mapping[str, str]) -> Any:
    """Fill fields missing from `data` with `CDL_<PREFIX>_<FIELD>` environment variables; an empty
    string for an optional field (what a Helm template renders for an unset value) means unset."""
    if not isinstance(data, dict):
        return data
    out = {k: v for k, v in data.items() if not (v == "" and _optional(model, k))}
    for name, info in model.model_fields.items():
        if name in out or (info.alias and info.alias in out):
            continue
        var = f"{ENV_PREFIX}{prefix}_{name.upper()}"
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        annotation = str(info.annotation)
        if annotation.startswith(("dict", "list")) and raw.lstrip().startswith(("{", "[")):
            out[name] = json.loads(raw)
        elif annotation.startswith("list"):
            out[name] = [part.strip() for part in raw.split(",") if part.strip()]
        else:
            out[name] = raw
    return out


def _optional(model: type[BaseModel], key: str) -> bool:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info.default is None
    return False


class _EngineSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    env_prefix: ClassVar[str] = ""

    @model_validator(mode="before")
    @classmethod
    def _environment(cls, data: Any, info: ValidationInfo) -> Any:
        env = (info.context or {}).get("env", os.environ)
        return _from_env(cls, cls.env_prefix, data, env)

    @classmethod
    def from_env(cls, env: Mapping[str, str], **values: Any) -> Any:
        """Settings from `values`, then an explicit environment mapping (not this process's)."""
        return cls.model_validate(values, context={"env": env})


class PachydermSettings(_EngineSettings):
    """Where pachd listens and how to authenticate (`CDL_PACHYDERM_*`)."""

    env_prefix: ClassVar[str] = "PACHYDERM"

    host: str = Field("pachd.pachyderm.svc.cluster.local", description="pachd host (gRPC).")
    port: int = Field(30650, ge=1, le=65535, description="pachd gRPC port.")
    tls: bool = Field(False, description="Use TLS (grpcs); root certificates from root_certs or certifi.")
    root_certs: Path | None = Field(None, description="PEM file with the CA certificates for TLS.")
    token: SecretStr | None = Field(
        None, description="Auth token when Pachyderm auth is on; set CDL_PACHYDERM_TOKEN from a Secret."
    )
    project: str | None = Field(
        None, pattern=r"^[a-zA-Z0-9_-]+$",
        description="Pachyderm project for every repo and pipeline; empty = one project per namespace.",
    )
    default_image: str | None = Field(
        None, description="Image for DataPipeline steps that name none (the cdl pipelines image)."
    )
    console_url: str | None = Field(None, description="Pachyderm Console base URL for links in status.")
    s3_endpoint: str | None = Field(None, description="S3/MinIO endpoint of s3:// DataPipeline sources.")
    image_pull_secrets: list[str] = Field(default_factory=list, description="Secrets to pull step images.")

    @property
    def address(self) -> str:
        return f"{'grpcs' if self.tls else 'grpc'}://{self.host}:{self.port}"


class DeterminedSettings(_EngineSettings):
    """The Determined master, its credentials and the defaults of generated experiments
    (`CDL_DETERMINED_*`)."""

    env_prefix: ClassVar[str] = "DETERMINED"

    master: str = Field("http://determined-master-service-determined.determined.svc.cluster.local:8080",
                        description="Master URL (REST API).")
    user: str = Field("admin", description="User the operator logs in as.")
    password: SecretStr | None = Field(
        None, description="That user's password; set CDL_DETERMINED_PASSWORD from a Secret."
    )
    ui_url: str | None = Field(None, description="Web UI base URL for links; empty = the master URL.")
    cert_file: Path | None = Field(None, description="CA bundle of a TLS master.")
    noverify: bool = Field(False, description="Skip TLS verification (development only).")
    project_id: int | None = Field(None, ge=1, description="Determined project for new experiments.")
    workspace: str | None = Field(None, description="Workspace for registered models.")
    default_image: str | None = Field(None, description="Trial image when spec.model.image is empty.")
    checkpoint_storage: str | None = Field(
        None, pattern=r"^(s3://|file:///)",
        description="Default checkpoint storage (s3://bucket/prefix or file:///shared/dir).",
    )
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint for MinIO (checkpoint storage).")
    checkpoint_secret: str | None = Field(
        None,
        description=(
            "Kubernetes Secret in Determined's task namespace with AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, exposed to trial pods through pod_spec (never inlined)."
        ),
    )
    s3_access_key: SecretStr | None = Field(
        None, description="Checkpoint-store access key the operator uses to download checkpoints."
    )
    s3_secret_key: SecretStr | None = Field(None, description="Its secret key.")
    resource_pool: str | None = Field(None, description="Resource pool of every trial, unless one below applies.")
    cpu_resource_pool: str | None = Field(None, description="Pool for trials without GPUs.")
    gpu_resource_pool: str | None = Field(None, description="Pool for trials with resources.gpu: true.")
    trial_env: dict[str, str] = Field(
        default_factory=dict, description="Extra plain environment variables for every trial (no secrets)."
    )
    max_restarts: int | None = Field(None, ge=0, description="Trial restarts before Determined gives up.")
    request_retries: int = Field(2, ge=0, le=10, description="HTTP retries of an unreachable master.")

    @field_validator("master", "ui_url")
    @classmethod
    def _no_slash(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parsed = urlparse(value if "://" in value else f"http://{value}")
        if not parsed.hostname:
            raise ValueError(f"{value!r} is not a URL (e.g. http://determined-master:8080)")
        return value.rstrip("/") if "://" in value else f"http://{value.rstrip('/')}"

    @property
    def web_url(self) -> str:
        return (self.ui_url or self.master).rstrip("/")


class SeldonSettings(_EngineSettings):
    """How served models become SeldonDeployments (`CDL_SELDON_*`)."""

    env_prefix: ClassVar[str] = "SELDON"

    namespace: str | None = Field(
        None, description="Namespace of the SeldonDeployments; empty = the Deployment resource's own."
    )
    image: str = Field("ghcr.io/cdl-dev/cdl-predictor:0.1.0", alias="predictor_image",
                       description="The cdl predictor image (seldon-core-microservice + cdl.runtime).")
    predictor_class: str = Field(
        "cdl.runtime.serving.CdlPredictor",
        description="Seldon MODEL class the image runs (MODEL_NAME): the generic package wrapper.",
    )
    s3_endpoint: str | None = Field(None, description="S3/MinIO endpoint the predictors download packages from.")
    scoring_sink_url: str | None = Field(
        None, description="Request-logger sink (the operator's scoring-data endpoint)."
    )
    gateway_url: str | None = Field(
        None, description="Ingress base (Istio/Ambassador); the status URL is <gateway>/seldon/<ns>/<name>/..."
    )
    credentials_secret: str | None = Field(
        None, description=(
            "Secret in the SeldonDeployment's namespace exposed to predictors with envFrom "
            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY for the model packages)."
        ),
    )
    secret_env: dict[str, str] = Field(
        default_factory=dict,
        description="More predictor env from Secrets by reference: {ENV_NAME: \"secret-name/key\"}.",
    )
    service_account: str | None = Field(None, description="Service account of the predictor pods.")
    image_pull_secrets: list[str] = Field(default_factory=list)
    protocol: str = Field("seldon", description="Seldon protocol of the predictor (seldon | v2).")


class GpuSettings(_EngineSettings):
    """How GPUs are asked for on this cluster (`CDL_GPU_*`): Pachyderm steps and predictors."""

    env_prefix: ClassVar[str] = "GPU"

    resource_name: str = Field("nvidia.com/gpu", description="Extended resource name of a GPU.")
    runtime_class_name: str | None = Field(None, description="RuntimeClass of GPU pods (e.g. nvidia).")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node selector of GPU pods.")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Tolerations of GPU pods.")


class EvaluationJobSettings(_EngineSettings):
    """How evaluation Jobs run on a cluster (`CDL_EVALUATION_*`, or `cluster.evaluation`)."""

    env_prefix: ClassVar[str] = "EVALUATION"

    namespace: str | None = Field(None, description="Namespace of the Jobs; empty = the ModelVersion's.")
    image: str | None = Field(None, description="Training image when the Experiment's spec.model.image is empty.")
    service_account: str = Field("cdl-workload", description="Account of the Job's pod: no Role, no token.")
    credentials_secret: str | None = Field(
        None, description="Secret (in the Job's namespace) with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for the "
        "artifact store, given to the pod by envFrom (the kubelet reads it, the account cannot).")
    s3_endpoint: str | None = Field(None, description="Artifact-store S3 endpoint seen from the pod.")
    pachd_address: str | None = Field(None, description="grpc://host:port of pachd seen from the pod.")
    deadline_seconds: int = Field(3600, ge=60, description="activeDeadlineSeconds of the Job.")
    ttl_seconds: int = Field(86400, ge=0, description="ttlSecondsAfterFinished of the Job.")
    cpu: str | None = Field("1", description="CPU request of the pod.")
    memory: str | None = Field("4Gi", description="Memory request and limit of the pod.")
    result_prefix: str = Field("evaluations", description="Artifact-store prefix of the Jobs' results.")


class ClusterSettings(BaseModel):
    """The operator configuration's `cluster:` section."""

    model_config = ConfigDict(extra="forbid")

    pachyderm: PachydermSettings = Field(default_factory=PachydermSettings)
    determined: DeterminedSettings = Field(default_factory=DeterminedSettings)
    seldon: SeldonSettings = Field(default_factory=SeldonSettings)
    gpu: GpuSettings = Field(default_factory=GpuSettings)
    evaluation: EvaluationJobSettings = Field(default_factory=EvaluationJobSettings)

    @model_validator(mode="before")
    @classmethod
    def _all_sections(cls, data: Any) -> Any:
        # Absent sections are validated too, so the environment reaches them.
        if isinstance(data, dict):
            return {"pachyderm": {}, "determined": {}, "seldon": {}, "gpu": {}, "evaluation": {}, **data}
        return data

    @classmethod
    def load(cls, config: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> ClusterSettings:
        """From a config mapping and an explicit environment (default: this process's)."""
        context = {"env": os.environ if env is None else env}
        return cls.model_validate(dict(config or {}), context=context)


__all__ = ["ClusterSettings", "PachydermSettings", "DeterminedSettings", "SeldonSettings", "GpuSettings",
           "EvaluationJobSettings"]
