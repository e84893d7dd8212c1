"""The reconcile loop: watch events and engine reports feed one work queue.

`controller.watch` follows the four kinds and hands every event to `Controller.observe`, which
keeps a slim copy of the object (metadata the reconcilers read, spec, status) and queues the key
when its spec, annotations or deletion changed (HIGH priority) or when it is seen for the first
time. Engines report changes of a resource's work through one channel each
(`EngineChooser.subscribe`), which queues just that key (LOW). Workers of `workqueue.WorkQueue`
(a fixed number per kind, so per engine) run the reconciler and write the status patch and
Events themselves. Follow-ups are delayed adds of the same queue: `poll_seconds` while engine
work runs (a safety net for engines that do not report changes), a rare resync of
`resync_seconds` spread with jitter otherwise; there is no timer per object. With shards, only
keys this replica owns are worked on. The finalizer `cdl.dev/cleanup` is added before a
resource's first reconcile and released by the owning replica once the engines' work for a
deleted resource is cleaned up.
"""

from __future__ import annotations

import copy
import logging
import random
import threading
import time
from types import ModuleType
from typing import Any

from cdl.api.common import KEEP_ON_DELETE
from cdl.api.kinds import DATAPIPELINE, DEPLOYMENT, EXPERIMENT, MODELVERSION, KindInfo
from cdl.controller import metrics
from cdl.controller.events import EventPoster
from cdl.controller.redaction import redact_data
from cdl.controller.workqueue import HIGH, LOW, Key, WorkQueue
from cdl.reconcile import datapipeline, deployment, experiment, modelversion, outcomes
from cdl.reconcile.base import Context, Resource

log = logging.getLogger("cdl.controller")

RECONCILERS: tuple[tuple[KindInfo, ModuleType], ...] = (
    (DATAPIPELINE, datapipeline),
    (EXPERIMENT, experiment),
    (MODELVERSION, modelversion),
    (DEPLOYMENT, deployment),
)
BY_KIND = {info.kind: (info, module) for info, module in RECONCILERS}
# Which resources an engine's report is about: the engines are keyed by the resource they work for.
KIND_OF_ROLE = {"data": "DataPipeline", "labeling": "DataPipeline", "training": "Experiment",
                "registry": "ModelVersion", "serving": "Deployment"}
# Worker threads per kind (so per engine role): bounded concurrency against each engine.
WORKERS = {"DataPipeline": 4, "Experiment": 2, "ModelVersion": 2, "Deployment": 2}
MAX_BACKOFF = 60.0
STARTUP_SPREAD = 60.0  # seconds over which a starting operator looks at the Ready resources again
# Annotations the reconcilers never read and that would copy the spec (kubectl) or kopf's state.
DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)
DROPPED_PREFIXES = ("kopf.cdl.dev/", "kopf.zalando.org/")
FINALIZER = "cdl.dev/cleanup"


def slim(body: Any) -> dict[str, Any]:
    """What the operator keeps of an object: the metadata reconcilers read, spec and status."""
    meta = body.get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k not in DROPPED_ANNOTATIONS and not k.startswith(DROPPED_PREFIXES)}
    kept = {k: meta.get(k) for k in ("name", "namespace", "uid", "generation", "resourceVersion",
                                     "deletionTimestamp") if meta.get(k) is not None}
    if meta.get("finalizers"):
        kept["finalizers"] = list(meta["finalizers"])
    if annotations:
        kept["annotations"] = annotations
    return {"metadata": kept, "spec": _plain(body.get("spec") or {}), "status": _plain(body.get("status") or {})}


def _essence(body: dict[str, Any]) -> tuple[Any, ...]:
    """What a user changes (the spec through its generation, annotations, deletion); a change
    of anything else (the status the operator wrote) needs no reconcile."""
    meta = body["metadata"]
    return meta.get("generation"), meta.get("annotations"), meta.get("deletionTimestamp")


def _unobserved(body: dict[str, Any]) -> bool:
    status = body.get("status") or {}
    return not status.get("phase") or status.get("observedGeneration") != body["metadata"].get("generation")


