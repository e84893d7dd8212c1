"""Kubernetes Events of the reconcilers, posted by their own threads.

A reconcile pass hands its Events over and goes on: posting them is best effort and must not
hold a worker (an Event is one API call each). They are posted at most `rate` per second (with
a burst), like client-go's Event recorder limits its writes: while thousands of resources
converge at once, Events trail behind and the API server's time goes to status writes, the
part users wait for. The backlog is bounded; when it is full, the oldest Events are dropped and
counted (every Event is also in the operator log).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

log = logging.getLogger("cdl.controller.events")

MAX_BACKLOG = 10_000
RATE = 200.0  # Events per second, sustained
BURST = 400


class EventPoster:
    def __init__(self, cluster: Any, threads: int = 2, rate: float = RATE, burst: int = BURST) -> None:
        self.cluster = cluster
        self.threads = threads
        self.rate, self.burst = rate, burst
        self._tokens, self._refilled = float(burst), time.monotonic()
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
                wait = self._take_token()
                if wait > 0 and not self._stopping:
                    self._cond.wait(wait)
                    continue
                item = self._backlog.popleft()
            self._send(item)

    def _take_token(self) -> float:
        """Take a token of the bucket (0.0), or say how long until there is one (under the lock)."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def _send(self, item: tuple[Any, ...]) -> None:
        try:
            self.cluster.post_event(*item)
        except Exception as exc:  # Events are best effort
            log.warning("event %s of %s %s/%s not posted: %s", item[5], item[0], item[1], item[2], exc)
