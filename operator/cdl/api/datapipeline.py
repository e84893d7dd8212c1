"""DataPipeline: Data Collection, Splitting, Ingestion, Versioning, Cleaning, Validation, Labeling."""

from __future__ import annotations

from typing import Annotated, Literal

from croniter import croniter
from pydantic import Field, field_validator, model_validator

from cdl.api.common import (
    CdlModel,
    CommonStatus,
    ComputeResources,
    DnsLabel,
    LocalRef,
    SecretKeyRef,
    StatusModel,
)

SOURCE_URI = r"^(file:[^\s]+|s3://[a-z0-9][-a-z0-9.]{1,61}[a-z0-9](/.*)?|https?://[^\s]+)$"
TABLE_NAME = r"^[a-z_][a-z0-9_]{0,62}$"


class Source(CdlModel):
    """Where raw data comes from (Data Collection / Ingestion)."""

    uri: Annotated[str, Field(pattern=SOURCE_URI)] = Field(
        description=(
            "file:///abs/dir (or file:rel/dir, relative to the operator's working directory), "
            "s3://bucket/prefix, or https://host/archive.zip (zip, tar.gz)."
        )
    )
    format: Literal["files", "idx", "csv"] = Field(
        "files",
        description=(
            "files = one datum per file; idx = IDX image/label files; csv = rows of *.csv files with a "
            "header (the split puts a file of the same name, header included, in each output; the label "
            "column is the first of label/labels/category/class/target present)."
        ),
    )
    labels_from: Literal["directory", "none"] = Field(
        "directory",
        description="directory = automatic labels from the parent folder name (format files); csv reads its label column.",
    )
    credentials_secret_ref: SecretKeyRef | None = Field(
        None, description="S3 credentials as a Secret key holding `ACCESS_KEY:SECRET_KEY`."
    )


class Split(CdlModel):
    """A reproducible train/test split (Data Splitting)."""

    test: float = Field(0.2, gt=0, lt=1, description="Fraction of items for the test output.")
    seed: int = Field(42, ge=0, description="Seed of the split; the same seed gives the same split.")
    stratify: bool = Field(
        True, description="Keep each label's share equal in both outputs (folder labels, CSV label column, IDX labels)."
    )


class Step(CdlModel):
    """One processing step: a Pachyderm pipeline on a cluster, a local job otherwise."""

    name: DnsLabel = Field(description="Step name (a DNS label); also the name of its output repo.")
    image: str | None = Field(None, description="Container image used on the cluster.")
    command: list[str] = Field(min_length=1, description="Command run for each datum.")
    glob: str = Field("/*", description="Datum granularity, Pachyderm glob semantics.")
    resources: ComputeResources | None = None
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables.")
    datum_tries: int = Field(3, ge=1, le=10, description="Attempts per datum before the run fails.")
    parallelism: int | None = Field(None, ge=1, le=256, description="Workers; default the machine's cores.")
    secrets: list[SecretKeyRef] = Field(default_factory=list, description="Secrets exposed as env vars.")


class LabelStudio(CdlModel):
    """The Label Studio project labelers work in."""

    url: Annotated[str, Field(pattern=r"^https?://")] = Field(description="Label Studio base URL.")
    token_secret_ref: SecretKeyRef = Field(description="Secret key holding the API token.")
    project: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        description="Project title; created if missing."
    )
    label_config: str | None = Field(
        None, description="Label Studio labeling XML; default a Choices config over the known labels."
    )


class LabelDatabase(CdlModel):
    """Where finished labels are exported (ML Data in PostgreSQL)."""

    url_secret_ref: SecretKeyRef | None = Field(None, description="Omitted = the operator's database.")
    table: Annotated[str, Field(pattern=TABLE_NAME)] = Field(
        "labels", description="Table name (lower-case SQL identifier)."
    )


class Labeling(CdlModel):
    label_studio: LabelStudio | None = None
    database: LabelDatabase | None = None


class Trigger(CdlModel):
    on_new_data: bool = Field(True, description="Re-run when the source content changes.")
    schedule: str | None = Field(None, description="Optional cron expression for scheduled re-runs.")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a valid cron expression (five fields, e.g. \"0 * * * *\")")
        return value


class DataPipelineSpec(CdlModel):
    engine: Literal["local", "pachyderm"] | None = Field(
        None, description="Engine; omitted = the operator's default."
    )
    source: Source
    split: Split | None = None
    steps: list[Step] = Field(default_factory=list, max_length=50,
                              description="Processing steps, run in order (at most 50).")
    labeling: Labeling | None = None
    trigger: Trigger | None = None

    @model_validator(mode="after")
    def _unique_steps(self) -> DataPipelineSpec:
        names = [s.name for s in self.steps]
        reserved = {"raw", "train", "test", "out"}
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"steps[{i}].name: duplicate step name {name!r}")
            if name in reserved:
                raise ValueError(f"steps[{i}].name: {name!r} is reserved (raw, train, test, out)")
        return self


class DataOutput(StatusModel):
    """One versioned output Experiments and ModelVersions bind to."""

    repo: str
    branch: str = "master"
    commit: str
    files: int = 0
    bytes: int = 0


class LineageEntry(StatusModel):
    step: str
    input_commit: str | None = None
    output_commit: str | None = None
    job: str | None = None
    datums_processed: int = 0
    datums_skipped: int = 0
    datums_failed: int = 0


class LabelingStatus(StatusModel):
    project: str | None = None
    tasks: int = 0
    annotated: int = 0
    exported_rows: int = 0


class DataPipelineStatus(CommonStatus):
    phase: Literal["Pending", "Ingesting", "Processing", "Labeling", "Ready", "Failed"] | None = None
    repos: dict[str, str] = Field(default_factory=dict)
    outputs: dict[str, DataOutput] = Field(default_factory=dict)
    lineage: list[LineageEntry] = Field(default_factory=list)
    labeling: LabelingStatus | None = None
    engine_ref: dict[str, str] | None = None
    source_hash: str | None = None
    last_run_time: str | None = None


__all__ = ["DataPipelineSpec", "DataPipelineStatus", "DataOutput", "LocalRef"]
