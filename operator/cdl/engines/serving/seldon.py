"""The Seldon Core (v1) serving engine: a Deployment as one SeldonDeployment.

`seldon_deployment` builds the `machinelearning.seldon.io/v1` object (pure): one predictor per
served ModelVersion running the cdl predictor image (the generic `CdlPredictor` wrapper, told
which package and predictor class to load through Seldon `parameters` and the environment) or,
for `server: mlserver`, the cdl MLServer image (`protocol: v2`, cdl's custom runtime configured by
`MLSERVER_MODEL_*` variables, adaptive batching included), the
traffic split between primary and canary, a shadow predictor (`shadow: true`), Seldon's request
logger pointed at cdl's scoring-data sink, replicas, resources and GPU limits. Credentials reach
the predictors by reference only (`envFrom` a Secret, `secretKeyRef`), never inline.

A SeldonDeployment is a Kubernetes object, so this is the one engine that talks to Kubernetes,
through the small `SeldonObjects` interface (`KubernetesSeldonObjects` wraps a
`kubernetes.client.ApiClient`; tests can hand in any implementation). Seldon's controller owns
the status; `status` maps its `state` (Creating / Available / Failed), replicas and address.

Errors: an unreachable API server (or a 5xx/429) is a `TransientEngineError`; a request the API
server refuses (schema, admission webhook) is a `PermanentEngineError` with its message.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlencode

from cdl.engines.base import (
    ChangeListener,
    EngineRef,
    ResourceKey,
    ServedModel,
    ServingRequest,
    ServingStatus,
)
from cdl.engines.changes import ChangeFeed, ChangePoller
from cdl.engines.serving.scoring_sink import sink_key, sink_token
from cdl.engines.settings import GpuSettings, SeldonSettings
from cdl.errors import PermanentEngineError, TransientEngineError

log = logging.getLogger("cdl.engines.serving.seldon")

GROUP = "machinelearning.seldon.io"
VERSION = "v1"
PLURAL = "seldondeployments"
KIND = "SeldonDeployment"
API_VERSION = f"{GROUP}/{VERSION}"
CONTAINER = "model"  # graph node and container name (Seldon pairs them by name)
MANAGED_BY = "app.kubernetes.io/managed-by"
RESOURCE_ANNOTATION = "cdl.dev/resource"
GENERATION_ANNOTATION = "cdl.dev/generation"
HTTP_PORT = 8000  # Seldon's service port for REST
PREDICTIONS = "/api/v1.0/predictions"
MLSERVER_RUNTIME = "cdl.runtime.mlserver_runtime.CdlRuntime"
MLSERVER_HTTP_PORT, MLSERVER_GRPC_PORT = 9000, 9500  # the ports Seldon's executor calls a model container on
ROLES = ("primary", "canary", "shadow")


# --------------------------------------------------------------------------- the object


def _resources(resources: dict[str, Any], gpu: GpuSettings) -> dict[str, Any]:
    requests: dict[str, str] = {}
    limits: dict[str, Any] = {}
    if resources.get("cpu"):
        requests["cpu"] = str(resources["cpu"])
    if resources.get("memory"):
        requests["memory"] = limits["memory"] = str(resources["memory"])
    if int(resources.get("gpu") or 0) > 0:
        limits[gpu.resource_name] = int(resources["gpu"])
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _server_env(model: ServedModel, request: ServingRequest, settings: SeldonSettings) -> list[dict[str, Any]]:
    """What tells the container which server to run: seldon-core's MODEL class, or MLServer's
    model settings (cdl's runtime, the package, the predictor, adaptive batching)."""
    if request.server != "mlserver":
        return [{"name": "MODEL_NAME", "value": settings.predictor_class},
                {"name": "SERVICE_TYPE", "value": "MODEL"}]
    env = [
        {"name": "MLSERVER_MODEL_NAME", "value": request.key.name},
        {"name": "MLSERVER_MODEL_IMPLEMENTATION", "value": MLSERVER_RUNTIME},
        {"name": "MLSERVER_MODEL_URI", "value": model.artifact_uri},
        {"name": "MLSERVER_MODEL_VERSION", "value": model.model_version},
        {"name": "MLSERVER_MODEL_EXTRA", "value": json.dumps({"predictor": model.predictor,
                                                               "model_version": model.model_version})},
        {"name": "MLSERVER_HTTP_PORT", "value": str(MLSERVER_HTTP_PORT)},
        {"name": "MLSERVER_GRPC_PORT", "value": str(MLSERVER_GRPC_PORT)},
        {"name": "MLSERVER_PARALLEL_WORKERS", "value": "0"},
    ]
    if request.max_batch_size > 1:
        env += [{"name": "MLSERVER_MODEL_MAX_BATCH_SIZE", "value": str(request.max_batch_size)},
                {"name": "MLSERVER_MODEL_MAX_BATCH_TIME", "value": f"{request.max_batch_time_ms / 1000.0:g}"}]
    return env


def _env(model: ServedModel, request: ServingRequest, settings: SeldonSettings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        *_server_env(model, request, settings),
        {"name": "CDL_MODEL_PACKAGE", "value": model.artifact_uri},
        {"name": "CDL_PACKAGE_SHA256", "value": model.sha256},
        {"name": "CDL_PREDICTOR", "value": model.predictor},
        {"name": "CDL_MODEL_VERSION", "value": model.model_version},
        {"name": "CDL_ROLE", "value": model.role},
        {"name": "CDL_DEPLOYMENT", "value": str(request.key)},
    ]
    if settings.s3_endpoint:
        env.append({"name": "CDL_S3_ENDPOINT", "value": settings.s3_endpoint})
    for name, ref in sorted(settings.secret_env.items()):
        secret, _, key = ref.partition("/")
        if not secret or not key:
            raise PermanentEngineError(
                f"cluster.seldon.secretEnv.{name}: {ref!r} must name a Secret key as <secret>/<key>")
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    return env


def _logger(model: ServedModel, request: ServingRequest, settings: SeldonSettings) -> dict[str, Any] | None:
    if not request.request_logging or not settings.scoring_sink_url:
        return None
    params = {
        "namespace": request.key.namespace, "deployment": request.key.name, "modelVersion": model.model_version,
        "role": model.role, "sampleRate": f"{request.sample_rate:g}",
    }
    key = sink_key()
    if key is not None:  # the sink takes this namespace's rows only with its token
        params["token"] = sink_token(key, request.key.namespace)
    query = urlencode(params)
    separator = "&" if "?" in settings.scoring_sink_url else "?"
    return {"mode": "all", "url": f"{settings.scoring_sink_url}{separator}{query}"}


def _predictor(model: ServedModel, request: ServingRequest, settings: SeldonSettings,
               gpu: GpuSettings) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": request.image or (settings.mlserver_image if request.server == "mlserver" else settings.image),
        "env": _env(model, request, settings),
    }
    if settings.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": settings.credentials_secret}}]
    resources = _resources(request.resources, gpu)
    if resources:
        container["resources"] = resources
    pod: dict[str, Any] = {"containers": [container]}
    if settings.service_account:
        pod["serviceAccountName"] = settings.service_account
    if settings.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in settings.image_pull_secrets]
    if int(request.resources.get("gpu") or 0) > 0:
        if gpu.runtime_class_name:
            pod["runtimeClassName"] = gpu.runtime_class_name
        if gpu.node_selector:
            pod["nodeSelector"] = dict(gpu.node_selector)
        if gpu.tolerations:
            pod["tolerations"] = copy.deepcopy(gpu.tolerations)
    graph: dict[str, Any] = {
        "name": CONTAINER,
        "type": "MODEL",
        "endpoint": {"type": "REST"},
        "children": [],
    }
    if request.server != "mlserver":  # seldon-core's wrapper takes them as constructor arguments
        graph["parameters"] = [
            {"name": "model_package", "type": "STRING", "value": model.artifact_uri},
            {"name": "predictor", "type": "STRING", "value": model.predictor},
            {"name": "model_version", "type": "STRING", "value": model.model_version},
        ]
    logger = _logger(model, request, settings)
    if logger:
        graph["logger"] = logger
    predictor: dict[str, Any] = {
        "name": model.role,
        "replicas": request.replicas,
        "labels": {"cdl.dev/model-version": model.model_version, "cdl.dev/role": model.role},
        "annotations": {"cdl.dev/package-sha256": model.sha256},
        "componentSpecs": [{"spec": pod}],
        "graph": graph,
    }
    if model.role == "shadow":
        predictor["shadow"] = True
    else:
        predictor["traffic"] = int(model.percent)
    return predictor


