"""What the server serves: built-in kinds (stored, never run) and kinds defined by CRDs.

A `ResourceType` is one group/resource with the versions it is served at. Objects are stored once
per group/resource (the `key`); a CRD with several versions serves the same objects under each
(conversion strategy None, as kube does for CRDs without a webhook).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
STATUS_VERBS = ["get", "patch", "update"]


@dataclass
class VersionInfo:
    """A served version: its schema (CRDs) and printer columns."""

    name: str
    schema: dict[str, Any] | None = None
    printer_columns: list[dict[str, Any]] = field(default_factory=list)
    storage: bool = True
    selectable_fields: frozenset[str] = frozenset()  # a CRD's selectableFields, as field labels


@dataclass(frozen=True)
class ScaleInfo:
    """Where a kind keeps its replica counts, for the `/scale` subresource (kubectl scale)."""

    spec_replicas: str = ".spec.replicas"
    status_replicas: str = ".status.replicas"
    label_selector: str = ""  # a JSON path to a selector string; built-ins derive it from spec.selector


@dataclass
class ResourceType:
    group: str
    plural: str
    kind: str
    singular: str
    namespaced: bool
    versions: list[VersionInfo]
    short_names: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    status_subresource: bool = False
    scale: ScaleInfo | None = None
    builtin: bool = True
    list_kind: str = ""
    verbs: list[str] = field(default_factory=lambda: list(ALL_VERBS))
    # other subresources: (name, group, version, kind, verbs), e.g. serviceaccounts/token
    extra_subresources: list[tuple[str, str, str, str, list[str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.list_kind:
            self.list_kind = self.kind + "List"

    @property
    def key(self) -> str:
        """Storage key, `group/plural` (group empty for core)."""
        return f"{self.group}/{self.plural}"

    def version(self, name: str) -> VersionInfo | None:
        return next((v for v in self.versions if v.name == name), None)

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    @property
    def preferred(self) -> str:
        storage = [v.name for v in self.versions if v.storage]
        return storage[0] if storage else self.versions[0].name

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def kind_group(self) -> str:
        """`Widget.test.cdl.dev` as kube writes it in 422 messages."""
        return f"{self.kind}.{self.group}" if self.group else self.kind


def _b(group: str, version: str, plural: str, kind: str, namespaced: bool = True, short: str = "",
       status: bool = False, categories: str = "", scale: bool = False, verbs: list[str] | None = None
       ) -> ResourceType:
    return ResourceType(
        group=group, plural=plural, kind=kind, singular=kind.lower(), namespaced=namespaced,
        versions=[VersionInfo(version)], short_names=short.split() if short else [],
        categories=categories.split() if categories else [], status_subresource=status,
        scale=ScaleInfo() if scale else None, verbs=verbs or ALL_VERBS,
    )


BUILTINS: list[ResourceType] = [
    _b("", "v1", "namespaces", "Namespace", False, "ns", status=True),
    _b("", "v1", "events", "Event", short="ev"),
    _b("", "v1", "secrets", "Secret"),
    _b("", "v1", "configmaps", "ConfigMap", short="cm"),
    _b("", "v1", "services", "Service", short="svc", status=True, categories="all"),
    ResourceType("", "serviceaccounts", "ServiceAccount", "serviceaccount", True, [VersionInfo("v1")], ["sa"],
                 extra_subresources=[("token", "authentication.k8s.io", "v1", "TokenRequest", ["create"])]),
    _b("", "v1", "pods", "Pod", short="po", status=True, categories="all"),
    _b("", "v1", "endpoints", "Endpoints", short="ep"),
    _b("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short="pvc", status=True),
    _b("", "v1", "persistentvolumes", "PersistentVolume", False, "pv", status=True),
    _b("", "v1", "nodes", "Node", False, "no", status=True),
    _b("", "v1", "limitranges", "LimitRange", short="limits"),
    _b("", "v1", "resourcequotas", "ResourceQuota", short="quota", status=True),
    _b("", "v1", "replicationcontrollers", "ReplicationController", short="rc", status=True, categories="all", scale=True),
    _b("apps", "v1", "deployments", "Deployment", short="deploy", status=True, categories="all", scale=True),
    _b("apps", "v1", "statefulsets", "StatefulSet", short="sts", status=True, categories="all", scale=True),
    _b("apps", "v1", "daemonsets", "DaemonSet", short="ds", status=True, categories="all"),
    _b("apps", "v1", "replicasets", "ReplicaSet", short="rs", status=True, categories="all", scale=True),
    _b("apps", "v1", "controllerrevisions", "ControllerRevision"),
    _b("batch", "v1", "jobs", "Job", status=True, categories="all"),
    _b("batch", "v1", "cronjobs", "CronJob", short="cj", status=True, categories="all"),
    _b("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", short="hpa", status=True),
    _b("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", short="pdb", status=True),
    _b("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _b("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _b("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    _b("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    _b("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", short="netpol"),
    _b("networking.k8s.io", "v1", "ingresses", "Ingress", short="ing", status=True),
    _b("networking.k8s.io", "v1", "ingressclasses", "IngressClass", False),
    _b("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    _b("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", False, "pc"),
    _b("storage.k8s.io", "v1", "storageclasses", "StorageClass", False, "sc"),
    _b("storage.k8s.io", "v1", "csidrivers", "CSIDriver", False),
    _b("coordination.k8s.io", "v1", "leases", "Lease"),
    _b("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations",
       "ValidatingWebhookConfiguration", False),
    _b("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations",
       "MutatingWebhookConfiguration", False),
    _b("authentication.k8s.io", "v1", "selfsubjectreviews", "SelfSubjectReview", False, verbs=["create"]),
    _b("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", False, verbs=["create"]),
    _b("apiregistration.k8s.io", "v1", "apiservices", "APIService", False, status=True,
       categories="api-extensions"),
    _b("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview", False,
       verbs=["create"]),
    _b("authorization.k8s.io", "v1", "selfsubjectrulesreviews", "SelfSubjectRulesReview", False, verbs=["create"]),
    _b("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False,
       "crd crds", status=True, categories="api-extensions"),
]

CRD_KEY = "apiextensions.k8s.io/customresourcedefinitions"
# Reviews are answered, never stored: the one user of a devcluster may do everything.
REVIEW_KEYS = {"authorization.k8s.io/selfsubjectaccessreviews", "authorization.k8s.io/selfsubjectrulesreviews",
               "authentication.k8s.io/selfsubjectreviews", "authentication.k8s.io/tokenreviews"}
SERVICE_ACCOUNT_KEY = "/serviceaccounts"
APISERVICE_KEY = "apiregistration.k8s.io/apiservices"
NAMESPACE_KEY = "/namespaces"


class Registry:
    """All served types, looked up by group/version/plural, by key or by kind."""

    def __init__(self) -> None:
        self._types: dict[str, ResourceType] = {}
        self.generation = 0  # bumps on every change, so discovery and OpenAPI caches know
        for rt in BUILTINS:
            self.add(rt)

    def add(self, rt: ResourceType) -> None:
        self._types[rt.key] = rt
        self.generation += 1

    def remove(self, key: str) -> None:
        if self._types.pop(key, None) is not None:
            self.generation += 1

    def by_key(self, key: str) -> ResourceType | None:
        return self._types.get(key)

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        rt = self._types.get(f"{group}/{plural}")
        if rt is None or rt.version(version) is None:
            return None
        return rt

    def all(self) -> list[ResourceType]:
        return list(self._types.values())

    def group_versions(self) -> dict[str, list[str]]:
        """group -> versions, preferred first (the first storage version seen)."""
        out: dict[str, list[str]] = {}
        for rt in self._types.values():
            versions = out.setdefault(rt.group, [])
            for v in sorted(rt.versions, key=lambda v: not v.storage):
                if v.name not in versions:
                    versions.append(v.name)
        return out

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [rt for rt in self._types.values() if rt.group == group and rt.version(version)]


def crd_names_problem(crd: dict[str, Any]) -> str:
    """Why a CRD's names are not acceptable, or '' when they are."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    if not spec.get("group"):
        return "spec.group: Required value"
    if not names.get("plural"):
        return "spec.names.plural: Required value"
    if not names.get("kind"):
        return "spec.names.kind: Required value"
    expected = f"{names['plural']}.{spec['group']}"
    if crd.get("metadata", {}).get("name") != expected:
        return f'metadata.name: Invalid value: "{crd.get("metadata", {}).get("name")}": must be spec.names.plural+"."+spec.group'
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        return f'spec.scope: Unsupported value: "{spec.get("scope")}": supported values: "Cluster", "Namespaced"'
    versions = spec.get("versions") or []
    if not versions:
        return "spec.versions: Invalid value: null: must have exactly one version marked as storage version"
    if sum(1 for v in versions if v.get("storage")) != 1:
        return "spec.versions: Invalid value: must have exactly one version marked as storage version"
    return ""


