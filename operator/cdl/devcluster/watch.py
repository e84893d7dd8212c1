"""Watch: an in-process fan-out of write events, a bounded history for resuming, and the
rules that turn them into a client's stream (selectors, bookmarks, initial events, 410).

The history is in memory only: after a restart, a watch from an rv older than the restart gets
the 410 `Expired` ERROR event (HTTP 200 first, as kube does), and clients re-list.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cdl.devcluster.jsonutil import dumps


@dataclass
class Event:
    """One write: ADDED, MODIFIED or DELETED of an object at `rv`; `old` is the previous state."""

    type: str
    resource: str
    namespace: str
    rv: int
    obj: dict[str, Any]
    old: dict[str, Any] | None = None
    _line: bytes | None = field(default=None, repr=False)

    def line(self) -> bytes:
        """The plain JSON watch line, built once and shared by every watcher."""
        if self._line is None:
            self._line = dumps({"type": self.type, "object": self.obj}) + b"\n"
        return self._line


Filter = Callable[[Event], bool]


class Subscriber:
    """A watcher's queue. When it falls too far behind it is closed and the client resumes."""

    def __init__(self, resource: str, namespace: str | None, limit: int) -> None:
        self.resource = resource
        self.namespace = namespace
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self.limit = limit
        self.overflowed = False

    def offer(self, ev: Event) -> None:
        if self.overflowed:
            return
        if self.queue.qsize() >= self.limit:
            self.overflowed = True
            self.queue.put_nowait(None)
            return
        self.queue.put_nowait(ev)

    def close(self) -> None:
        self.queue.put_nowait(None)


class Broadcaster:
    """Feeds every write to the matching subscribers and keeps the last `history_size` events."""

    def __init__(self, start_rv: int, history_size: int = 10_000, queue_limit: int = 50_000) -> None:
        self.history: deque[Event] = deque(maxlen=max(1, history_size))
        self.start_rv = start_rv
        self.queue_limit = queue_limit
        self.subscribers: dict[str, set[Subscriber]] = {}
        self.evicted = False

    def publish(self, ev: Event) -> None:
        if len(self.history) == self.history.maxlen:
            self.evicted = True
        self.history.append(ev)
        for sub in self.subscribers.get(ev.resource, ()):
            if sub.namespace is None or sub.namespace == ev.namespace:
                sub.offer(ev)

    def subscribe(self, resource: str, namespace: str | None) -> Subscriber:
        sub = Subscriber(resource, namespace, self.queue_limit)
        self.subscribers.setdefault(resource, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.get(sub.resource, set()).discard(sub)

    def close_all(self) -> None:
        for subs in self.subscribers.values():
            for sub in subs:
                sub.close()

    def oldest_resumable(self) -> int:
        """The smallest rv a watch may resume from: older ones missed events we no longer have."""
        if not self.evicted or not self.history:
            return self.start_rv
        return self.history[0].rv - 1

    def since(self, rv: int, resource: str, namespace: str | None) -> list[Event]:
        """History events after `rv` for one resource (caller checked rv is resumable)."""
        out = []
        for ev in reversed(self.history):
            if ev.rv <= rv:
                break
            if ev.resource == resource and (namespace is None or ev.namespace == namespace):
                out.append(ev)
        out.reverse()
        return out


def selector_view(ev: Event, matches: Callable[[dict[str, Any]], bool]) -> str | None:
    """The event type a selector-filtered watcher sees: an object entering the selection is
    ADDED, one leaving it is DELETED, as kube's watch cache does; None when it is not seen."""
    now = matches(ev.obj)
    if ev.type != "MODIFIED" or ev.old is None:
        return ev.type if now else None
    before = matches(ev.old)
    if now and before:
        return "MODIFIED"
    if now:
        return "ADDED"
    if before:
        return "DELETED"
    return None


def expired_status(rv: int, oldest: int) -> dict[str, Any]:
    return {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f"too old resource version: {rv} ({oldest})", "reason": "Expired", "code": 410,
    }