def seldon_deployment(request: ServingRequest, settings: SeldonSettings, namespace: str | None = None,
                      gpu: GpuSettings | None = None) -> dict[str, Any]:
    """The SeldonDeployment for a serving request (pure)."""
    gpu = gpu or GpuSettings.from_env({})
    key = request.key
    if not request.models:
        raise PermanentEngineError(f"Deployment {key}: nothing to serve")
    roles = [m.role for m in request.models]
    for role in roles:
        if role not in ROLES or roles.count(role) > 1:
            raise PermanentEngineError(f"Deployment {key}: served roles must be one primary and at most one "
                                       f"canary and one shadow, got {roles}")
    if roles[0] != "primary":
        raise PermanentEngineError(f"Deployment {key}: the first served model must be the primary, got {roles[0]}")
    served = [m for m in request.models if m.role != "shadow"]
    if sum(m.percent for m in served) != 100:
        raise PermanentEngineError(f"Deployment {key}: traffic of primary and canary must sum to 100, got "
                                   + ", ".join(f"{m.role} {m.percent}%" for m in served))
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": key.name,
            "namespace": namespace or settings.namespace or key.namespace,
            "labels": {MANAGED_BY: "cdl", "app.kubernetes.io/part-of": "cdl", "cdl.dev/deployment": key.name},
            "annotations": {RESOURCE_ANNOTATION: str(key), GENERATION_ANNOTATION: str(request.generation)},
        },
        "spec": {
            "name": key.name,
            "protocol": "v2" if request.server == "mlserver" else settings.protocol,
            "annotations": {"seldon.io/rest-timeout": "60000"},
            "predictors": [_predictor(m, request, settings, gpu) for m in request.models],
        },
    }


