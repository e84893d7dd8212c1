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