def from_crd(crd: dict[str, Any]) -> ResourceType:
    """The served type a (valid) CRD defines."""
    spec = crd["spec"]
    names = spec["names"]
    versions = []
    for v in spec["versions"]:
        if not v.get("served", True):
            continue
        versions.append(VersionInfo(
            name=v["name"],
            schema=(v.get("schema") or {}).get("openAPIV3Schema"),
            printer_columns=list(v.get("additionalPrinterColumns") or []),
            storage=bool(v.get("storage")),
            selectable_fields=frozenset(str(f.get("jsonPath", "")).lstrip(".") for f in v.get("selectableFields") or []
                                        if isinstance(f, dict)),
        ))
    status = any("status" in (v.get("subresources") or {}) for v in spec["versions"])
    scale_spec = next((v["subresources"]["scale"] for v in spec["versions"]
                       if "scale" in (v.get("subresources") or {})), None)
    scale = ScaleInfo(scale_spec.get("specReplicasPath", ".spec.replicas"),
                      scale_spec.get("statusReplicasPath", ".status.replicas"),
                      scale_spec.get("labelSelectorPath", "")) if isinstance(scale_spec, dict) else None
    return ResourceType(
        group=spec["group"], plural=names["plural"], kind=names["kind"],
        singular=names.get("singular") or names["kind"].lower(),
        namespaced=spec.get("scope", "Namespaced") == "Namespaced", versions=versions,
        short_names=list(names.get("shortNames") or []), categories=list(names.get("categories") or []),
        status_subresource=status, scale=scale, builtin=False, list_kind=names.get("listKind") or names["kind"] + "List",
    )
