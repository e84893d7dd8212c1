"""Starting the operator: configuration, stores, engines, the watches, metrics and health.

kopf is the operator's frame (login, start-up and clean-up, the liveness endpoint, signals);
the four kinds are watched by `controller.watch` and reconciled by `controller.handlers`.
"""

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
from cdl.controller.watch import ResourceWatches
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


def make_registry(config: OperatorConfig, controller: handlers.Controller,
                  watches: ResourceWatches) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def settings(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING  # our reconcilers post the meaningful Events
        settings.networking.request_timeout = 90

    @kopf.on.cleanup(registry=registry)
    def close_engines(**_: Any) -> None:
        watches.stop()
        controller.stop()  # drain the workers first: a shard hands over only finished work
        if controller.shards is not None:
            controller.shards.stop()
        controller.context.engines.close()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """In a pod: the service account; elsewhere: $KUBECONFIG, read now (not at import)."""
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    return registry


def make_watches(config: OperatorConfig, controller: handlers.Controller) -> ResourceWatches:
    """The watches of the four kinds, feeding the controller (a label selector is applied by
    the API server: the rest is never sent to this operator). Their streams have their own
    connection pool: the workers' calls never wait for a connection a stream holds."""
    return ResourceWatches([info for info, _ in handlers.RECONCILERS], controller.observe, controller.known,
                           namespaces=config.namespaces, label_selector=config.watch_selector)


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
    """Run the operator until stopped (blocking).

    Outside a pod the API server is the kubeconfig's: when the kubeconfig comes to name another
    server (the embedded API server restarted on another port), the operator stops its watches
    and starts again against the new one, rather than calling the old address for good."""
    redaction.install()
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # no line per timer tick
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig  # kopf's own login reads it too
    watched = None if os.environ.get("KUBERNETES_SERVICE_HOST") else (kubeconfig or os.environ.get("KUBECONFIG"))
    knowledge_base = None
    try:
        first = True
        while True:
            server = api_server_of(watched)
            load_client_config(kubeconfig)
            context = build_context(config, overrides)
            shards = make_shards(config)
            if shards is not None:
                shards.start()
            controller = handlers.Controller(context, config.poll_seconds, config.resync_seconds, shards=shards,
                                             workers={**handlers.WORKERS, **config.workers})
            controller.start()
            watches = make_watches(config, controller)
            watches.start()
            if first:
                if config.metrics_port:
                    metrics.serve(config.metrics_port)
                if config.scoring_sink_port and context.database is not None:
                    from cdl.engines.serving.scoring_sink import serve_in_thread

                    serve_in_thread(context.database, config.scoring_sink_port)
                if config.kb_port is not None and context.database is not None:
                    from cdl.kb.service import serve_knowledge_base

                    knowledge_base = serve_knowledge_base(config, context)
            liveness = f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port and first else None
            log.info("cdl operator starting: namespaces=%s engines=%s api=%s shard=%s", config.namespaces or "all",
                     config.engines, server or "in-cluster", config.shard_identity or "all")
            first = False
            stop_now, ended, moved = threading.Event(), threading.Event(), threading.Event()
            watcher = threading.Thread(target=_watch_api_server, args=(watched, server, stop_flag, stop_now, ended, moved),
                                       name="cdl-api-server-watch", daemon=True)
            watcher.start()
            try:
                asyncio.run(kopf.operator(
                    registry=make_registry(config, controller, watches),
                    standalone=True,
                    clusterwide=True,
                    liveness_endpoint=liveness,
                    stop_flag=stop_now,
                    ready_flag=ready_flag,
                ))
            finally:
                ended.set()
                watcher.join(5)
                watches.stop(2.0)
                if controller.started:  # kopf stopped without its cleanup handlers
                    # after a move, workers blocked on the old address only wait for it to time out
                    controller.stop(2.0 if moved.is_set() else 30.0)
                    if shards is not None:
                        shards.stop()
            if not moved.is_set() or (stop_flag is not None and stop_flag.is_set()):
                return
            log.warning("the API server moved from %s to %s: reconnecting", server, api_server_of(watched))

    finally:
        if knowledge_base is not None:
            knowledge_base.stop()

def api_server_of(kubeconfig: str | None) -> str | None:
    """The server URL of the kubeconfig's current context (None in a pod, or when unreadable)."""
    if not kubeconfig:
        return None
    try:
        import yaml

        with open(kubeconfig) as fh:
            data = yaml.safe_load(fh) or {}
        context = next(c["context"] for c in data.get("contexts") or [] if c["name"] == data.get("current-context"))
        return next(c["cluster"]["server"] for c in data.get("clusters") or [] if c["name"] == context["cluster"])
    except (OSError, ValueError, KeyError, TypeError, StopIteration, yaml.YAMLError):
        return None


WATCH_SECONDS = 1.0


def _watch_api_server(kubeconfig: str | None, server: str | None, stop_flag: threading.Event | None,
                      stop_now: threading.Event, ended: threading.Event, moved: threading.Event) -> None:
    """Set `stop_now` when the caller stops the operator or the kubeconfig names another server
    (read again only when the file changed)."""
    seen = None
    while not ended.wait(WATCH_SECONDS if stop_flag is None else 0.1):
        if stop_flag is not None and stop_flag.is_set():
            stop_now.set()
            return
        if not (kubeconfig and server):
            continue
        try:
            stamp = os.stat(kubeconfig).st_mtime_ns
        except OSError:
            continue
        if stamp == seen:
            continue
        seen = stamp
        now = api_server_of(kubeconfig)
        if now and now != server:
            moved.set()
            stop_now.set()
            return
