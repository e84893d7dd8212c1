"""Watch fan-out, resume window and selector transitions (cdl.devcluster.watch)."""

import asyncio

from cdl.devcluster.selectors import Selector
from cdl.devcluster.watch import Broadcaster, Event, selector_view


def ev(rv: int, typ: str = "MODIFIED", labels: dict | None = None, old_labels: dict | None = None,
       ns: str = "a") -> Event:
    obj = {"metadata": {"name": "x", "namespace": ns, "labels": labels or {}}}
    old = {"metadata": {"name": "x", "namespace": ns, "labels": old_labels or {}}} if old_labels is not None else None
    return Event(typ, "/configmaps", ns, rv, obj, old)


def test_history_window_and_resume():
    b = Broadcaster(start_rv=10, history_size=3)
    assert b.oldest_resumable() == 10
    for rv in range(11, 14):
        b.publish(ev(rv))
    assert b.oldest_resumable() == 10  # nothing evicted yet
    b.publish(ev(14))
    assert b.oldest_resumable() == 11  # rv 11 was evicted: resuming from 10 would miss it
    assert [e.rv for e in b.since(12, "/configmaps", None)] == [13, 14]
    assert b.since(12, "/secrets", None) == []


def test_selector_transitions_become_added_and_deleted():
    sel = Selector.parse("app=x", None).matches
    assert selector_view(ev(1, "MODIFIED", {"app": "x"}, {"app": "x"}), sel) == "MODIFIED"
    assert selector_view(ev(1, "MODIFIED", {"app": "x"}, {}), sel) == "ADDED"
    assert selector_view(ev(1, "MODIFIED", {}, {"app": "x"}), sel) == "DELETED"
    assert selector_view(ev(1, "MODIFIED", {}, {}), sel) is None
    assert selector_view(ev(1, "DELETED", {"app": "x"}), sel) == "DELETED"


def test_subscribers_get_their_namespace_and_overflow_closes():
    async def run() -> None:
        b = Broadcaster(0)
        b.queue_limit = 2
        mine, other = b.subscribe("/configmaps", "a"), b.subscribe("/configmaps", "b")
        for rv in (1, 2, 3):
            b.publish(ev(rv))
        assert other.queue.empty()
        assert [mine.queue.get_nowait().rv, mine.queue.get_nowait().rv] == [1, 2]
        assert mine.queue.get_nowait() is None and mine.overflowed  # the client resumes from rv 2
        assert ev(5).line().startswith(b'{"type":"MODIFIED"')

    asyncio.run(run())
