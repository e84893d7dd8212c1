"""Starting the operator: configuration, stores, engines, kopf settings, metrics and health."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

import kopf

from cdl.config import OperatorConfig
from cdl.controller import handlers, metrics, redaction
from cdl.controller.cluster import KubeClusterView, load_client_config
from cdl.engines.chooser import EngineChooser
from cdl.reconcile.base import Context

log = logging.getLogger("cdl.operator")


def build_context(config: OperatorConfig, overrides: dict[str, dict[str, Any]] | None = None,
                  cluster: Any | None = None) -> Context:
    """Stores and engines for this configuration; migrations run before the first reconcile."""
    database = None
    if config.database_url:
        from cdl.stores.postgres import Database

        database = Database(config.database_url)
        database.migrate()
    from cdl.stores.opener import open_artifact_store

    artifacts = open_artifact_store(config.artifacts, s3=config.s3_settings())
    engines = EngineChooser(config, artifacts=artifacts, database=database, overrides=overrides)
    cluster = cluster or KubeClusterView()
    if hasattr(cluster, "create_job"):  # evaluation Jobs are created through the controller's client
        engines.job_launcher = cluster
    return Context(config=config, cluster=cluster, engines=engines, database=database, artifacts=artifacts)


def make_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def settings(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING  # our reconcilers post the meaningful Events
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.cdl.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf.cdl.dev")
        settings.persistence.finalizer = "cdl.dev/cleanup"
        settings.execution.max_workers = 8
        settings.watching.server_timeout = 60
        settings.networking.request_timeout = 90

    @kopf.on.cleanup(registry=registry)
    def close_engines(**_: Any) -> None:
        if handlers.STATE.context is not None:
            handlers.STATE.context.engines.close()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """In a pod: the service account; elsewhere: $KUBECONFIG, read now (not at import)."""
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    handlers.register(registry, config.poll_seconds)
    return registry


def run(config: OperatorConfig, *, kubeconfig: str | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
        stop_flag: threading.Event | None = None, ready_flag: threading.Event | None = None) -> None:
    """Run the operator until stopped (blocking)."""
    redaction.install()
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # no line per timer tick
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig  # kopf's own login reads it too
    load_client_config(kubeconfig)
    context = build_context(config, overrides)
    handlers.configure(context, config.poll_seconds)
    if config.metrics_port:
        metrics.serve(config.metrics_port)
    if config.scoring_sink_port and context.database is not None:
        from cdl.engines.serving.scoring_sink import serve_in_thread

        serve_in_thread(context.database, config.scoring_sink_port)
    liveness = f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None
    log.info("cdl operator starting: namespaces=%s engines=%s", config.namespaces or "all", config.engines)
    asyncio.run(kopf.operator(
        registry=make_registry(config),
        standalone=True,
        clusterwide=not config.namespaces,
        namespaces=config.namespaces or (),
        liveness_endpoint=liveness,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    ))
