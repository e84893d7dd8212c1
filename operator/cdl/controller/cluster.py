"""The reconcilers' view of the cluster, through the Kubernetes Python client."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from cdl.api.kinds import BY_KIND
from cdl.controller.redaction import redact, redact_value
from cdl.errors import DependencyNotReady, TransientError


def load_client_config(kubeconfig: str | None = None) -> None:
    """In-cluster credentials in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig)
        return
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


class KubeClusterView:
    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api = api_client or client.ApiClient()
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)

    def _call(self, fn, *args, **kwargs) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise TransientError(f"Kubernetes API answered {exc.status} {exc.reason}")
        except OSError as exc:
            raise TransientError(f"Kubernetes API unreachable: {exc}")

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        info = BY_KIND[kind]
        return self._call(self.custom.get_namespaced_custom_object, info.group, info.version, namespace,
                          info.plural, name)

    def list(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        info = BY_KIND[kind]
        found = self._call(self.custom.list_namespaced_custom_object, info.group, info.version, namespace, info.plural)
        return list((found or {}).get("items") or [])

    def read_secret(self, namespace: str, name: str, key: str) -> str:
        secret = self._call(self.core.read_namespaced_secret, name, namespace)
        if secret is None:
            raise DependencyNotReady(f"waiting for Secret {namespace}/{name}", reason="SecretMissing")
        data = secret.data or {}
        if key not in data:
            raise DependencyNotReady(f"Secret {namespace}/{name} has no key {key!r}", reason="SecretMissing")
        value = base64.b64decode(data[key]).decode()
        redact_value(value)
        return value

    def patch_spec(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        info = BY_KIND[kind]
        self._call(self.custom.patch_namespaced_custom_object, info.group, info.version, namespace, info.plural,
                   name, {"spec": patch})

    def patch_status(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        """Merge-patch the status; returns the object as stored (None when it is gone)."""
        info = BY_KIND[kind]
        return self._call(self.custom.patch_namespaced_custom_object_status, info.group, info.version, namespace,
                          info.plural, name, {"status": patch})

    def add_finalizer(self, kind: str, namespace: str, name: str, finalizer: str, current: list[str],
                      resource_version: str | None) -> dict[str, Any] | None:
        """Add a finalizer to the object at `resource_version` (a JSON Patch with a test, as
        kopf does it); returns the stored object, or None when it changed meanwhile or is gone."""
        ops: list[dict[str, Any]] = []
        if resource_version:
            ops.append({"op": "test", "path": "/metadata/resourceVersion", "value": resource_version})
        ops.append({"op": "add", "path": "/metadata/finalizers", "value": [*current, finalizer]})
        return self._json_patch(kind, namespace, name, ops)

    def remove_finalizer(self, kind: str, namespace: str, name: str, finalizer: str, current: list[str]) -> None:
        """Remove a finalizer where it was seen; a list that changed meanwhile fails the test (the
        next look removes it from the newer list)."""
        if finalizer not in current:
            return
        path = f"/metadata/finalizers/{current.index(finalizer)}"
        done = self._json_patch(kind, namespace, name, [{"op": "test", "path": path, "value": finalizer},
                                                        {"op": "remove", "path": path}])
        if done is None and self.get(kind, namespace, name) is not None:
            raise TransientError(f"the finalizers of {kind} {namespace}/{name} changed meanwhile")

    def _json_patch(self, kind: str, namespace: str, name: str, ops: list[dict[str, Any]]) -> dict[str, Any] | None:
        info = BY_KIND[kind]
        try:
            return self.custom.patch_namespaced_custom_object(info.group, info.version, namespace, info.plural,
                                                              name, ops, _content_type="application/json-patch+json")
        except ApiException as exc:
            if exc.status in (404, 409, 422):  # gone, or a test failed: the object changed
                return None
            raise TransientError(f"Kubernetes API answered {exc.status} {exc.reason}") from None
        except OSError as exc:
            raise TransientError(f"Kubernetes API unreachable: {exc}") from None

    def post_event(self, kind: str, namespace: str, name: str, uid: str, type_: str, reason: str,
                   message: str) -> None:
        """A core/v1 Event about a cdl resource, as `kubectl describe` shows it."""
        info = BY_KIND[kind]
        stamp = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{name}.", namespace=namespace),
            involved_object=client.V1ObjectReference(api_version=info.api_version, kind=kind, name=name,
                                                     namespace=namespace, uid=uid or None),
            type=type_, reason=reason, message=redact(message)[:1024], count=1,
            first_timestamp=stamp, last_timestamp=stamp, source=client.V1EventSource(component="cdl-operator"),
            reporting_component="cdl.dev/operator")
        self._call(self.core.create_namespaced_event, namespace, event)

    def annotate(self, kind: str, namespace: str, name: str, annotations: dict[str, str]) -> None:
        info = BY_KIND[kind]
        self._call(self.custom.patch_namespaced_custom_object, info.group, info.version, namespace, info.plural,
                   name, {"metadata": {"annotations": annotations}})

    # ------------------------------------------------------------------ evaluation Jobs (JobLauncher)

    def create_job(self, namespace: str, manifest: dict[str, Any]) -> None:
        try:
            self.batch.create_namespaced_job(namespace, manifest)
        except ApiException as exc:
            if exc.status == 409:  # created by an earlier pass
                return
            if exc.status in (400, 403, 422):
                from cdl.errors import PermanentEngineError

                raise PermanentEngineError(f"Kubernetes refused the evaluation Job {namespace}/"
                                           f"{manifest['metadata']['name']}: {exc.status} {exc.reason}"
                                           f"{_status_message(exc)}") from None
            raise TransientError(f"Kubernetes API answered {exc.status} {exc.reason}") from None
        except OSError as exc:
            raise TransientError(f"Kubernetes API unreachable: {exc}") from None

    def job_state(self, namespace: str, name: str) -> tuple[Any, str] | None:
        from cdl.engines.base import JobState

        job = self._call(self.batch.read_namespaced_job_status, name, namespace)
        if job is None:
            return None
        status = job.status
        for cond in (status.conditions or []) if status else []:
            if cond.status == "True" and cond.type == "Complete":
                return JobState.SUCCEEDED, cond.message or ""
            if cond.status == "True" and cond.type == "Failed":
                return JobState.FAILED, f"{cond.reason or 'Failed'}: {cond.message or ''}".strip(": ")
        if status is not None and (status.active or 0) > 0:
            return JobState.RUNNING, ""
        return JobState.PENDING, ""


def _status_message(exc: Any) -> str:
    """The API server's own reason (its Status message), e.g. which field a Job failed validation on."""
    import json

    try:
        message = json.loads(exc.body or "{}").get("message")
    except (TypeError, ValueError):
        return ""
    return f": {message}" if message else ""
