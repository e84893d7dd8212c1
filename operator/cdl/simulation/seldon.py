"""A protocol-level fake of Seldon Core v1's controller, on a Kubernetes API server.

It watches SeldonDeployments (`machinelearning.seldon.io/v1`, all namespaces) through the
`kubernetes` client, as Seldon's controller-runtime manager does, and writes their status
through the status subresource: `Creating` when a new generation arrives, then `Available` with
one Deployment status per predictor (`<sdep>-<predictor>-0-<container>`), the replicas, the
service status and `status.address.url`
(`http://<sdep>-<first predictor>.<ns>.svc.cluster.local:8000/api/v1.0/predictions`), as Seldon
1.18 reports them.

What it checks, with the messages of Seldon's validating webhook (`ValidateSeldonDeployment`):
a known protocol, transport and serverType; at least one predictor; unique predictor names; a
container for every graph node without an implementation; a logger mode when there is a logger;
at most one shadow, never a shadow alone; traffic summing to 100 over several predictors. The
embedded API server has no admission webhooks, so an invalid object is accepted by the API
server and the fake reports `state: Failed` with the webhook's message instead of refusing it.

What it cannot do: create Deployments, Services, pods or Istio/Ambassador routes, pull images,
load models or serve predictions; replicas are reported available as soon as the object is
processed (or held at 0 with `auto_ready=False` until `make_ready`).
"""

from __future__ import annotations

import threading
from typing import Any

GROUP, VERSION, PLURAL = "machinelearning.seldon.io", "v1", "seldondeployments"
PROTOCOLS = {"seldon", "tensorflow", "kfserving", "v2"}


def validate(spec: dict[str, Any]) -> list[str]:
    """Seldon's webhook checks of a SeldonDeployment spec: the problems, empty when valid."""
    errors: list[str] = []
    protocol = spec.get("protocol")
    if protocol and protocol not in PROTOCOLS:
        errors.append(f"spec: Invalid value: {protocol!r}: Invalid protocol")
    if spec.get("transport") and spec["transport"] not in ("rest", "grpc"):
        errors.append(f"spec: Invalid value: {spec['transport']!r}: Invalid transport")
    if spec.get("serverType") and spec["serverType"] not in ("rpc", "kafka"):
        errors.append(f"spec: Invalid value: {spec['serverType']!r}: Invalid serverType")
    predictors = spec.get("predictors") or []
    if not predictors:
        errors.append("spec: Invalid value: \"\": Graph contains no predictors")
    if len(predictors) == 1 and predictors[0].get("shadow"):
        errors.append(f"spec.predictors[0]: Invalid value: {predictors[0].get('name')!r}: Shadow can not exist as "
                      "only predictor")
    names: set[str] = set()
    shadows, traffic = 0, 0
    for i, p in enumerate(predictors):
        where = f"spec.predictors[{i}]"
        if p.get("name") in names:
            errors.append(f"{where}: Invalid value: {p.get('name')!r}: Duplicate predictor name")
        names.add(p.get("name"))
        containers = {c.get("name") for cs in p.get("componentSpecs") or []
                      for c in ((cs.get("spec") or {}).get("containers") or [])}
        errors += _check_units(p.get("graph") or {}, containers, f"{where}.graph")
        if p.get("shadow"):
            shadows += 1
            if shadows > 1:
                errors.append(f"spec: Invalid value: {p.get('name')!r}: Multiple shadows are not allowed")
        else:
            traffic += int(p.get("traffic") or 0)
    if traffic != 100 and len(predictors) - shadows > 1:
        errors.append(f"spec: Invalid value: {predictors[0].get('name')!r}: Traffic must sum to 100 for multiple "
                      "predictors")
    if 0 < traffic < 100 and len(predictors) == 1:
        errors.append(f"spec: Invalid value: {predictors[0].get('name')!r}: Traffic must sum be 100 for a single "
                      "predictor when set")
    return errors


def _check_units(unit: dict[str, Any], containers: set[str], where: str) -> list[str]:
    errors: list[str] = []
    implementation = unit.get("implementation")
    if not implementation or implementation == "UNKNOWN_IMPLEMENTATION":
        if unit.get("name") not in containers:
            errors.append(f"{where}: Invalid value: {unit.get('name')!r}: Can't find container for Predictive Unit")
    if unit.get("logger") is not None and not (unit["logger"] or {}).get("mode"):
        errors.append(f"{where}: Invalid value: \"\": No logger mode specified")
    for i, child in enumerate(unit.get("children") or []):
        errors += _check_units(child, containers, f"{where}[{i}]")
    return errors


