"""Operator configuration: a YAML file, then environment variables on top.

The same operator runs on a cluster (Helm renders the file into a ConfigMap and points the
engines at Pachyderm, Determined and Seldon) and in the embedded platform (`cdl up` chooses the
local engines, pgserver and a filesystem artifact store).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from cdl.api.kinds import KINDS

# One engine per kind, plus where ModelVersion evaluation runs: local (subprocess) or kubernetes (Job).
DEFAULT_ENGINES = {**{info.kind: "local" for info in KINDS}, "Evaluation": "local"}
ENV_PREFIX = "CDL_"


class S3Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    endpoint: str = ""
    access_key: str = ""
    secret_key: str = Field("", repr=False)
    secure: bool = False
    region: str | None = None


class OperatorConfig(BaseModel):
    """What the operator needs to know about its surroundings."""

    model_config = ConfigDict(extra="forbid")

    namespaces: list[str] = Field(default_factory=list, description="Watched namespaces; empty = all.")
    data_dir: Path = Field(Path(".cdl"), description="State of the local engines.")
    base_dir: Path = Field(Path("."), description="Where relative model paths and file: URIs resolve.")
    database_url: str | None = Field(None, description="PostgreSQL URL; None = no database records.")
    artifact_url: str | None = Field(None, description="file:///dir or s3://bucket/prefix; None = data_dir.")
    s3: S3Config = Field(default_factory=S3Config)
    engines: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ENGINES))
    poll_seconds: float = Field(3.0, gt=0, description="How often running engine work is followed.")
    watch_selector: str | None = Field(None, description="A label selector: only resources matching it are "
                                       "watched (server-side), e.g. one operator per team label.")
    workers: dict[str, int] = Field(default_factory=dict, description="Reconcile workers per kind (so per engine), "
                                    "over the defaults DataPipeline 4, Experiment 2, ModelVersion 2, Deployment 2.")
    resync_seconds: float = Field(600.0, gt=0, description="How often an idle resource is looked at again "
                                  "(source changes, schedules); spread +-25 % so resyncs never bunch up.")
    shard_identity: str | None = Field(None, description="This replica's name among the operator's shards "
                                       "(the pod name); None = one replica owns every resource.")
    shard_namespace: str = Field("default", description="Where the shards' Leases live (the operator's namespace).")
    shard_group: str = Field("cdl-operator", description="The replicas that share the resources (Lease label).")
    shard_lease_seconds: float = Field(15.0, gt=0, description="A replica that stops renewing is dropped after this.")
    metrics_port: int | None = Field(None, description="Prometheus metrics port; None = off.")
    health_port: int | None = Field(None, description="Liveness endpoint port; None = off.")
    scoring_sink_port: int | None = Field(None, description="Seldon request-logger sink port; None = off.")
    cluster: dict[str, Any] = Field(default_factory=dict, description="Cluster engines' settings.")
    label_studio_urls: list[str] = Field(
        default_factory=list,
        description="Label Studio servers a DataPipeline may name (scheme://host[:port], or a URL prefix); "
                    "empty = any. A DataPipeline's labelStudio.tokenSecretRef is sent to its labelStudio.url, so "
                    "without this list an author could send any Secret of their namespace to a server of theirs.",
    )

    def label_studio_allowed(self, url: str) -> bool:
        """Is `url` one of the allowed Label Studio servers (always, with no list)?"""
        if not self.label_studio_urls:
            return True
        return any(_url_within(url, allowed) for allowed in self.label_studio_urls)
    kb_port: int | None = Field(None, ge=0, le=65535,
                                description="Knowledge base API and dashboard port; 0 = any free port; None = off.")
    kb_host: str = Field("127.0.0.1", description="Address the knowledge base listens on; non-loopback needs kb_token.")
    kb_token: str | None = Field(None, repr=False, description="Token the knowledge base requires (X-Cdl-Kb-Token).")
    kb_service: str | None = Field(None, description="NAMESPACE/NAME of a Service (and Endpoints) the operator "
                                   "registers for its knowledge base port (the embedded platform's service proxy).")

    @classmethod
    def load(cls, path: Path | None = None, env: dict[str, str] | None = None) -> OperatorConfig:
        """Read the YAML file (if any), then apply CDL_* environment variables."""
        env = dict(os.environ if env is None else env)
        data: dict[str, Any] = {}
        file = path or (Path(env["CDL_CONFIG"]) if env.get("CDL_CONFIG") else None)
        if file is not None:
            data = yaml.safe_load(file.read_text()) or {}
        scalar = {
            "CDL_DATA_DIR": "data_dir",
            "CDL_BASE_DIR": "base_dir",
            "CDL_DATABASE_URL": "database_url",
            "CDL_ARTIFACT_URL": "artifact_url",
            "CDL_POLL_SECONDS": "poll_seconds",
            "CDL_RESYNC_SECONDS": "resync_seconds",
            "CDL_WATCH_SELECTOR": "watch_selector",
            "CDL_SHARD_IDENTITY": "shard_identity",
            "CDL_SHARD_NAMESPACE": "shard_namespace",
            "CDL_SHARD_GROUP": "shard_group",
            "CDL_SHARD_LEASE_SECONDS": "shard_lease_seconds",
            "CDL_METRICS_PORT": "metrics_port",
            "CDL_HEALTH_PORT": "health_port",
            "CDL_SCORING_SINK_PORT": "scoring_sink_port",
            "CDL_KB_PORT": "kb_port",
            "CDL_KB_HOST": "kb_host",
            "CDL_KB_TOKEN": "kb_token",
            "CDL_KB_SERVICE": "kb_service",
        }
        for var, field in scalar.items():
            if env.get(var):
                data[field] = env[var]
        if env.get("CDL_LABEL_STUDIO_URLS"):
            data["label_studio_urls"] = [u.strip() for u in env["CDL_LABEL_STUDIO_URLS"].split(",") if u.strip()]
        if env.get("CDL_NAMESPACES"):
            data["namespaces"] = [n.strip() for n in env["CDL_NAMESPACES"].split(",") if n.strip()]
        engines = {**DEFAULT_ENGINES, **data.get("engines", {})}
        for kind in DEFAULT_ENGINES:
            value = env.get(f"CDL_ENGINE_{kind.upper()}")
            if value:
                engines[kind] = value
        data["engines"] = engines
        s3 = dict(data.get("s3", {}))
        for var, field in (("CDL_S3_ENDPOINT", "endpoint"), ("CDL_S3_ACCESS_KEY", "access_key"),
                           ("CDL_S3_SECRET_KEY", "secret_key")):
            if env.get(var):
                s3[field] = env[var]
        data["s3"] = s3
        config = cls.model_validate(data)
        config.data_dir = config.data_dir.expanduser().resolve()
        config.base_dir = config.base_dir.expanduser().resolve()
        return config

    @property
    def artifacts(self) -> str:
        return self.artifact_url or (self.data_dir / "artifacts").as_uri()

    def s3_settings(self) -> Any:
        """The S3 endpoint of the configuration (`cdl.stores.artifacts.S3Settings`), or None."""
        from cdl.stores.artifacts import s3_settings

        s3 = self.s3
        return s3_settings(s3.endpoint, s3.access_key, s3.secret_key, secure=s3.secure, region=s3.region)

    def default_engine(self, kind: str) -> str:
        return self.engines.get(kind, "local")


def _url_within(url: str, allowed: str) -> bool:
    """Same scheme, host and port as `allowed`, and under its path (no `https://ls.example.com.evil.io`)."""
    from urllib.parse import urlsplit

    try:
        got, want = urlsplit(url.strip()), urlsplit(allowed.strip())
        same_server = (got.scheme.lower(), got.hostname, got.port) == (want.scheme.lower(), want.hostname, want.port)
    except ValueError:
        return False
    prefix = want.path.rstrip("/")
    return same_server and (got.path.rstrip("/") == prefix or got.path.startswith(prefix + "/"))