def serving_status(obj: dict[str, Any] | None, settings: SeldonSettings) -> ServingStatus:
    """ServingStatus from a SeldonDeployment as Seldon's controller reports it (pure)."""
    if obj is None:
        return ServingStatus("Failed", message="the SeldonDeployment does not exist")
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    name, namespace = meta.get("name", ""), meta.get("namespace", "")
    predictors = [p for p in spec.get("predictors") or [] if not p.get("shadow")]
    desired = sum(int(p.get("replicas", spec.get("replicas", 1)) or 0) for p in predictors)
    deployments = status.get("deploymentStatus") or {}
    ready = sum(int(d.get("availableReplicas") or 0) for d in deployments.values()
                if not str(d.get("name", "")).startswith(f"{name}-shadow"))
    state = status.get("state") or ""
    description = status.get("description") or ""
    ref = {"seldonDeployment": f"{namespace}/{name}"}
    if settings.gateway_url:
        url = f"{settings.gateway_url.rstrip('/')}/seldon/{namespace}/{name}{_predict_path(spec.get('protocol'), name)}"
    else:
        url = (status.get("address") or {}).get("url") or ""
    if state == "Failed":
        return ServingStatus("Failed", url, desired, ready, description or "Seldon reports the deployment failed",
                             ref)
    if state == "Available":
        if ready < desired:
            return ServingStatus("Degraded", url, desired, ready, f"{ready}/{desired} replicas available", ref)
        return ServingStatus("Available", url, desired, ready, f"serving at {url}" if url else "available", ref)
    message = description or ("waiting for Seldon's controller" if not state else f"seldon: {state.lower()}")
    return ServingStatus("Deploying", url, desired, ready, message, ref)


def _predict_path(protocol: str | None, name: str) -> str:
    """Where a SeldonDeployment of this protocol takes predictions (V2: the Open Inference Protocol)."""
    return f"/v2/models/{name}/infer" if protocol == "v2" else PREDICTIONS


