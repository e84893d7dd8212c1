"""Shards: several operator replicas, each reconciling a deterministic share of the resources.

Each replica holds a Lease (coordination.k8s.io) named `<group>-<identity>` in its namespace and
renews it; the members are the replicas whose Lease is live. A resource belongs to the member
with the highest rendezvous hash of (member, namespace/name), so when a member joins or leaves
only its own share moves, and every replica computes the same owner from the same Leases.

Handover without losing or duplicating work:

* a member counts only once its Lease is `settle` seconds old (two renew periods, so every
  replica has listed it by then): all replicas switch to the new owners at the same moment,
  and the gaining replica takes its keys a `grace` later, after in-flight passes of the old
  owner have ended. When no Lease is that old (a cold start), the oldest replica owns all
  until the others settle, so ownership only ever moves once per join;
* a replica that stops drains its workers first and then deletes its Lease: the others take
  its share on their next list (at most `renew` seconds); one that dies is dropped when its
  Lease expires (`lease` seconds).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("cdl.controller.shards")

GROUP_LABEL = "cdl.dev/operator-group"
FENCE_AT = 0.8  # of the lease duration: stop working before the others may take over


def owner(members: tuple[str, ...], key: str) -> str | None:
    """The member that owns `key` (rendezvous hashing); None without members."""
    best, best_score = None, b""
    for m in members:
        score = hashlib.blake2b(f"{m}\0{key}".encode(), digest_size=8).digest()
        if best is None or score > best_score:
            best, best_score = m, score
    return best


def _micro(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _seconds(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, datetime):
        return value.timestamp()
    text = str(value).replace("Z", "+00:00")
    return datetime.fromisoformat(text).timestamp()


class ShardMembership:
    """This replica's Lease, the live members, and who owns a key."""

    def __init__(self, namespace: str, identity: str, *, group: str = "cdl-operator", lease_seconds: float = 15.0,
                 renew_seconds: float = 3.0, grace_seconds: float = 1.0, api_client: Any | None = None) -> None:
        from kubernetes import client

        self.namespace, self.identity, self.group = namespace, identity, group
        self.lease_seconds, self.renew_seconds, self.grace_seconds = lease_seconds, renew_seconds, grace_seconds
        self.settle_seconds = renew_seconds * 2 + 1
        self.api = client.CoordinationV1Api(api_client or client.ApiClient())
        self.name = f"{group}-{identity}"[:253]
        self._leases: dict[str, tuple[float, float, float]] = {}  # identity -> (acquired, renewed, duration)
        self._members: tuple[str, ...] = (identity,)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._acquired = time.time()
        self._last_renew = 0.0
        self.on_change: Callable[[tuple[str, ...], tuple[str, ...]], None] | None = None

    # ------------------------------------------------------------------ ownership

    @property
    def members(self) -> tuple[str, ...]:
        return self._members

    def owns(self, namespace: str, name: str) -> bool:
        if self.fenced():
            return False
        return owner(self._members, f"{namespace}/{name}") == self.identity

    def fenced(self) -> bool:
        """True when this replica's last renewal is so old that the others may have dropped it
        (an overloaded or cut-off replica): it then works on nothing until it renews, so its
        share is never worked on twice."""
        return time.time() - self._last_renew > self.lease_seconds * FENCE_AT

    def effective(self, now: float | None = None) -> tuple[str, ...]:
        """The members at `now`: live Leases that have settled (all live ones when none has)."""
        now = time.time() if now is None else now
        with self._lock:
            live = {m: acquired for m, (acquired, renewed, duration) in self._leases.items()
                    if renewed + duration > now}
        settled = tuple(sorted(m for m, acquired in live.items() if acquired + self.settle_seconds <= now))
        if settled:
            return settled
        if live:  # a cold start: the oldest replica owns all until the others settle
            return (min(live, key=lambda m: (live[m], m)),)
        return (self.identity,)

    # ------------------------------------------------------------------ the Lease loop

    def start(self) -> None:
        """Take this replica's Lease and list the others once (blocking), then keep renewing."""
        self._renew()
        self._refresh()
        self._thread = threading.Thread(target=self._loop, name="cdl-shards", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Leave: the caller has drained its workers; delete the Lease so the others take over."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.renew_seconds + 5)
        try:
            self.api.delete_namespaced_lease(self.name, self.namespace)
        except Exception as exc:  # expiry hands over anyway
            log.warning("could not delete Lease %s: %s", self.name, exc)

    def _loop(self) -> None:
        while not self._stop.wait(min(self.renew_seconds, 1.0)):
            try:
                if time.time() - self._last_renew >= self.renew_seconds:
                    was_fenced = self.fenced()
                    self._renew()
                    self._refresh()
                    if was_fenced and self.on_change is not None:  # take up its share again
                        log.warning("shard %s renewed its Lease late; working on its share again", self.identity)
                        self.on_change((), self._members)
                else:
                    self._recompute()  # a member settles or expires between lists
            except Exception as exc:  # keep trying; the Lease lasts several renew periods
                log.warning("shard membership: %s", exc)

    def _renew(self) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        now = time.time()
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace, labels={GROUP_LABEL: self.group}),
            spec=client.V1LeaseSpec(holder_identity=self.identity, lease_duration_seconds=int(self.lease_seconds),
                                    acquire_time=_micro(self._acquired), renew_time=_micro(now)))
        try:
            self.api.patch_namespaced_lease(self.name, self.namespace, {"spec": {
                "holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_seconds),
                "acquireTime": _micro(self._acquired), "renewTime": _micro(now)}})
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.api.create_namespaced_lease(self.namespace, body)
        self._last_renew = now

    def _refresh(self) -> None:
        found = self.api.list_namespaced_lease(self.namespace, label_selector=f"{GROUP_LABEL}={self.group}")
        leases = {}
        for lease in found.items:
            spec = lease.spec
            if not spec or not spec.holder_identity:
                continue
            leases[spec.holder_identity] = (_seconds(spec.acquire_time), _seconds(spec.renew_time),
                                            float(spec.lease_duration_seconds or self.lease_seconds))
        with self._lock:
            self._leases = leases
        self._recompute()

    def _recompute(self) -> None:
        members = self.effective()
        if members != self._members:
            old, self._members = self._members, members
            log.info("shard members: %s -> %s (this replica: %s)", ", ".join(old), ", ".join(members), self.identity)
            if self.on_change is not None:
                self.on_change(old, members)
