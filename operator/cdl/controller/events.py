"""Kubernetes Events of the reconcilers, posted by their own threads.

A reconcile pass hands its Events over and goes on: posting them is best effort and must not
hold a worker (an Event is one API call each). The backlog is bounded; when the API server
cannot keep up, the oldest Events are dropped and counted (they are also in the operator log).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

log = logging.getLogger("cdl.controller.events")

MAX_BACKLOG = 10_000


class EventPoster:
    def __init__(self, cluster: Any, threads: int = 2) -> None:
        self.cluster = cluster
        self.threads = threads
        self._backlog: deque[tuple[Any, ...]] = deque(maxlen=MAX_BACKLOG)
        self._cond = threading.Condition()
        self._workers: list[threading.Thread] = []
        self._stopping = False
        self._busy = 0
        self.dropped = 0

    def post(self, kind: str, namespace: str, name: str, uid: str, type_: str, reason: str, message: str) -> None:
        log.info("%s %s/%s: %s %s: %s", kind, namespace, name, type_, reason, message)
        if not self._workers:  # not started (a reconcile run outside the operator): post now
            self._send((kind, namespace, name, uid, type_, reason, message))
            return
        with self._cond:
            if len(self._backlog) == self._backlog.maxlen:
                self.dropped += 1
            self._backlog.append((kind, namespace, name, uid, type_, reason, message))
            self._cond.notify()

    def start(self) -> None:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, name=f"cdl-events-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        """Post what is queued (up to `timeout`), then stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._workers:
            t.join(timeout)
        self._workers.clear()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._backlog and not self._stopping:
                    self._cond.wait()
                if not self._backlog:
                    return
                item = self._backlog.popleft()
            self._send(item)

    def _send(self, item: tuple[Any, ...]) -> None:
        try:
            self.cluster.post_event(*item)
        except Exception as exc:  # Events are best effort
            log.warning("event %s of %s %s/%s not posted: %s", item[5], item[0], item[1], item[2], exc)
