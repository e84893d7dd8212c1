"""What every reconciler shares: the view of the cluster it needs, and the result it returns.

Reconcilers are plain functions `reconcile(resource, ctx) -> Result`: no kopf, no Kubernetes
client. `ClusterView` is the little they need to read (other resources, secrets); the controller
implements it with the Kubernetes API, tests with a dictionary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cdl.api.kinds import KindInfo
from cdl.config import OperatorConfig
from cdl.engines.base import ResourceKey
from cdl.engines.chooser import EngineChooser
from cdl.errors import DependencyNotReady, InvalidSpec


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ClusterView(Protocol):
    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A cdl resource as a dict (None when absent)."""

    def list(self, kind: str, namespace: str) -> list[dict[str, Any]]: ...

    def read_secret(self, namespace: str, name: str, key: str) -> str:
        """A Secret value; raises DependencyNotReady when the Secret or key is missing."""

    def patch_spec(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """Merge-patch another resource's spec (promotion archives the previous version)."""

    def patch_status(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None: ...

    def annotate(self, kind: str, namespace: str, name: str, annotations: dict[str, str]) -> None:
        """Merge annotations into another resource (Model Maintenance asks for a retrain this way)."""


@dataclass
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Result:
    """What a reconcile pass decided: a status patch, Events, and whether to look again soon."""

    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    requeue: bool = False  # True while engine work is running or a dependency is awaited
    requeue_after: float | None = None  # a slower follow-up than the poll interval, in seconds

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, message))


@dataclass
class Resource:
    """A resource as the reconcilers see it: identity, generation, spec dict, status dict."""

    info: KindInfo
    namespace: str
    name: str
    uid: str
    generation: int
    spec: dict[str, Any]
    status: dict[str, Any]
    annotations: dict[str, str]
    deleting: bool = False

    @classmethod
    def from_body(cls, info: KindInfo, body: dict[str, Any]) -> Resource:
        meta = body.get("metadata") or {}
        return cls(
            info=info,
            namespace=meta.get("namespace") or "default",
            name=meta["name"],
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation") or 1),
            spec=dict(body.get("spec") or {}),
            status=dict(body.get("status") or {}),
            annotations=dict(meta.get("annotations") or {}),
            deleting=bool(meta.get("deletionTimestamp")),
        )

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.namespace, self.name, self.uid)

    @property
    def title(self) -> str:
        return f"{self.info.kind} {self.namespace}/{self.name}"

    def body(self) -> dict[str, Any]:
        return {
            "apiVersion": self.info.api_version,
            "kind": self.info.kind,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self.spec,
        }

    @property
    def phase(self) -> str | None:
        return self.status.get("phase")


@dataclass
class Context:
    """Everything a reconciler may use: configuration, engines, stores, the cluster view."""

    config: OperatorConfig
    cluster: ClusterView
    engines: EngineChooser
    database: Any | None = None  # cdl.stores.postgres.Database
    artifacts: Any | None = None  # cdl.stores.artifacts.ArtifactStore

    def resolve_path(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else (self.config.base_dir / p).resolve()


# --------------------------------------------------------------------------- conditions


def set_condition(
    status: dict[str, Any],
    current: dict[str, Any],
    type_: str,
    ok: bool | None,
    reason: str,
    message: str,
    generation: int,
) -> None:
    """Put one condition into the status patch, keeping lastTransitionTime when unchanged."""
    value = "Unknown" if ok is None else ("True" if ok else "False")
    existing = {c["type"]: c for c in (status.get("conditions") or current.get("conditions") or [])}
    old = existing.get(type_)
    transition = old["lastTransitionTime"] if old and old.get("status") == value else now()
    existing[type_] = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
        "observedGeneration": generation,
    }
    status["conditions"] = sorted(existing.values(), key=lambda c: (c["type"] != "Ready", c["type"]))


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in status.get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def secret(ctx: Context, res: Resource, ref: dict[str, str] | None) -> str | None:
    if not ref:
        return None
    return ctx.cluster.read_secret(res.namespace, ref["name"], ref["key"])


def parse(res: Resource) -> Any:
    """The typed spec, or InvalidSpec naming every problem."""
    from cdl.api.validation import parse_spec

    return parse_spec(res.info, res.body())


__all__ = [
    "ClusterView",
    "Context",
    "DependencyNotReady",
    "Event",
    "InvalidSpec",
    "Resource",
    "Result",
    "condition",
    "now",
    "parse",
    "secret",
    "set_condition",
]
