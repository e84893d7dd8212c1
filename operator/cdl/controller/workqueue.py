"""The operator's work queue: which resource to reconcile next, and by how many workers.

What it guarantees (the usual controller work-queue rules, plus fairness):

* a key is queued at most once (adding it again can only raise its priority) and is handed to
  one worker at a time; a key added while a worker has it is queued again when the worker is done;
* each lane (one per kind, so one per engine role) has its own fixed number of worker threads:
  concurrency per engine is bounded and the queue, not a growing set of tasks, absorbs bursts
  (it holds each key once, so it never grows beyond the number of resources);
* two priorities: new or changed specs (HIGH) go before follow-ups (LOW); every
  `LOW_EVERY`-th pick of a busy lane takes a follow-up so follow-ups are delayed, never starved;
* within a priority, namespaces take turns, so a thousand keys of one namespace do not delay
  the one key of another;
* delayed adds (follow-ups of running work, rare resyncs) wait in one heap served by one timer
  thread: there is no timer per object, and a later `add_after` of a key replaces its earlier one.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("cdl.controller.workqueue")

HIGH, LOW = 0, 1
LOW_EVERY = 8

Key = tuple[str, str, str]  # (lane, namespace, name)


class _Turns:
    """Keys of one priority of one lane, namespaces taking turns. Entries can be stale (the key
    was raised to HIGH or forgotten); `pop` skips them."""

    def __init__(self) -> None:
        self.by_ns: dict[str, deque[Key]] = {}
        self.turns: deque[str] = deque()

    def push(self, key: Key) -> None:
        ns = key[1]
        queue = self.by_ns.get(ns)
        if queue is None:
            queue = self.by_ns[ns] = deque()
            self.turns.append(ns)
        queue.append(key)

    def pop(self, wanted: Callable[[Key], bool]) -> Key | None:
        while self.turns:
            ns = self.turns.popleft()
            queue = self.by_ns[ns]
            key = queue.popleft()
            if queue:
                self.turns.append(ns)
            else:
                del self.by_ns[ns]
            if wanted(key):
                return key
        return None


class WorkQueue:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._lanes: dict[str, tuple[_Turns, _Turns]] = {}
        self._live: dict[tuple[str, int], int] = {}  # (lane, priority) -> keys queued
        self._picks: dict[str, int] = {}
        self._queued: dict[Key, int] = {}  # key -> priority it is queued at
        self._processing: set[Key] = set()
        self._dirty: dict[Key, int] = {}  # added while being processed
        self._due: dict[Key, tuple[float, int]] = {}  # delayed: key -> (when, priority)
        self._heap: list[tuple[float, int, Key]] = []
        self._seq = itertools.count()
        self._timer_cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopped = False

    # ------------------------------------------------------------------ adding

    def add(self, key: Key, priority: int = LOW) -> None:
        with self._cond:
            self._add(key, priority)

    def _add(self, key: Key, priority: int) -> None:
        if self._stopped:
            return
        if key in self._processing:
            self._dirty[key] = min(priority, self._dirty.get(key, priority))
            return
        queued = self._queued.get(key)
        if queued is not None and queued <= priority:
            return
        lane = self._lane(key[0])
        if queued is not None:
            self._live[(key[0], queued)] -= 1
        self._queued[key] = priority
        self._live[(key[0], priority)] = self._live.get((key[0], priority), 0) + 1
        lane[priority].push(key)
        self._cond.notify_all()

    def add_after(self, key: Key, delay: float, priority: int = LOW) -> None:
        """Queue `key` in `delay` seconds, replacing an earlier delayed add of it."""
        when = time.monotonic() + max(0.0, delay)
        with self._timer_cond:
            self._due[key] = (when, priority)
            first = not self._heap or when < self._heap[0][0]
            heapq.heappush(self._heap, (when, next(self._seq), key))
            if first:
                self._timer_cond.notify()

    def forget(self, key: Key) -> None:
        """The resource is gone: drop it from the queue and from the timer."""
        with self._timer_cond:
            self._due.pop(key, None)
        with self._cond:
            priority = self._queued.pop(key, None)
            if priority is not None:
                self._live[(key[0], priority)] -= 1
            self._dirty.pop(key, None)

    def _lane(self, name: str) -> tuple[_Turns, _Turns]:
        lane = self._lanes.get(name)
        if lane is None:
            lane = self._lanes[name] = (_Turns(), _Turns())
        return lane

    # ------------------------------------------------------------------ taking

    def get(self, lane_name: str, timeout: float | None = None) -> Key | None:
        """The next key of a lane for a worker (None when stopped or after `timeout`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._stopped:
                key = self._pick(lane_name)
                if key is not None:
                    self._processing.add(key)
                    return key
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return None

    def _pick(self, lane_name: str) -> Key | None:
        high, low = self._live.get((lane_name, HIGH), 0), self._live.get((lane_name, LOW), 0)
        if not high and not low:
            return None
        self._picks[lane_name] = n = self._picks.get(lane_name, 0) + 1
        order = (LOW, HIGH) if (low and (not high or n % LOW_EVERY == 0)) else (HIGH, LOW)
        lane = self._lane(lane_name)
        for priority in order:
            if not self._live.get((lane_name, priority), 0):
                continue
            key = lane[priority].pop(lambda k, p=priority: self._queued.get(k) == p)
            if key is not None:
                del self._queued[key]
                self._live[(lane_name, priority)] -= 1
                return key
        return None

    def done(self, key: Key) -> None:
        with self._cond:
            self._processing.discard(key)
            priority = self._dirty.pop(key, None)
            if priority is not None:
                self._add(key, priority)

    def depth(self) -> dict[str, int]:
        with self._cond:
            return {f"{lane}/{'high' if p == HIGH else 'low'}": n for (lane, p), n in self._live.items() if n}

    def delayed(self) -> int:
        with self._timer_cond:
            return len(self._due)

    # ------------------------------------------------------------------ threads

    def start(self, handler: Callable[[Key], Any], lanes: dict[str, int]) -> None:
        """Workers per lane calling `handler(key)`, and the one timer thread."""
        timer = threading.Thread(target=self._timer, name="cdl-queue-timer", daemon=True)
        timer.start()
        self._threads.append(timer)
        for lane, count in lanes.items():
            for i in range(count):
                t = threading.Thread(target=self._work, args=(lane, handler), name=f"cdl-{lane}-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work; wait for the workers to finish what they have."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        with self._timer_cond:
            self._timer_cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    def _work(self, lane: str, handler: Callable[[Key], Any]) -> None:
        while True:
            key = self.get(lane)
            if key is None:
                return
            try:
                handler(key)
            except Exception:  # the handler reports its own errors; a worker never dies
                log.exception("reconciling %s failed", key)
            finally:
                self.done(key)

    def _timer(self) -> None:
        while True:
            due: list[tuple[Key, int]] = []
            with self._timer_cond:
                if self._stopped:
                    return
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    when, _, key = heapq.heappop(self._heap)
                    entry = self._due.get(key)
                    if entry is not None and entry[0] == when:
                        del self._due[key]
                        due.append((key, entry[1]))
                if not due:
                    wait = (self._heap[0][0] - now) if self._heap else None
                    self._timer_cond.wait(wait)
                    continue
            with self._cond:
                for key, priority in due:
                    self._add(key, priority)