# --------------------------------------------------------------------------- Kubernetes


class Conflict(TransientEngineError):
    """The object changed between read and write (its controller wrote the status): read again."""


@runtime_checkable
class SeldonObjects(Protocol):
    """The Kubernetes calls the engine needs, on SeldonDeployments only."""

    def get(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def delete(self, namespace: str, name: str) -> None: ...


class KubernetesSeldonObjects:
    """`SeldonObjects` over the `kubernetes` client's CustomObjectsApi (RBAC: get, create,
    update, delete on seldondeployments.machinelearning.seldon.io)."""

    def __init__(self, api: Any | None = None) -> None:
        from kubernetes import client

        if api is None:
            from kubernetes import config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api = client.ApiClient()
        self.api = api if isinstance(api, client.CustomObjectsApi) else client.CustomObjectsApi(api)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs, _request_timeout=30)
        except ApiException as exc:
            if exc.status == 404:
                raise
            message = _api_message(exc)
            if exc.status == 409:
                raise Conflict(f"conflict while {what}: {message}") from None
            if exc.status in (0, 408, 429) or exc.status >= 500:
                raise TransientEngineError(f"the Kubernetes API is unavailable ({what}): {message}") from None
            raise PermanentEngineError(f"Kubernetes refused {what}: {message}", reason="EngineRejected") from None
        except (HTTPError, OSError) as exc:
            raise TransientEngineError(f"the Kubernetes API is unreachable ({what}): {exc}") from None

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call(f"reading SeldonDeployment {namespace}/{name}",
                              self.api.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)
        except ApiException:
            return None

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(f"creating SeldonDeployment {namespace}/{body['metadata']['name']}",
                          self.api.create_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, body)

    def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(f"updating SeldonDeployment {namespace}/{name}",
                          self.api.replace_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name, body)

    def list_managed(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every SeldonDeployment cdl made, in one namespace or all, in one call."""
        selector = f"{MANAGED_BY}=cdl"
        if namespace:
            found = self._call(f"listing SeldonDeployments in {namespace}", self.api.list_namespaced_custom_object,
                               GROUP, VERSION, namespace, PLURAL, label_selector=selector)
        else:
            found = self._call("listing SeldonDeployments", self.api.list_cluster_custom_object, GROUP, VERSION,
                               PLURAL, label_selector=selector)
        return list(found.get("items") or [])

    def delete(self, namespace: str, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._call(f"deleting SeldonDeployment {namespace}/{name}", self.api.delete_namespaced_custom_object,
                       GROUP, VERSION, namespace, PLURAL, name, body={"propagationPolicy": "Background"})
        except ApiException:
            pass  # 404: already gone


def _owned_by(obj: dict[str, Any], key: ResourceKey) -> bool:
    """Whether cdl made this object for this Deployment (labels and the owner annotation)."""
    meta = obj.get("metadata") or {}
    owner = (meta.get("annotations") or {}).get(RESOURCE_ANNOTATION)
    return (meta.get("labels") or {}).get(MANAGED_BY) == "cdl" and owner in (None, str(key))


def _api_message(exc: Any) -> str:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    return body.get("message") or exc.reason or f"HTTP {exc.status}"


# --------------------------------------------------------------------------- engine


class SeldonServingEngine:
    """`ServingEngine` on Seldon Core v1."""

    name = "seldon"

    def __init__(self, settings: SeldonSettings, api: Any | None = None, gpu: GpuSettings | None = None,
                 poll_seconds: float = 5.0) -> None:
        self.settings = settings
        self.gpu = gpu or GpuSettings.from_env({})
        self._api = api
        self._objects: SeldonObjects | None = api if isinstance(api, SeldonObjects) else None
        # Change reports (base.ReportsChanges): one poller lists the SeldonDeployments cdl made
        # and reports the Deployments whose serving state moved (ready, degraded, failed).
        self.changes = ChangeFeed()
        self.poller = ChangePoller(self.changes, self.deployment_states, poll_seconds, "seldon")

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        unsubscribe = self.changes.subscribe(listener)
        self.poller.start()
        return unsubscribe

    def deployment_states(self) -> dict[ResourceKey, object]:
        """Per Deployment resource, the state of its SeldonDeployment (one list call)."""
        lister = getattr(self.objects, "list_managed", None)
        if lister is None:  # an object store that cannot list: no change reports
            return {}
        states: dict[ResourceKey, object] = {}
        for obj in lister(self.settings.namespace or None):
            meta = obj.get("metadata") or {}
            namespace, _, name = ((meta.get("annotations") or {}).get(RESOURCE_ANNOTATION) or "").partition("/")
            if namespace and name:
                status = serving_status(obj, self.settings)
                states[ResourceKey(namespace, name)] = (meta.get("generation"), status.state, status.ready,
                                                        status.desired, status.message)
        return states

    def close(self, stop_servers: bool = False) -> None:
        """Operator shutdown: stop listing (the SeldonDeployments keep serving)."""
        self.poller.stop()

    @property
    def objects(self) -> SeldonObjects:
        if self._objects is None:
            self._objects = KubernetesSeldonObjects(self._api)
        return self._objects

    def namespace(self, key: ResourceKey) -> str:
        return self.settings.namespace or key.namespace

    def apply(self, request: ServingRequest) -> EngineRef:
        namespace = self.namespace(request.key)
        body = seldon_deployment(request, self.settings, namespace, self.gpu)
        name = body["metadata"]["name"]
        for attempt in range(1, 6):
            try:
                self._apply(request, namespace, name, copy.deepcopy(body))
                break
            except Conflict:
                if attempt == 5:
                    raise
                time.sleep(0.05 * attempt)  # the controller is writing the status: read again
        return EngineRef(f"{namespace}/{name}", self._url(namespace, name, body["spec"]["protocol"]), self.name)

    def _apply(self, request: ServingRequest, namespace: str, name: str, body: dict[str, Any]) -> None:
        current = self.objects.get(namespace, name)
        if current is None:
            self.objects.create(namespace, body)
            log.info("Deployment %s: created SeldonDeployment %s/%s", request.key, namespace, name)
            return
        meta = current.get("metadata") or {}
        owner = (meta.get("annotations") or {}).get(RESOURCE_ANNOTATION)
        if not _owned_by(current, request.key):
            raise PermanentEngineError(
                f"Deployment {request.key}: SeldonDeployment {namespace}/{name} exists and is not managed by "
                f"this Deployment ({owner or 'no cdl owner'}); rename one of them")
        wanted = body["metadata"]
        same = (current.get("spec") == body["spec"]
                and all((meta.get("labels") or {}).get(k) == v for k, v in wanted["labels"].items())
                and all((meta.get("annotations") or {}).get(k) == v for k, v in wanted["annotations"].items()))
        if same:
            return
        body["metadata"] = {
            **meta,
            "labels": {**(meta.get("labels") or {}), **wanted["labels"]},
            "annotations": {**(meta.get("annotations") or {}), **wanted["annotations"]},
        }
        self.objects.replace(namespace, name, body)
        log.info("Deployment %s: updated SeldonDeployment %s/%s", request.key, namespace, name)

    def _url(self, namespace: str, name: str, protocol: str | None = None) -> str:
        if self.settings.gateway_url:
            return f"{self.settings.gateway_url.rstrip('/')}/seldon/{namespace}/{name}{_predict_path(protocol, name)}"
        return ""

    def status(self, key: ResourceKey) -> ServingStatus:
        namespace = self.namespace(key)
        return serving_status(self.objects.get(namespace, key.name), self.settings)

    def delete(self, key: ResourceKey) -> None:
        namespace = self.namespace(key)
        current = self.objects.get(namespace, key.name)
        if current is None:
            return
        if not _owned_by(current, key):
            return  # someone else's object of the same name: not ours to delete
        self.objects.delete(namespace, key.name)


__all__ = [
    "SeldonServingEngine",
    "SeldonObjects",
    "KubernetesSeldonObjects",
    "seldon_deployment",
    "serving_status",
]
