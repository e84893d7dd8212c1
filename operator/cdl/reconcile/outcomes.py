"""One place that turns a reconcile pass, or the error it raised, into status and Events.

The four error kinds of `cdl.errors` each have one meaning for the user:
invalid spec -> Failed until the spec changes; dependency -> Pending and wait;
transient engine trouble -> a condition and a retry with backoff; permanent -> Failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from cdl.errors import DependencyNotReady, InvalidSpec, PermanentEngineError, TransientError
from cdl.reconcile.base import Context, Resource, Result, set_condition

log = logging.getLogger("cdl.reconcile")

Reconciler = Callable[[Resource, Context], Result]


def run(reconciler: Reconciler, res: Resource, ctx: Context) -> tuple[Result, str]:
    """Run one pass; return the result and an outcome word for metrics (ok, waiting, retry, failed)."""
    status = res.status
    try:
        result = reconciler(res, ctx)
        outcome = "ok"
        if not _condition_is(result.status, status, "EngineAvailable", "True"):
            set_condition(result.status, status, "EngineAvailable", True, "EngineReachable",
                          "the engine answered", res.generation)
    except InvalidSpec as exc:
        result = _failed(res, "InvalidSpec", str(exc))
        outcome = "failed"
    except DependencyNotReady as exc:
        result = Result(requeue=True)
        result.status.update(phase="Pending", message=exc.message)
        set_condition(result.status, status, "Ready", False, exc.reason, exc.message, res.generation)
        if status.get("message") != exc.message:
            result.event(exc.reason, exc.message)
        outcome = "waiting"
    except TransientError as exc:
        result = Result(requeue=True)
        message = f"retrying: {exc.message}"
        set_condition(result.status, status, "EngineAvailable", False, exc.reason, message, res.generation)
        result.status["message"] = message
        if status.get("message") != message:
            result.event(exc.reason, message, warning=True)
        outcome = "retry"
    except PermanentEngineError as exc:
        result = _failed(res, exc.reason, exc.message)
        outcome = "failed"
    except Exception as exc:  # a bug or an unexpected library error: keep trying, tell the user
        log.exception("reconcile of %s failed", res.title)
        result = Result(requeue=True)
        message = f"retrying after an internal error: {type(exc).__name__}: {exc}"
        set_condition(result.status, status, "EngineAvailable", False, "InternalError", message, res.generation)
        result.status["message"] = message
        if status.get("message") != message:
            result.event("InternalError", message, warning=True)
        outcome = "retry"
    if outcome != "waiting":
        result.status.setdefault("observedGeneration", res.generation)
    return result, outcome


def _failed(res: Resource, reason: str, message: str) -> Result:
    result = Result()
    result.status.update(phase="Failed", message=message, observedGeneration=res.generation)
    set_condition(result.status, res.status, "Ready", False, reason, message, res.generation)
    if res.status.get("message") != message or res.status.get("phase") != "Failed":
        result.event(reason, message, warning=True)
    return result


def _condition_is(patch: dict, current: dict, type_: str, value: str) -> bool:
    for source in (patch, current):
        for c in source.get("conditions") or []:
            if c.get("type") == type_:
                return c.get("status") == value
    return False
