"""The knowledge base inside the operator: serve it, and (on the embedded platform) make it a
Service whose Endpoints point at the port, so the API server's service proxy reaches it exactly
as kube-apiserver reaches the chart's Service on a cluster."""

from __future__ import annotations

import logging
from typing import Any

from cdl.kb.api import KB, Served, serve_in_thread
from cdl.kb.catalog import Catalog

log = logging.getLogger("cdl.kb")
PORT_NAME = "http"


def serve_knowledge_base(config: Any, context: Any) -> Served:
    engines = context.engines

    def read_logs(engine: str, run_id: str, trial_id: str | None) -> str:
        training = engines.training(engine)
        if not hasattr(training, "logs"):
            from cdl.kb.catalog import NotFound

            raise NotFound(f"the {engine} training engine keeps trial logs in its own UI")
        return training.logs(run_id, trial_id)

    kb = KB(Catalog(context.database, context.artifacts), logs=read_logs, token=config.kb_token,
            endpoint=deployment_endpoint)
    served = serve_in_thread(kb, config.kb_host, config.kb_port or 0)
    if config.kb_service:
        namespace, _, name = config.kb_service.partition("/")
        register_endpoint(namespace, name, served.port)
    return served


def deployment_endpoint(namespace: str, name: str, api_client: Any | None = None) -> str | None:
    """A Deployment's prediction URL (status.url), or None when it has none or does not exist."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from cdl.api.kinds import lookup

    info = lookup("Deployment")
    try:
        obj = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
            info.group, info.version, namespace, info.plural, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return (obj.get("status") or {}).get("url")


def register_endpoint(namespace: str, name: str, port: int, address: str = "127.0.0.1",
                      api_client: Any | None = None) -> None:
    """Create or update the Service NAMESPACE/NAME (no selector) and its Endpoints -> address:port."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client)
    try:
        core.read_namespace(namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
        core.create_namespace({"metadata": {"name": namespace}})
    labels = {"app.kubernetes.io/name": "cdl", "app.kubernetes.io/component": "kb"}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace,
                                                                   "labels": labels},
               "spec": {"ports": [{"name": PORT_NAME, "port": port, "targetPort": port, "protocol": "TCP"}]}}
    endpoints = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": namespace,
                                                                       "labels": labels},
                 "subsets": [{"addresses": [{"ip": address}], "ports": [{"name": PORT_NAME, "port": port,
                                                                          "protocol": "TCP"}]}]}
    for read, create, replace, body in (
            (core.read_namespaced_service, core.create_namespaced_service, core.replace_namespaced_service, service),
            (core.read_namespaced_endpoints, core.create_namespaced_endpoints, core.replace_namespaced_endpoints,
             endpoints)):
        try:
            current = read(name, namespace)
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            replace(name, namespace, body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body["metadata"].pop("resourceVersion", None)
            create(namespace, body)
    log.info("knowledge base registered as service %s/%s -> %s:%s", namespace, name, address, port)
