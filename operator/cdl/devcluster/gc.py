"""Garbage collection: background cascade along ownerReferences, and the emptying of
terminating namespaces and CRDs before they go.

Work arrives as small notes from the writer (an owner's uid is gone, a namespace or CRD is
terminating) and is done on the event loop a moment later, one note at a time, through the same
`Api` every client uses, so finalizers and watch events behave as for a client's DELETE.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cdl.devcluster.jsonutil import dumps
from cdl.devcluster.objects import Api, DeleteOptions, WriteOptions
from cdl.devcluster.registry import CRD_KEY, NAMESPACE_KEY

log = logging.getLogger(__name__)


class GarbageCollector:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.pending: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.queued: set[tuple[str, str]] = set()  # one pending note per subject is enough
        api.collector = self

    def _note(self, kind: str, arg: str) -> None:
        if (kind, arg) not in self.queued:
            self.queued.add((kind, arg))
            self.pending.put_nowait((kind, arg))

    # --- notes from the writer (synchronous, cheap) ---
    def owner_gone(self, uid: str) -> None:
        if uid and uid in self.api.store.dependents:
            self._note("owner", uid)

    def namespace_terminating(self, name: str) -> None:
        st = self.api.store.get(NAMESPACE_KEY, "", name)
        if st is not None and st.obj["metadata"].get("deletionTimestamp"):
            self._note("namespace", name)

    def crd_terminating(self, name: str) -> None:
        st = self.api.store.get(CRD_KEY, "", name)
        if st is not None and st.obj["metadata"].get("deletionTimestamp"):
            self._note("crd", name)

    def orphan(self, uid: str) -> None:
        """propagationPolicy=Orphan: dependents lose their reference to the owner instead."""
        for resource, ns, name in list(self.api.store.dependents.get(uid, ())):
            st = self.api.store.get(resource, ns, name)
            rt = self.api.registry.by_key(resource)
            if st is None or rt is None:
                continue
            refs = [r for r in st.obj["metadata"].get("ownerReferences", []) if r.get("uid") != uid]
            body: dict[str, Any] = {"metadata": {"ownerReferences": refs or None}}
            self.api.patch(rt, rt.preferred, ns, name, "application/merge-patch+json", dumps(body), WriteOptions())

    # --- the worker ---
    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())
        self.sweep()

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    def sweep(self) -> None:
        """At start: objects whose owners vanished, namespaces and CRDs left terminating."""
        for uid in list(self.api.store.dependents):
            if uid not in self.api.store.uids:
                self._note("owner", uid)
        for st in self.api.store.items(NAMESPACE_KEY):
            self.namespace_terminating(st.obj["metadata"]["name"])
        for st in self.api.store.items(CRD_KEY):
            self.crd_terminating(st.obj["metadata"]["name"])

    async def _run(self) -> None:
        while True:
            kind, arg = await self.pending.get()
            self.queued.discard((kind, arg))
            try:
                if kind == "owner":
                    self._collect_dependents(arg)
                elif kind == "namespace":
                    self._empty_namespace(arg)
                elif kind == "crd":
                    self._empty_crd(arg)
            except Exception:  # noqa: BLE001 - one bad object must not stop collection
                log.exception("garbage collection of %s %s failed", kind, arg)
            await asyncio.sleep(0)

    def _delete(self, resource: str, ns: str, name: str) -> None:
        rt = self.api.registry.by_key(resource)
        st = self.api.store.get(resource, ns, name)
        if rt is None or st is None or st.obj["metadata"].get("deletionTimestamp"):
            return
        self.api.delete(rt, ns, name, DeleteOptions())

    def _collect_dependents(self, uid: str) -> None:
        store = self.api.store
        for resource, ns, name in list(store.dependents.get(uid, ())):
            st = store.get(resource, ns, name)
            if st is None:
                continue
            owners = [r.get("uid") for r in st.obj["metadata"].get("ownerReferences") or []]
            if all(o not in store.uids for o in owners):
                self._delete(resource, ns, name)

    def _empty_namespace(self, name: str) -> None:
        store = self.api.store
        for resource in store.resources():
            rt = self.api.registry.by_key(resource)
            if rt is None or not rt.namespaced:
                continue
            for st in list(store.items(resource, name)):
                self._delete(resource, name, st.obj["metadata"]["name"])
        ns = store.get(NAMESPACE_KEY, "", name)
        if ns is None or not ns.obj["metadata"].get("deletionTimestamp"):
            return
        still = any(store.count(r, name) for r in store.resources()
                    if (rt := self.api.registry.by_key(r)) is not None and rt.namespaced)
        if not still and not ns.obj["metadata"].get("finalizers"):
            self.api.remove(self.api.registry.by_key(NAMESPACE_KEY), ns)  # type: ignore[arg-type]

    def _empty_crd(self, name: str) -> None:
        store = self.api.store
        crd = store.get(CRD_KEY, "", name)
        if crd is None or not crd.obj["metadata"].get("deletionTimestamp"):
            return
        spec = crd.obj["spec"]
        key = f"{spec['group']}/{spec['names']['plural']}"
        for st in list(store.items(key)):
            m = st.obj["metadata"]
            self._delete(key, m.get("namespace", ""), m["name"])
        if store.count(key) == 0 and not crd.obj["metadata"].get("finalizers"):
            self.api.remove(self.api.registry.by_key(CRD_KEY), crd)  # type: ignore[arg-type]
