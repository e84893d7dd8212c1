"""Starting the operator: configuration, stores, engines, kopf settings, metrics and health."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

import kopf

from cdl.api.common import GROUP
from cdl.config import OperatorConfig
from cdl.controller import handlers, metrics, redaction
from cdl.controller.cluster import KubeClusterView, load_client_config
from cdl.engines.registry import EngineRegistry
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
    from cdl.stores.artifacts import open_artifact_store

    artifacts = open_artifact_store(config.artifacts, s3=EngineRegistry(config)._s3())
    engines = EngineRegistry(config, artifacts=artifacts, database=database, overrides=overrides)
    return Context(config=config, cluster=cluster or KubeClusterView(), engines=engines, database=database,
                   artifacts=artifacts)


def make_registry(config: OperatorConfig, controller: handlers.Controller) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def settings(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING  # our reconcilers post the meaningful Events
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.cdl.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf.cdl.dev")
        settings.persistence.finalizer = "cdl.dev/cleanup"
        settings.execution.max_workers = 8  # only deletions run in kopf's threads
        settings.watching.server_timeout = 60
        settings.networking.request_timeout = 90
        # Events only feed the work queue: keep few idle per-object tasks around (thousands of
        # objects each have one while their events flow).
        settings.queueing.idle_timeout = 2.0
        if config.watch_selector:  # server-side: the rest is never sent to this operator
            for info, _ in handlers.RECONCILERS:
                settings.watching.label_selectors[GROUP, info.plural] = config.watch_selector

    @kopf.on.cleanup(registry=registry)
    def close_engines(**_: Any) -> None:
        controller.stop()  # drain the workers first: a shard hands over only finished work
        if controller.shards is not None:
            controller.shards.stop()
        controller.context.engines.close()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """In a pod: the service account; elsewhere: $KUBECONFIG, read now (not at import)."""
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    handlers.register(registry, controller)
    return registry


def make_shards(config: OperatorConfig) -> Any | None:
    """This replica's shard membership when the chart runs several (`shard_identity` set)."""
    if not config.shard_identity:
        return None
    from cdl.controller.shards import ShardMembership

    return ShardMembership(config.shard_namespace, config.shard_identity, group=config.shard_group,
                           lease_seconds=config.shard_lease_seconds)


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
    shards = make_shards(config)
    if shards is not None:
        shards.start()
    controller = handlers.Controller(context, config.poll_seconds, config.resync_seconds, shards=shards,
                                     workers={**handlers.WORKERS, **config.workers})
    controller.start()
    if config.metrics_port:
        metrics.serve(config.metrics_port)
    if config.scoring_sink_port and context.database is not None:
        from cdl.scoring_sink import serve_in_thread

        serve_in_thread(context.database, config.scoring_sink_port)
    liveness = f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None
    log.info("cdl operator starting: namespaces=%s engines=%s shard=%s", config.namespaces or "all", config.engines,
             config.shard_identity or "all")
    asyncio.run(kopf.operator(
        registry=make_registry(config, controller),
        standalone=True,
        clusterwide=not config.namespaces,
        namespaces=config.namespaces or (),
        liveness_endpoint=liveness,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    ))
    if controller.started:  # kopf stopped without its cleanup handlers
        controller.stop()
        if shards is not None:
            shards.stop()
