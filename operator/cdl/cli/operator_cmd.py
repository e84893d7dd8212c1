"""`cdl operator run`: the operator process, in a cluster pod or against any kubeconfig."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from cdl.config import OperatorConfig

operator_app = typer.Typer(help="Run the cdl operator.", no_args_is_help=True)


@operator_app.command("run")
def run_cmd(
    config: Path = typer.Option(None, "--config", "-c", help="Operator configuration YAML (also CDL_CONFIG)."),
    namespace: list[str] = typer.Option(None, "--namespace", "-n", help="Watch only these namespaces; repeatable."),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="Watch every namespace (default)."),
    kubeconfig: str = typer.Option(None, "--kubeconfig", help="Kubeconfig; default in-cluster, then KUBECONFIG."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Reconcile DataPipelines, Experiments, ModelVersions and Deployments until stopped.

    Example: cdl operator run --config /etc/cdl/config.yaml -n ml-team
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = OperatorConfig.load(config)
    if namespace and not all_namespaces:
        cfg.namespaces = list(namespace)
    if all_namespaces:
        cfg.namespaces = []
    from cdl.controller.operator import run

    run(cfg, kubeconfig=kubeconfig)


def register(app: typer.Typer) -> None:
    app.add_typer(operator_app, name="operator")
