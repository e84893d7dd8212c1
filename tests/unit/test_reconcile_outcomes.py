"""An unexpected error does not loop: one traceback in the log (its lines cut short), short
repeats, and after a few identical passes the resource is Failed until its spec changes."""

from __future__ import annotations

import logging

from cdl.api.kinds import DATAPIPELINE
from cdl.reconcile import outcomes
from cdl.reconcile.base import Resource, Result


def _resource(generation: int = 1) -> Resource:
    return Resource.from_body(DATAPIPELINE, {
        "apiVersion": "cdl.dev/v1alpha1", "kind": "DataPipeline",
        "metadata": {"name": "huge", "namespace": "ml", "uid": "u-1", "generation": generation},
        "spec": {"source": {"uri": "file:///x"}}, "status": {}})


def test_an_internal_error_is_logged_once_and_becomes_permanent(caplog) -> None:
    huge = "x" * 1_000_000

    def reconciler(res: Resource, ctx: object) -> Result:
        raise OSError(36, "File name too long", huge)

    caplog.set_level(logging.INFO, logger="cdl.reconcile")
    outcomes_seen = []
    for _ in range(outcomes.MAX_SAME_INTERNAL_ERRORS + 3):
        result, outcome = outcomes.run(reconciler, _resource(), None)
        outcomes_seen.append(outcome)
    assert outcomes_seen == ["retry"] * (outcomes.MAX_SAME_INTERNAL_ERRORS - 1) + ["failed"] * 4
    assert result.status["phase"] == "Failed" and "not retried until the spec changes" in result.status["message"]
    assert len(result.status["message"]) < 2 * outcomes.MAX_ERROR_TEXT
    tracebacks = [r for r in caplog.records if "Traceback" in r.getMessage()]
    assert len(tracebacks) == 1
    assert sum(len(r.getMessage()) for r in caplog.records) < 50_000  # not 1 MB per pass

    # a new generation (the spec was fixed or changed) is tried afresh
    _, outcome = outcomes.run(reconciler, _resource(generation=2), None)
    assert outcome == "retry"
