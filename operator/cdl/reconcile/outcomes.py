"""One place that turns a reconcile pass, or the error it raised, into status and Events.

The four error kinds of `cdl.errors` each have one meaning for the user:
invalid spec -> Failed until the spec changes; dependency -> Pending and wait;
transient engine trouble -> a condition and a retry with backoff; permanent -> Failed.

An unexpected error (a bug, a library refusing an input) is retried, but it is not allowed to
loop: its traceback is logged once, repeats are one line, its message is cut to a readable size,
and after MAX_SAME_INTERNAL_ERRORS passes failing the same way for the same generation it is
treated as permanent (Failed, reason InternalError) until the spec changes.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable

from cdl.errors import DependencyNotReady, InvalidSpec, PermanentEngineError, TransientError
from cdl.reconcile.base import Context, Resource, Result, set_condition

log = logging.getLogger("cdl.reconcile")

Reconciler = Callable[[Resource, Context], Result]
MAX_SAME_INTERNAL_ERRORS = 5
MAX_ERROR_TEXT = 1000  # characters of an error message in status, Events and log lines
_internal: dict[str, tuple[int, str, int]] = {}  # uid -> (generation, error, passes in a row)
_internal_lock = threading.Lock()


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
    except Exception as exc:  # a bug or an unexpected library error: retry, tell the user, never loop
        error = _short(f"{type(exc).__name__}: {exc}")
        times = _count_internal(res, error)
        if times == 1:
            log.error("reconcile of %s failed: %s\n%s", res.title, error, _short_traceback(exc))
        else:
            log.warning("reconcile of %s failed again (%d passes in a row): %s", res.title, times, error)
        if times >= MAX_SAME_INTERNAL_ERRORS:
            result = _failed(res, "InternalError", f"failed {times} times in a row with {error}; not retried "
                                                   "until the spec changes (the operator log has the traceback)")
            outcome = "failed"
        else:
            result = Result(requeue=True)
            message = f"retrying after an internal error: {error}"
            set_condition(result.status, status, "EngineAvailable", False, "InternalError", message, res.generation)
            result.status["message"] = message
            if status.get("message") != message:
                result.event("InternalError", message, warning=True)
            outcome = "retry"
    else:
        _forget_internal(res)
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


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_TEXT else f"{text[:MAX_ERROR_TEXT]}... ({len(text)} characters)"


def _short_traceback(exc: BaseException) -> str:
    """The traceback with every line cut to a readable size (an error can quote a 1 MB input)."""
    return "".join(_short(line.rstrip("\n")) + "\n" for line in traceback.format_exception(exc)).rstrip()


def _count_internal(res: Resource, error: str) -> int:
    key = res.uid or res.title
    with _internal_lock:
        generation, previous, times = _internal.get(key, (-1, "", 0))
        times = times + 1 if (generation, previous) == (res.generation, error) else 1
        _internal[key] = (res.generation, error, times)
        return times


def _forget_internal(res: Resource) -> None:
    with _internal_lock:
        _internal.pop(res.uid or res.title, None)