def _ready(body: dict[str, Any]) -> bool:
    conditions = (body.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _rv(body: dict[str, Any]) -> int | None:
    try:
        return int(body["metadata"].get("resourceVersion") or "")
    except ValueError:
        return None


class Controller:
    """The objects seen, the work queue and its workers, and the reconcile pass of one key."""

    def __init__(self, context: Context, poll_seconds: float, resync_seconds: float = 600.0,
                 shards: Any | None = None, workers: dict[str, int] | None = None) -> None:
        self.context = context
        self.poll_seconds = poll_seconds
        self.resync_seconds = resync_seconds
        self.shards = shards  # controller.shards.ShardMembership, or None: this replica owns all
        self.workers = workers or WORKERS
        unknown = set(self.workers) - set(BY_KIND)
        if unknown or any(n < 1 for n in self.workers.values()):
            raise ValueError(f"workers: kinds are {', '.join(BY_KIND)} with at least 1 worker each; got {self.workers}")
        self.queue = WorkQueue()
        self.events = EventPoster(context.cluster)
        self.objects: dict[Key, dict[str, Any]] = {}
        self.failures: dict[Key, int] = {}
        self.waiting: dict[str, set[Key]] = {}  # namespace -> keys waiting on another resource
        self.lock = threading.Lock()
        self.started = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.context.engines.subscribe(self.engine_changed)
        if self.shards is not None:
            self.shards.on_change = self.members_changed
        self.queue.start(self.process, self.workers)
        self.events.start()
        metrics.watch_queue(self.queue, self.events)
        self.started = True

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work and wait up to `timeout` for the workers; a worker still blocked on an
        API server that went away is left to finish on its own (it only talks to that server)."""
        self.queue.stop(timeout)
        self.events.stop(min(timeout, 10.0))
        self.started = False

    def owns(self, key: Key) -> bool:
        return self.shards is None or self.shards.owns(key[1], key[2])

    # ------------------------------------------------------------------ inputs

    def observe(self, kind: str, event_type: str | None, body: Any) -> None:
        """A watch event (None: the initial listing): keep the object, queue it if it changed."""
        meta = body.get("metadata") or {}
        key = (kind, meta.get("namespace") or "default", meta["name"])
        if event_type == "DELETED":
            with self.lock:
                self.objects.pop(key, None)
                self.failures.pop(key, None)
                self.waiting.get(key[1], set()).discard(key)
            self.queue.forget(key)
            return
        new = slim(body)
        with self.lock:
            old = self.objects.get(key)
            if old is not None and (a := _rv(old)) is not None and (b := _rv(new)) is not None and b < a:
                return  # older than what this process wrote since
            self.objects[key] = new
        if not self.owns(key):
            return
        if old is None:  # first sight: a new resource, or all of them when the operator starts
            if _unobserved(new) or new["metadata"].get("deletionTimestamp"):
                self.queue.add(key, HIGH)
            elif _ready(new):  # settled: looked at within the first minute, not all at once
                self.queue.add_after(key, random.uniform(0, min(self.resync_seconds, STARTUP_SPREAD)))
            else:  # work may have moved while no operator followed it
                self.queue.add(key, LOW)
        elif _essence(old) != _essence(new):
            self.queue.add(key, HIGH)

    def known(self, kind: str, namespace: str | None = None) -> set[tuple[str, str]]:
        """The (namespace, name) of the objects of a kind held now (a watch's fresh list compares)."""
        with self.lock:
            return {(k[1], k[2]) for k in self.objects if k[0] == kind and (namespace is None or k[1] == namespace)}

    def engine_changed(self, role: str, resource: Any) -> None:
        """An engine reported a change of the work of one resource (any thread)."""
        kind = KIND_OF_ROLE.get(role)
        if kind is not None:
            key = (kind, resource.namespace, resource.name)
            if self.owns(key):
                self.queue.add(key, LOW)

    def members_changed(self, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        """Shard members changed: take the keys this replica gained (after the old owner's
        in-flight passes ended)."""
        from cdl.controller.shards import owner

        me = self.shards.identity
        with self.lock:
            items = list(self.objects.items())
        gained = 0
        for key, body in items:
            ref = f"{key[1]}/{key[2]}"
            if owner(new, ref) == me and owner(old, ref) != me:
                self.queue.add_after(key, self.shards.grace_seconds, HIGH if _unobserved(body) else LOW)
                gained += 1
        log.info("shard handover: %d resource(s) gained by %s", gained, me)

    # ------------------------------------------------------------------ one pass

    def process(self, key: Key) -> None:
        info, module = BY_KIND[key[0]]
        with self.lock:
            body = self.objects.get(key)
        if body is None or not self.owns(key):
            return
        finalizers = body["metadata"].get("finalizers") or []
        if body["metadata"].get("deletionTimestamp"):
            if FINALIZER in finalizers:
                self._finalize(key, info, module, body)
            return
        if FINALIZER not in finalizers:
            body = self._add_finalizer(key, body)
            if body is None:
                return
        res = Resource.from_body(info, copy.deepcopy(body))
        ctx = self.context
        started = time.perf_counter()
        result, outcome = outcomes.run(module.reconcile, res, ctx)
        metrics.LATENCY.labels(info.kind).observe(time.perf_counter() - started)
        metrics.RECONCILES.labels(info.kind, outcome).inc()
        changes = {k: redact_data(_patch_value(res.status.get(k), v)) for k, v in result.status.items()
                   if _empty_as_none(res.status.get(k)) != _empty_as_none(v)}
        if changes:  # only what changed: a pass that changes nothing writes nothing
            try:
                stored = ctx.cluster.patch_status(info.kind, key[1], key[2], changes)
            except Exception as exc:
                log.warning("status of %s not written: %s", res.title, exc)
                self._schedule(key, "retry", True)
                return
            if stored is None:  # deleted meanwhile
                return
            with self.lock:
                if key in self.objects:
                    self.objects[key] = slim(stored)
            if "phase" in changes:
                self._wake_waiting(key)
        for event in result.events:
            self.events.post(info.kind, key[1], key[2], res.uid, event.type, event.reason, event.message)
            if event.type == "Warning":
                metrics.ERRORS.labels(info.kind, event.reason).inc()
        with self.lock:
            waiting = self.waiting.setdefault(key[1], set())
            if outcome == "waiting":
                waiting.add(key)
            else:
                waiting.discard(key)
        self._schedule(key, outcome, result.requeue, result.requeue_after)

    def _wake_waiting(self, changed: Key) -> None:
        """A resource's phase changed: the resources of its namespace that wait on another one
        look again now (instead of at their next follow-up)."""
        with self.lock:
            keys = [k for k in self.waiting.get(changed[1], ()) if k != changed]
        for k in keys:
            self.queue.add(k, LOW)

    def _schedule(self, key: Key, outcome: str, requeue: bool, after: float | None = None) -> None:
        if outcome == "retry":
            with self.lock:
                n = self.failures[key] = self.failures.get(key, 0) + 1
            delay = min(MAX_BACKOFF, self.poll_seconds * 2 ** (n - 1))
        else:
            with self.lock:
                self.failures.pop(key, None)
            if requeue:
                delay = after or self.poll_seconds
            else:  # idle: a rare resync (source changes, schedules), spread so they never bunch up
                delay = self.resync_seconds * random.uniform(0.75, 1.25)
        self.queue.add_after(key, delay)

    # ------------------------------------------------------------------ finalizer and deletion

    def _add_finalizer(self, key: Key, body: dict[str, Any]) -> dict[str, Any] | None:
        """Add `cdl.dev/cleanup` before the first reconcile (no engine work can start for an object
        that could vanish without a cleanup); None when the object changed meanwhile (its newer
        version comes with the watch and is queued again) or is gone."""
        meta = body["metadata"]
        try:
            stored = self.context.cluster.add_finalizer(key[0], key[1], key[2], FINALIZER,
                                                        meta.get("finalizers") or [], meta.get("resourceVersion"))
        except Exception as exc:
            log.warning("finalizer of %s %s/%s not added: %s", key[0], key[1], key[2], exc)
            self._schedule(key, "retry", True)
            return None
        if stored is None:
            self.queue.add_after(key, 0.5)  # a conflict: the watch brings the newer version
            return None
        new = slim(stored)
        with self.lock:
            if key in self.objects:
                self.objects[key] = new
        return new

    def _finalize(self, key: Key, info: KindInfo, module: ModuleType, body: dict[str, Any]) -> None:
        """A deleted resource: clean up its engines' work, then release the finalizer. A transient
        failure is retried with backoff; any other is reported as a Warning and the object goes."""
        from cdl.errors import TransientError

        res = Resource.from_body(info, copy.deepcopy(body))
        try:
            cleanup_body(info, module, body, self.context)
        except TransientError as exc:
            log.warning("cleanup of %s failed, retried: %s", res.title, exc)
            self._schedule(key, "retry", True)
            return
        except Exception as exc:  # noqa: BLE001 - a broken cleanup must not keep the object forever
            log.error("cleanup of %s failed: %s", res.title, exc)
            self.events.post(info.kind, key[1], key[2], res.uid, "Warning", "CleanupFailed",
                             f"cleanup of the engines' work failed, the resource is deleted anyway: {exc}")
        try:
            self.context.cluster.remove_finalizer(key[0], key[1], key[2], FINALIZER,
                                                  body["metadata"].get("finalizers") or [])
        except Exception as exc:
            log.warning("finalizer of %s not released: %s", res.title, exc)
            self._schedule(key, "retry", True)
            return
        self.queue.forget(key)


def _empty_as_none(value: Any) -> Any:
    return None if value in ({}, [], None) else value


def _patch_value(old: Any, new: Any) -> Any:
    """The merge-patch value that makes `old` into `new`: an empty map cannot be merged over a
    full one (it would change nothing, and the pass would write it forever), so it removes it."""
    if new == {} and isinstance(old, dict) and old:
        return None
    return _without_nulls_in_lists(new)


def _without_nulls_in_lists(value: Any, in_list: bool = False) -> Any:
    """A merge patch replaces lists whole, so a null inside one is a value the schema refuses
    (a null map key elsewhere means "delete" and is kept)."""
    if isinstance(value, dict):
        return {k: _without_nulls_in_lists(v, in_list) for k, v in value.items() if not (in_list and v is None)}
    if isinstance(value, list):
        return [_without_nulls_in_lists(v, True) for v in value if v is not None]
    return value


def _plain(body: Any) -> dict[str, Any]:
    """A plain copy (lists for tuples): what the controller keeps is its own, not the caller's."""
    def conv(v: Any) -> Any:
        if hasattr(v, "items"):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [conv(x) for x in v]
        return v

    return conv(body)


def cleanup_body(info: KindInfo, module: ModuleType, body: Any, ctx: Context) -> None:
    res = Resource.from_body(info, _plain(body))
    if res.annotations.get(KEEP_ON_DELETE, "").lower() == "true":
        log.info("%s deleted; engine resources kept (%s)", res.title, KEEP_ON_DELETE)
        return
    from cdl.errors import InvalidSpec

    try:
        module.cleanup(res, ctx)
    except InvalidSpec:  # a spec that never parsed has nothing to clean up
        pass
