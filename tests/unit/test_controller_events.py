"""The operator's Event poster: Events trail behind at a bounded rate, and none is lost on stop."""

from __future__ import annotations

import threading
import time

from cdl.controller.events import EventPoster


class RecordingCluster:
    def __init__(self) -> None:
        self.posted: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def post_event(self, kind, namespace, name, uid, type_, reason, message) -> None:
        with self.lock:
            self.posted.append((time.monotonic(), name))


def test_events_beyond_the_burst_are_posted_at_the_rate_and_all_of_them_on_stop():
    cluster = RecordingCluster()
    poster = EventPoster(cluster, threads=2, rate=5.0, burst=5)
    poster.start()
    start = time.monotonic()
    for i in range(15):
        poster.post("DataPipeline", "ml", f"p{i}", "u", "Normal", "RunStarted", "started")
    deadline = time.monotonic() + 10
    while len(cluster.posted) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    with cluster.lock:
        early = len(cluster.posted)
    assert 5 <= early < 15  # the burst at once, the rest held back (10 more take 2 s at 5/s)
    deadline = time.monotonic() + 20
    while len(cluster.posted) < 15 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(cluster.posted) == 15
    # 10 events beyond the burst at 5/s take at least about 2 s
    assert cluster.posted[-1][0] - start >= 1.6
    for i in range(30):
        poster.post("DataPipeline", "ml", f"q{i}", "u", "Normal", "Ready", "ready")
    poster.stop()  # the backlog is posted before the poster stops, without waiting for tokens
    assert sorted(name for _, name in cluster.posted if name.startswith("q")) == sorted(f"q{i}" for i in range(30))
