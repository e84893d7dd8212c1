"""Prometheus metrics of the operator: reconciles, outcomes and latency per kind."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter("cdl_reconciles_total", "Reconcile passes", ["kind", "outcome"])
ERRORS = Counter("cdl_reconcile_errors_total", "Reconcile passes that ended in an error", ["kind", "reason"])
LATENCY = Histogram(
    "cdl_reconcile_seconds", "Time spent in one reconcile pass", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

QUEUED = Gauge("cdl_workqueue_queued", "Resources waiting for a reconcile pass now")
DELAYED = Gauge("cdl_workqueue_delayed", "Resources with a follow-up or resync scheduled")
DROPPED_EVENTS = Gauge("cdl_events_dropped", "Kubernetes Events dropped because the API server fell behind")


def watch_queue(queue, events) -> None:  # noqa: ANN001 - controller types, kept loose (no import cycle)
    """Report the work queue's depth and the Event backlog's losses when scraped."""
    QUEUED.set_function(lambda: sum(queue.depth().values()))
    DELAYED.set_function(queue.delayed)
    DROPPED_EVENTS.set_function(lambda: events.dropped)


_started: set[int] = set()


def serve(port: int, addr: str = "0.0.0.0") -> None:
    if port not in _started:
        start_http_server(port, addr=addr)
        _started.add(port)
