"""The engine-wide budget of trial processes and GPUs, shared by every run's driver."""

from __future__ import annotations

import threading


class Slots:
    """The engine-wide limit on running trial processes (each rank counts one) and the GPUs."""

    def __init__(self, limit: int, gpus: list[int] | None = None) -> None:
        self.limit = max(1, limit)
        self.used = 0
        self.gpus_free = list(gpus or [])
        self.gpu_total = len(self.gpus_free)
        self._lock = threading.Lock()

    def acquire(self, n: int, gpu: bool = False) -> list[int] | None:
        """Slots for one trial of n processes (and n GPUs when gpu): the GPUs, or None if busy.
        A trial larger than the limit still runs when nothing else does."""
        with self._lock:
            if self.used + n > self.limit and self.used != 0:
                return None
            if gpu and len(self.gpus_free) < n:
                return None
            self.used += n
            gpus = self.gpus_free[:n] if gpu else []
            self.gpus_free = self.gpus_free[n:] if gpu else self.gpus_free
            return gpus

    def release(self, n: int, gpus: list[int]) -> None:
        with self._lock:
            self.used = max(0, self.used - n)
            self.gpus_free.extend(gpus)
