"""Reaching the knowledge base the Kubernetes way: through the API server's service proxy, with
nothing but a kubeconfig (the CLI, `cdl dashboard`). The caller's own credentials authorise the
call (RBAC `services/proxy` on a cluster); the knowledge base token, where one is set, goes in
its own header (kube-apiserver does not forward Authorization to the backend)."""

from __future__ import annotations

import json
import os
from typing import Any

from cdl.errors import CdlError

DEFAULT_SERVICE = "cdl-system/cdl-kb:http"


class KBError(CdlError):
    """The knowledge base answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def service_path(service: str | None = None) -> str:
    """/api/v1/namespaces/NS/services/NAME:PORT/proxy for `NS/NAME[:PORT]` (default $CDL_KB_SERVICE)."""
    service = service or os.environ.get("CDL_KB_SERVICE") or DEFAULT_SERVICE
    namespace, sep, rest = service.partition("/")
    if not sep or not namespace or not rest:
        raise CdlError(f"kb service {service!r}: expected NAMESPACE/NAME[:PORT], e.g. {DEFAULT_SERVICE}")
    return f"/api/v1/namespaces/{namespace}/services/{rest}/proxy"


class KBClient:
    """GETs on the knowledge base through a `kubernetes.client.ApiClient`."""

    def __init__(self, api_client: Any, service: str | None = None, token: str | None = None) -> None:
        self.api = api_client
        self.base = service_path(service)
        self.token = token if token is not None else os.environ.get("CDL_KB_TOKEN")

    def _get(self, path: str, params: dict[str, Any]) -> bytes:
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json, text/plain, */*"}
        if self.token:
            headers["X-Cdl-Kb-Token"] = self.token
        query = [(k, str(v)) for k, v in params.items() if v is not None]
        try:
            method, url, headers, body, _ = self.api.param_serialize(
                "GET", self.base + path, query_params=query, header_params=headers, auth_settings=["BearerToken"])
            resp = self.api.call_api(method, url, header_params=headers, body=body)
            data = resp.read()
        except ApiException as exc:
            raise KBError(_message(exc.body, exc.status, exc.reason), exc.status) from None
        except OSError as exc:
            raise KBError(f"the Kubernetes API is unreachable: {exc}") from None
        if resp.status >= 400:
            raise KBError(_message(data, resp.status, resp.reason), resp.status)
        return data

    def json(self, path: str, **params: Any) -> Any:
        return json.loads(self._get(path, params))

    def bytes(self, path: str, **params: Any) -> bytes:
        return self._get(path, params)

    def text(self, path: str, **params: Any) -> str:
        return self._get(path, params).decode(errors="replace")


def _message(body: Any, status: int, reason: str | None) -> str:
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        if data.get("error"):
            return str(data["error"])
        if data.get("kind") == "Status" and data.get("message"):
            hint = " (is the operator's knowledge base running? kb_port in its config)" if status == 503 else ""
            return f"{data['message']}{hint}"
    return f"HTTP {status} {reason or ''}: {text[:300]}".strip()
