"""The CLI's connection to the Kubernetes API: --kubeconfig, KUBECONFIG, or the embedded
platform's `.cdl/kubeconfig`, in that order."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from cdl.api.kinds import KindInfo, lookup
from cdl.cli.common import EXIT_PLATFORM, EXIT_USER, err_console

KubeconfigOption = typer.Option(None, "--kubeconfig", help="Kubeconfig; default KUBECONFIG, then .cdl/kubeconfig.")
NamespaceOption = typer.Option("default", "--namespace", "-n", help="Namespace of the resource.")


def kubeconfig_path(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    if os.environ.get("KUBECONFIG"):
        return os.environ["KUBECONFIG"]
    local = Path(".cdl") / "kubeconfig"
    return str(local) if local.exists() else None


class Kube:
    """A thin client for the few calls the CLI makes."""

    def __init__(self, kubeconfig: str | None) -> None:
        from kubernetes import client, config

        path = kubeconfig_path(kubeconfig)
        try:
            self.api = config.new_client_from_config(config_file=path) if path else client.ApiClient()
        except Exception as exc:
            err_console.print(f"cannot load a kubeconfig ({exc}); run `cdl up` or pass --kubeconfig")
            raise typer.Exit(EXIT_PLATFORM)
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)

    def get(self, kind: str | KindInfo, name: str, namespace: str) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        info = kind if isinstance(kind, KindInfo) else lookup(kind)
        try:
            return self.custom.get_namespaced_custom_object(info.group, info.version, namespace, info.plural, name)
        except ApiException as exc:
            if exc.status == 404:
                err_console.print(f"{info.kind} {namespace}/{name} not found")
                raise typer.Exit(EXIT_USER)
            raise
        except OSError as exc:
            err_console.print(f"the Kubernetes API is unreachable: {exc}")
            raise typer.Exit(EXIT_PLATFORM)

    def list(self, kind: str | KindInfo, namespace: str | None) -> list[dict[str, Any]]:
        info = kind if isinstance(kind, KindInfo) else lookup(kind)
        if namespace:
            found = self.custom.list_namespaced_custom_object(info.group, info.version, namespace, info.plural)
        else:
            found = self.custom.list_cluster_custom_object(info.group, info.version, info.plural)
        return found.get("items", [])

    def patch_spec(self, kind: str, name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
        info = lookup(kind)
        return self.custom.patch_namespaced_custom_object(info.group, info.version, namespace, info.plural, name,
                                                          {"spec": spec})
