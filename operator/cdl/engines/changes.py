"""The engines' side of change reports (`base.ReportsChanges`): a list of listeners and `emit`.

An engine owns one `ChangeFeed` and calls `emit(key)` wherever the state of a resource's work
changes; listeners are called in the emitting thread and only queue the key, so emitting is
cheap and never blocks the engine's own work.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cdl.engines.base import ChangeListener, ResourceKey

log = logging.getLogger("cdl.engines.changes")


class ChangeFeed:
    def __init__(self) -> None:
        self._listeners: list[ChangeListener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def emit(self, key: ResourceKey) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(key)
            except Exception:  # a listener's trouble must never stop the engine's work
                log.exception("change listener failed for %s", key)


class ChangePoller:
    """Change reports for an engine whose API cannot push them (a cluster engine): one thread
    per engine lists the state of all its work in one call, `fetch() -> {key: signature}`, every
    `interval` seconds, and emits the keys whose signature changed, appeared or disappeared. It
    runs only while someone listens; trouble reaching the engine is logged and retried."""

    def __init__(self, feed: ChangeFeed, fetch: Callable[[], dict[ResourceKey, object]], interval: float,
                 name: str) -> None:
        self.feed, self.fetch, self.interval, self.name = feed, fetch, interval, name
        self._seen: dict[ResourceKey, object] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name=f"cdl-{self.name}-changes", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(self.interval + 5)

    def poll_once(self) -> list[ResourceKey]:
        """One list call; emits and returns the keys that changed since the previous one (the
        first call only remembers)."""
        current = self.fetch()
        previous, self._seen = self._seen, current
        if previous is None:
            return []
        changed = [k for k in current.keys() | previous.keys() if current.get(k) != previous.get(k)]
        for key in changed:
            self.feed.emit(key)
        return changed

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # the engine is down or slow: the next round tries again
                log.warning("%s: listing for change reports failed: %s", self.name, exc)
            self._stop.wait(self.interval)
