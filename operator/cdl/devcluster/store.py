"""SQLite persistence with an in-memory index: the single writer of every object.

Every object lives in the `objects` table as JSON and in memory (dicts are never mutated once
stored, so readers may share them). The global resourceVersion counter is a row of `meta`,
written in the same transaction as the object, so a restart continues the sequence. A write is
acknowledged only after its COMMIT (WAL, synchronous=NORMAL: a killed process loses nothing).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdl.devcluster.jsonutil import dumps, loads

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    resource  TEXT NOT NULL,   -- group/plural, e.g. "apps/deployments" or "/configmaps"
    namespace TEXT NOT NULL,   -- "" for cluster-scoped objects
    name      TEXT NOT NULL,
    rv        INTEGER NOT NULL,
    body      BLOB NOT NULL,   -- the object as JSON
    PRIMARY KEY (resource, namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Stored:
    """One stored object: its rv, the parsed body (read-only) and the JSON bytes."""

    rv: int
    obj: dict[str, Any]
    raw: bytes


def open_db(path: Path | str) -> sqlite3.Connection:
    """A connection configured for durable, fast single-writer use."""
    if str(path) != ":memory:":
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # created private: it holds every Secret
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


class Store:
    """Objects by resource key, with a uid index and an owner -> dependents index for GC."""

    def __init__(self, path: Path | str) -> None:
        self.conn = open_db(path)
        row = self.conn.execute("SELECT value FROM meta WHERE key='rv'").fetchone()
        self.rv = int(row[0]) if row else 0
        self.start_rv = self.rv
        # resource -> namespace -> name -> object: namespace listings touch only their namespace
        self._data: dict[str, dict[str, dict[str, Stored]]] = {}
        self.uids: dict[str, tuple[str, str, str]] = {}
        self.dependents: dict[str, set[tuple[str, str, str]]] = {}
        for resource, ns, name, rv, body in self.conn.execute(
                "SELECT resource, namespace, name, rv, body FROM objects"):
            raw = bytes(body)
            self._index(resource, ns, name, Stored(rv, loads(raw), raw))

    def close(self) -> None:
        self.conn.close()

    # --- reads ---
    def get(self, resource: str, ns: str, name: str) -> Stored | None:
        return self._data.get(resource, {}).get(ns, {}).get(name)

    def items(self, resource: str, ns: str | None = None) -> Iterator[Stored]:
        by_ns = self._data.get(resource, {})
        if ns is not None:
            yield from list(by_ns.get(ns, {}).values())
            return
        for objs in list(by_ns.values()):
            yield from list(objs.values())

    def count(self, resource: str, ns: str | None = None) -> int:
        by_ns = self._data.get(resource, {})
        if ns is not None:
            return len(by_ns.get(ns, {}))
        return sum(len(objs) for objs in by_ns.values())

    def resources(self) -> list[str]:
        return [r for r, by_ns in self._data.items() if any(by_ns.values())]

    def by_uid(self, uid: str) -> tuple[str, str, str] | None:
        return self.uids.get(uid)

    # --- writes ---
    def next_rv(self) -> int:
        return self.rv + 1

    def put(self, resource: str, ns: str, name: str, obj: dict[str, Any], rv: int) -> Stored:
        """Store `obj` (its metadata.resourceVersion already set to `rv`) and commit."""
        raw = dumps(obj)
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(
                "INSERT OR REPLACE INTO objects (resource, namespace, name, rv, body) VALUES (?,?,?,?,?)",
                (resource, ns, name, rv, raw))
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('rv', ?)", (str(rv),))
        self.rv = rv
        old = self.get(resource, ns, name)
        if old is not None:
            self._unindex(resource, ns, name, old)
        st = Stored(rv, obj, raw)
        self._index(resource, ns, name, st)
        return st

    def delete(self, resource: str, ns: str, name: str, rv: int) -> None:
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("DELETE FROM objects WHERE resource=? AND namespace=? AND name=?",
                              (resource, ns, name))
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('rv', ?)", (str(rv),))
        self.rv = rv
        old = self.get(resource, ns, name)
        if old is not None:
            self._unindex(resource, ns, name, old)

    # --- indexes ---
    def _index(self, resource: str, ns: str, name: str, st: Stored) -> None:
        self._data.setdefault(resource, {}).setdefault(ns, {})[name] = st
        meta = st.obj.get("metadata") or {}
        if meta.get("uid"):
            self.uids[meta["uid"]] = (resource, ns, name)
        for ref in meta.get("ownerReferences") or []:
            if ref.get("uid"):
                self.dependents.setdefault(ref["uid"], set()).add((resource, ns, name))

    def _unindex(self, resource: str, ns: str, name: str, st: Stored) -> None:
        objs = self._data.get(resource, {}).get(ns)
        if objs is not None:
            objs.pop(name, None)
            if not objs:
                del self._data[resource][ns]
        meta = st.obj.get("metadata") or {}
        if meta.get("uid") and self.uids.get(meta["uid"]) == (resource, ns, name):
            del self.uids[meta["uid"]]
        for ref in meta.get("ownerReferences") or []:
            deps = self.dependents.get(ref.get("uid", ""))
            if deps is not None:
                deps.discard((resource, ns, name))
                if not deps:
                    del self.dependents[ref["uid"]]
