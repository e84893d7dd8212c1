"""kopf wiring, kept thin: every event or timer tick of a cdl resource runs its reconciler.

The handlers are synchronous (kopf runs them in its thread pool); a per-object lock keeps a
timer tick and an event handler of the same object from reconciling at once. Running engine
work is followed by a timer; resources that need nothing are looked at rarely.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import kopf

from cdl.api.common import GROUP, KEEP_ON_DELETE, VERSION
from cdl.api.kinds import DATAPIPELINE, DEPLOYMENT, EXPERIMENT, MODELVERSION, KindInfo
from cdl.controller import metrics
from cdl.controller.redaction import redact, redact_data
from cdl.merge_patch import merge_patch
from cdl.reconcile import datapipeline, deployment, experiment, modelversion, outcomes
from cdl.reconcile.base import Context, Resource

log = logging.getLogger("cdl.controller")

RECONCILERS: tuple[tuple[KindInfo, ModuleType], ...] = (
    (DATAPIPELINE, datapipeline),
    (EXPERIMENT, experiment),
    (MODELVERSION, modelversion),
    (DEPLOYMENT, deployment),
)
IDLE_SECONDS = {"DataPipeline": 30.0, "Experiment": 30.0, "ModelVersion": 60.0, "Deployment": 10.0}
MAX_BACKOFF = 60.0


@dataclass
class ControllerState:
    """What the handlers share: the reconcile context and per-object scheduling."""

    context: Context | None = None
    poll_seconds: float = 3.0
    due: dict[str, float] = field(default_factory=dict)
    # The status this process last wrote, per object: kopf may hand a timer an older copy of the
    # object, and only the operator writes status, so what it wrote is the newest truth.
    known_status: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    locks: dict[str, threading.Lock] = field(default_factory=dict)
    guard: threading.Lock = field(default_factory=threading.Lock)

    def lock(self, uid: str) -> threading.Lock:
        with self.guard:
            return self.locks.setdefault(uid, threading.Lock())


STATE = ControllerState()


def configure(context: Context, poll_seconds: float) -> None:
    STATE.context = context
    STATE.poll_seconds = poll_seconds
    STATE.due.clear()
    STATE.failures.clear()
    STATE.known_status.clear()


def reconcile_body(info: KindInfo, module: ModuleType, body: Any, patch: Any, force: bool) -> None:
    ctx = STATE.context
    if ctx is None:
        raise kopf.TemporaryError("the operator is still starting", delay=2)
    uid = body["metadata"].get("uid", body["metadata"]["name"])
    if not force and time.monotonic() < STATE.due.get(uid, 0.0):
        return
    with STATE.lock(uid):
        res = Resource.from_body(info, _plain(body))
        if res.deleting:
            return
        known = STATE.known_status.get(uid)
        if known is not None:
            res.status = merge_patch(res.status, known)
        started = time.perf_counter()
        result, outcome = outcomes.run(module.reconcile, res, ctx)
        metrics.LATENCY.labels(info.kind).observe(time.perf_counter() - started)
        metrics.RECONCILES.labels(info.kind, outcome).inc()
        changes = {k: _without_nulls_in_lists(v) for k, v in result.status.items() if res.status.get(k) != v
                   and not (v is None and k not in res.status)}
        for key, value in changes.items():  # only what changed: a pass that changes nothing writes nothing
            patch.status[key] = redact_data(value)
        STATE.known_status[uid] = merge_patch(res.status, changes)
        for event in result.events:
            kopf.event(body, type=event.type, reason=event.reason, message=redact(event.message))
            if event.type == "Warning":
                metrics.ERRORS.labels(info.kind, event.reason).inc()
        _schedule(info, uid, outcome, result.requeue, result.requeue_after)


def _schedule(info: KindInfo, uid: str, outcome: str, requeue: bool, after: float | None = None) -> None:
    if outcome == "retry":
        n = STATE.failures[uid] = STATE.failures.get(uid, 0) + 1
        delay = min(MAX_BACKOFF, STATE.poll_seconds * 2 ** (n - 1))
    else:
        STATE.failures.pop(uid, None)
        delay = (after or STATE.poll_seconds) if requeue else IDLE_SECONDS[info.kind]
    STATE.due[uid] = time.monotonic() + delay


def _without_nulls_in_lists(value: Any, in_list: bool = False) -> Any:
    """A merge patch replaces lists whole, so a null inside one is a value the schema refuses
    (a null map key elsewhere means "delete" and is kept)."""
    if isinstance(value, dict):
        return {k: _without_nulls_in_lists(v, in_list) for k, v in value.items() if not (in_list and v is None)}
    if isinstance(value, list):
        return [_without_nulls_in_lists(v, True) for v in value if v is not None]
    return value


def _plain(body: Any) -> dict[str, Any]:
    """kopf's body is a read-only view; reconcilers get plain dicts."""
    def conv(v: Any) -> Any:
        if hasattr(v, "items"):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [conv(x) for x in v]
        return v

    return conv(body)


def cleanup_body(info: KindInfo, module: ModuleType, body: Any) -> None:
    ctx = STATE.context
    if ctx is None:
        raise kopf.TemporaryError("the operator is still starting", delay=2)
    res = Resource.from_body(info, _plain(body))
    if res.annotations.get(KEEP_ON_DELETE, "").lower() == "true":
        log.info("%s deleted; engine resources kept (%s)", res.title, KEEP_ON_DELETE)
        return
    try:
        module.cleanup(res, ctx)
    except Exception as exc:  # a spec that never parsed has nothing to clean up
        from cdl.errors import InvalidSpec, TransientError

        if isinstance(exc, TransientError):
            raise kopf.TemporaryError(f"cleanup of {res.title} failed: {exc}", delay=5)
        if not isinstance(exc, InvalidSpec):
            raise kopf.PermanentError(f"cleanup of {res.title} failed: {exc}")
    STATE.due.pop(res.uid, None)
    STATE.known_status.pop(res.uid, None)


def register(registry: kopf.OperatorRegistry, poll_seconds: float) -> None:
    """Add the handlers for the four kinds to a kopf registry."""
    for info, module in RECONCILERS:
        def on_change(body, patch, _info=info, _module=module, **_):
            reconcile_body(_info, _module, body, patch, force=True)

        def on_tick(body, patch, _info=info, _module=module, **_):
            reconcile_body(_info, _module, body, patch, force=False)

        def on_delete(body, _info=info, _module=module, **_):
            cleanup_body(_info, _module, body)

        resource = (GROUP, VERSION, info.plural)
        kopf.on.resume(*resource, registry=registry, id="reconcile-resume")(on_change)
        kopf.on.create(*resource, registry=registry, id="reconcile-create")(on_change)
        kopf.on.update(*resource, registry=registry, id="reconcile-update")(on_change)
        kopf.timer(*resource, registry=registry, id="follow", interval=poll_seconds, initial_delay=poll_seconds)(on_tick)
        kopf.on.delete(*resource, registry=registry, id="cleanup")(on_delete)
