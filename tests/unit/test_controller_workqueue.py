"""The operator's work queue and shard assignment: the order work is done in, and who does it."""

from __future__ import annotations

import threading
import time

from cdl.controller.shards import owner
from cdl.controller.workqueue import HIGH, LOW, LOW_EVERY, WorkQueue


def key(ns: str, name: str, lane: str = "DataPipeline") -> tuple[str, str, str]:
    return (lane, ns, name)


def drain(q: WorkQueue, lane: str = "DataPipeline") -> list[tuple[str, str, str]]:
    out = []
    while (k := q.get(lane, timeout=0)) is not None:
        out.append(k)
        q.done(k)
    return out


def test_one_namespace_with_many_keys_does_not_delay_another():
    q = WorkQueue()
    for i in range(1000):
        q.add(key("bulk", f"b{i}"), HIGH)
    q.add(key("team", "probe"), HIGH)
    order = drain(q)
    assert order.index(key("team", "probe")) == 1  # namespaces take turns
    assert len(order) == 1001


def test_new_specs_go_before_follow_ups_which_are_never_starved():
    q = WorkQueue()
    for i in range(LOW_EVERY * 3):
        q.add(key("a", f"follow-{i}"), LOW)
    for i in range(LOW_EVERY * 3):
        q.add(key("a", f"new-{i}"), HIGH)
    order = [k[2] for k in drain(q)]
    first = order[:LOW_EVERY * 2]
    assert sum(1 for n in first if n.startswith("follow")) == 2  # one follow-up in each LOW_EVERY picks
    assert order[0].startswith("new")


def test_a_key_is_queued_once_and_raised_not_duplicated():
    q = WorkQueue()
    q.add(key("a", "x"), LOW)
    q.add(key("a", "x"), LOW)
    q.add(key("a", "y"), LOW)
    q.add(key("a", "x"), HIGH)
    assert drain(q) == [key("a", "x"), key("a", "y")]


def test_a_key_added_while_being_worked_on_is_worked_on_again_after_not_at_the_same_time():
    q = WorkQueue()
    q.add(key("a", "x"), LOW)
    taken = q.get("DataPipeline", timeout=0)
    q.add(key("a", "x"), HIGH)  # e.g. the engine reported while the pass ran
    assert q.get("DataPipeline", timeout=0) is None
    q.done(taken)
    assert q.get("DataPipeline", timeout=0) == key("a", "x")


def test_lanes_are_separate():
    q = WorkQueue()
    for i in range(100):
        q.add(key("a", f"d{i}"), HIGH)
    q.add(key("a", "e", lane="Experiment"), LOW)
    assert q.get("Experiment", timeout=0) == key("a", "e", lane="Experiment")


def test_delayed_adds_come_due_from_one_timer_and_the_latest_wins():
    q = WorkQueue()
    handled: list[tuple[str, tuple[str, str, str]]] = []
    lock = threading.Lock()

    def handler(k):
        with lock:
            handled.append((threading.current_thread().name, k))

    q.add_after(key("a", "x"), 0.2)
    q.add_after(key("a", "x"), 0.05)  # replaces the earlier one: handled once
    q.add_after(key("a", "y"), 0.1)
    q.start(handler, {"DataPipeline": 2})
    try:
        deadline = time.monotonic() + 5
        while len(handled) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # the replaced 0.2 s entry must not fire
    finally:
        q.stop()
    assert sorted(k for _, k in handled) == [key("a", "x"), key("a", "y")]
    assert q.delayed() == 0
    assert all(name.startswith("cdl-DataPipeline-") for name, _ in handled)


def test_shards_split_keys_and_a_leaving_member_moves_only_its_own_share():
    keys = [f"ns-{i % 7}/r-{i}" for i in range(3000)]
    three = {k: owner(("a", "b", "c"), k) for k in keys}
    shares = {m: sum(1 for o in three.values() if o == m) for m in "abc"}
    assert all(800 < n < 1200 for n in shares.values()), shares
    two = {k: owner(("a", "b"), k) for k in keys}
    moved = [k for k in keys if three[k] != two[k]]
    assert moved and all(three[k] == "c" for k in moved)
    assert owner(("b", "a"), keys[0]) == owner(("a", "b"), keys[0])  # order of members does not matter


def test_a_replica_that_could_not_renew_its_lease_works_on_nothing():
    """Self-fencing: before the others may take its share over (the Lease expiring), a replica
    that has not renewed stops owning anything."""
    from cdl.controller.shards import ShardMembership

    m = ShardMembership("ops", "a", lease_seconds=10, renew_seconds=3)
    m._members = ("a",)
    m._last_renew = time.time()
    assert m.owns("ml", "news")
    m._last_renew = time.time() - 9  # 90 % of the lease without a renewal
    assert not m.owns("ml", "news")