class FakeSeldonController:
    """Start with `start()`; `stop()` ends the watch thread. `processed` counts handled generations."""

    def __init__(self, api_client: Any, auto_ready: bool = True) -> None:
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.auto_ready = auto_ready
        self.processed: list[tuple[str, str, int]] = []
        self._seen: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fake-seldon-controller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)

    def wait_processed(self, namespace: str, name: str, generation: int, timeout: float = 20) -> None:
        with self._changed:
            ok = self._changed.wait_for(lambda: (namespace, name, generation) in self.processed, timeout)
        if not ok:
            raise AssertionError(f"the fake Seldon controller did not process {namespace}/{name} "
                                 f"generation {generation} within {timeout} s")

    def _run(self) -> None:
        from kubernetes import watch

        resource_version = ""
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                kwargs: dict[str, Any] = {"timeout_seconds": 1}
                if resource_version:
                    kwargs["resource_version"] = resource_version
                for event in w.stream(self.api.list_cluster_custom_object, GROUP, VERSION, PLURAL, **kwargs):
                    if self._stop.is_set():
                        break
                    obj = event["object"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        resource_version = obj["metadata"].get("resourceVersion", resource_version)
                        self._reconcile(obj)
                    elif event["type"] == "DELETED":
                        resource_version = obj["metadata"].get("resourceVersion", resource_version)
                        self._seen.pop((obj["metadata"]["namespace"], obj["metadata"]["name"]), None)
            except Exception:  # noqa: BLE001 - a dropped watch (410, server restart): list again
                resource_version = ""
                self._stop.wait(0.2)
            finally:
                w.stop()

    def _reconcile(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        generation = int(meta.get("generation", 1))
        if self._seen.get(key) == generation:
            return  # our own status write, or nothing new
        self._seen[key] = generation
        spec = obj.get("spec") or {}
        problems = validate(spec)
        if problems:
            self._status(key, {"state": "Failed", "description": "; ".join(problems), "replicas": 0})
        else:
            self._status(key, self._deployments(meta["name"], meta["namespace"], spec, ready=False))
            if self.auto_ready:
                self._status(key, self._deployments(meta["name"], meta["namespace"], spec, ready=True))
        with self._changed:
            self.processed.append((*key, generation))
            self._changed.notify_all()

    def make_ready(self, namespace: str, name: str) -> None:
        """Report every replica of the object available (with auto_ready=False)."""
        obj = self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        self._status((namespace, name), self._deployments(name, namespace, obj.get("spec") or {}, ready=True))

    def _deployments(self, name: str, namespace: str, spec: dict[str, Any], ready: bool) -> dict[str, Any]:
        deployments: dict[str, Any] = {}
        services: dict[str, Any] = {}
        total = 0
        for p in spec.get("predictors") or []:
            replicas = int(p.get("replicas", spec.get("replicas", 1)) or 0)
            total += replicas
            for cs in p.get("componentSpecs") or []:
                for c in (cs.get("spec") or {}).get("containers") or []:
                    dep = f"{name}-{p['name']}-0-{c['name']}"
                    deployments[dep] = {"name": dep, "replicas": replicas,
                                        "availableReplicas": replicas if ready else 0,
                                        "status": "Available" if ready else "Creating"}
            svc = f"{name}-{p['name']}"
            services[svc] = {"svcName": svc, "httpEndpoint": f"{svc}.{namespace}:8000",
                             "grpcEndpoint": f"{svc}.{namespace}:5001"}
        first = (spec.get("predictors") or [{}])[0].get("name", "default")
        status: dict[str, Any] = {
            "state": "Available" if ready else "Creating", "replicas": total,
            "deploymentStatus": deployments, "serviceStatus": services,
            "address": {"url": f"http://{name}-{first}.{namespace}.svc.cluster.local:8000/api/v1.0/predictions"},
        }
        if not ready:
            status["description"] = "Deployment is being created"
        return status

    def _status(self, key: tuple[str, str], status: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        namespace, name = key
        for _ in range(5):  # PUT /status with the object's resourceVersion: retry a conflict
            current = self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            current["status"] = status
            try:
                self.api.replace_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, current)
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise


__all__ = ["FakeSeldonController", "validate"]
