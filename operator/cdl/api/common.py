"""Building blocks shared by the four kinds: references, resources, conditions, status basics.

Every model here is both the Python type the operator works with and the source of the CRD
schema (`cdl.api.crdgen`), so descriptions and constraints are written once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

GROUP = "cdl.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# The Kubernetes resource.Quantity grammar (what `kubectl` accepts for cpu/memory).
QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
KEEP_ON_DELETE = "cdl.dev/keep-on-delete"
# How deeply a manifest may nest (the API server's limit, and `cdl validate`'s): far beyond any
# real resource, well below where a Python parser would run out of stack.
MAX_NESTING_DEPTH = 100


def _quantity_to_str(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return str(value)
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_quantity_to_str),
    Field(pattern=QUANTITY),
    WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": QUANTITY}),
]
"""A Kubernetes quantity such as `500m`, `2`, `1Gi`; numbers are accepted and kept as strings."""

DnsLabel = Annotated[str, Field(pattern=DNS_LABEL, max_length=63, min_length=1)]
ResourceName = Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253, min_length=1)]

FreeForm = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
"""A pass-through object (Determined config overrides, metrics, hyperparameter values)."""

AnyValue = Annotated[Any, WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True})]


class CdlModel(BaseModel):
    """Base for spec models: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest (camelCase, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(BaseModel):
    """Base for status models: camelCase, tolerant of fields written by newer operators."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class LocalRef(CdlModel):
    """A reference by name to another resource in the same namespace."""

    name: ResourceName = Field(description="Name of the referenced resource in the same namespace.")


class SecretKeyRef(CdlModel):
    """A key of a Secret in the resource's namespace; secrets are referenced, never inlined."""

    name: ResourceName = Field(description="Secret name.")
    key: Annotated[str, Field(min_length=1, pattern=r"^[-._a-zA-Z0-9]+$")] = Field(
        description="Key inside the Secret's data."
    )


class ComputeResources(CdlModel):
    """CPU, memory and GPU for one step, replica or trial."""

    cpu: Quantity | None = Field(None, description="CPU request, e.g. \"1\" or \"500m\".")
    memory: Quantity | None = Field(None, description="Memory request and limit, e.g. 1Gi.")
    gpu: int = Field(0, ge=0, le=64, description="Number of GPUs (nvidia.com/gpu).")


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(StatusModel):
    """A Kubernetes-style condition; `kubectl wait --for=condition=Ready` reads these."""

    type: str
    status: ConditionStatus
    reason: str = ""
    message: str = ""
    last_transition_time: datetime | None = None
    observed_generation: int | None = None


class CommonStatus(StatusModel):
    """Status fields every kind shares (crds.md, "Common to all four kinds")."""

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    message: str | None = Field(None, description="One human sentence on what is happening or what failed.")


EngineRef = dict[str, str]
