"""Benchmark of the embedded control plane (not a test).

p50/p99 latency of create, merge-patch and watch delivery (time from sending a PATCH to its
event arriving on an open watch) with 1,000 and 10,000 ConfigMaps stored, and the server's RSS.
Beside each: the same operation done directly on SQLite with the server's schema and settings
(WAL, synchronous=NORMAL, one transaction per write, rv row updated), no HTTP, no JSON parsing of
requests; for watch delivery the baseline is that write plus an in-process asyncio queue hop.
The ratio shows the cost of HTTP+TLS, JSON, validation and fan-out.

With `--against DIR` (another revision's source, e.g. `git archive main operator | tar -x -C DIR`)
a second server runs DIR/operator (first on its PYTHONPATH) beside this tree's; creates and patches
alternate between the two sample by sample, and the ratio this tree / that tree is printed per
operation: the check that a change to the write path did not make it slower.

Usage: .venv/bin/python bench/devcluster_bench.py [--sizes 1000,10000] [--samples 400] [--against DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from cdl.devcluster import process
from cdl.devcluster.store import open_db

NS = "bench"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def configmap(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NS,
                                                                 "labels": {"app": "bench"}},
            "data": {"payload": "x" * 200, "index": name}}


class Client:
    def __init__(self, info: process.ServerInfo) -> None:
        ctx = ssl.create_default_context(cafile=str(info.ca_file)) if info.ca_file else None
        self.session = aiohttp.ClientSession(
            base_url=info.url, headers={"Authorization": f"Bearer {info.token}"},
            connector=aiohttp.TCPConnector(ssl=ctx, limit=16))
        self.base = f"/api/v1/namespaces/{NS}/configmaps"

    async def create(self, name: str) -> None:
        async with self.session.post(self.base, json=configmap(name)) as r:
            assert r.status == 201, await r.text()
            await r.read()

    async def patch(self, name: str, value: str) -> str:
        async with self.session.patch(f"{self.base}/{name}", data=json.dumps({"data": {"v": value}}),
                                      headers={"Content-Type": "application/merge-patch+json"}) as r:
            assert r.status == 200, await r.text()
            return (await r.json())["metadata"]["resourceVersion"]


async def preload(client: Client, start: int, stop: int) -> None:
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        async with sem:
            await client.create(f"cm-{i}")

    await asyncio.gather(*(one(i) for i in range(start, stop)))


async def measure_servers(clients: list[Client], stored: int, samples: int, tag: str) -> list[dict[str, list[float]]]:
    """Creates and patches alternate between the servers, sample by sample, so that a load
    change on the machine hits both alike."""
    outs: list[dict[str, list[float]]] = [{"create": [], "patch": [], "watch": []} for _ in clients]
    for i in range(samples):
        for client, out in zip(clients, outs, strict=True):
            t0 = time.perf_counter()
            await client.create(f"{tag}-{i}")
            out["create"].append(time.perf_counter() - t0)
    for i in range(samples):
        for client, out in zip(clients, outs, strict=True):
            t0 = time.perf_counter()
            await client.patch(f"cm-{(i * 7919) % stored}", f"{tag}-p{i}")
            out["patch"].append(time.perf_counter() - t0)
    for client, out in zip(clients, outs, strict=True):
        out["watch"] = await measure_watch(client, stored, samples, tag)
    return outs


async def measure_watch(client: Client, stored: int, samples: int, tag: str) -> list[float]:
    """Watch delivery: one open watch on the namespace, one PATCH at a time."""
    out: dict[str, list[float]] = {"watch": []}
    async with client.session.get(client.base, params={"watch": "true", "resourceVersion": "0",
                                                       "allowWatchBookmarks": "true"}) as stream:
        events: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()

        async def reader() -> None:
            async for line in stream.content:
                if line.strip():
                    events.put_nowait((time.perf_counter(), json.loads(line)))

        task = asyncio.create_task(reader())
        while True:  # drain the synthetic ADDED events of the initial state
            try:
                await asyncio.wait_for(events.get(), 0.5)
            except TimeoutError:
                break
        last: Any = None
        for i in range(samples):
            name = f"cm-{(i * 104729) % stored}"
            t0 = time.perf_counter()
            value = f"{tag}-w{i}"  # unique across stages: a no-op patch has no event
            rv = await client.patch(name, value)  # raises if the write failed
            while True:  # the event, stamped by the reader when it arrived (often before the reply)
                if task.done():
                    raise RuntimeError(f"the watch stream ended: {task.exception()!r}")
                try:
                    arrived, ev = await asyncio.wait_for(events.get(), 10)
                except TimeoutError:
                    raise RuntimeError(f"no event for {name} {value} (rv {rv}) in 10 s; last seen {last}")
                last = (ev["type"], ev["object"]["metadata"].get("resourceVersion"))
                obj = ev["object"]
                if ev["type"] == "MODIFIED" and obj["metadata"]["name"] == name and obj["data"].get("v") == value:
                    break
            out["watch"].append(arrived - t0)
        task.cancel()
    return out["watch"]


async def measure_sqlite(path: Path, stored: int, samples: int) -> dict[str, list[float]]:
    """The same writes straight into SQLite, with the server's schema and pragmas."""
    conn = open_db(path)
    rv = 0

    def put(name: str, obj: dict[str, Any]) -> None:
        nonlocal rv
        rv += 1
        obj["metadata"]["resourceVersion"] = str(rv)
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT OR REPLACE INTO objects (resource, namespace, name, rv, body) VALUES (?,?,?,?,?)",
                         ("/configmaps", NS, name, rv, json.dumps(obj).encode()))
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('rv', ?)", (str(rv),))

    for i in range(stored):
        put(f"cm-{i}", configmap(f"cm-{i}"))
    out: dict[str, list[float]] = {"create": [], "patch": [], "watch": []}
    for i in range(samples):
        t0 = time.perf_counter()
        put(f"new-{i}", configmap(f"new-{i}"))
        out["create"].append(time.perf_counter() - t0)

    def patch(name: str, value: str) -> dict[str, Any]:
        row = conn.execute("SELECT body FROM objects WHERE resource=? AND namespace=? AND name=?",
                           ("/configmaps", NS, name)).fetchone()
        obj = json.loads(row[0])
        obj["data"]["v"] = value
        put(name, obj)
        return obj

    for i in range(samples):
        t0 = time.perf_counter()
        patch(f"cm-{(i * 7919) % stored}", f"p{i}")
        out["patch"].append(time.perf_counter() - t0)

    async def deliver() -> None:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for i in range(samples):
            t0 = time.perf_counter()
            q.put_nowait(patch(f"cm-{(i * 104729) % stored}", f"w{i}"))
            await q.get()
            out["watch"].append(time.perf_counter() - t0)

    await deliver()
    conn.close()
    return out


Row = tuple[int, str, float, float, float, float, float]


def start(data_dir: Path, source: str | None) -> process.ServerInfo:
    """A server from this tree, or from `source`'s operator/ (first on the child's PYTHONPATH)."""
    saved = os.environ.get("PYTHONPATH")
    if source:
        os.environ["PYTHONPATH"] = str(Path(source).resolve() / "operator")
    try:
        return process.start_background(data_dir)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


async def run(sizes: list[int], samples: int, against: str = "") -> tuple[list[Row], list[Row]]:
    """The table's rows for this tree and, with `against`, for that tree (measured alongside)."""
    rows: list[Row] = []
    other: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        infos = [start(Path(tmp) / "server", None)]
        if against:
            infos.append(start(Path(tmp) / "against", against))
        clients = [Client(info) for info in infos]
        try:
            for info in infos:
                status, _ = process.request(f"{info.url}/api/v1/namespaces", info.token, "POST",
                                            {"metadata": {"name": NS}}, ca_file=info.ca_file)
                assert status == 201
            loaded = 0
            for n, size in enumerate(sizes):
                for client in clients:
                    await preload(client, loaded, size)
                loaded = size
                measured = await measure_servers(clients, size, samples, f"s{n}")
                rss = [rss_mb(info.pid) for info in infos]
                base = await measure_sqlite(Path(tmp) / f"base{n}.db", size, samples)
                for op in ("create", "patch", "watch"):
                    for out, server, mem in zip((rows, other), measured, rss, strict=False):
                        out.append((size, op, pct(server[op], 0.5), pct(server[op], 0.99), pct(base[op], 0.5),
                                    pct(base[op], 0.99), mem))
        finally:
            for client, info in zip(clients, infos, strict=True):
                await client.session.close()
                process.stop(info.data_dir)
    return rows, other


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--against", default="", help="another revision's source tree to compare with")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.perf_counter()
    rows, other = asyncio.run(run(sizes, args.samples, args.against))
    print(f"devcluster benchmark, {datetime.date.today()}, {platform.machine()} {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]}, {args.samples} samples per op, client c=1 over HTTPS")
    print(f"{'stored':>7} {'op':<7} {'p50 ms':>8} {'p99 ms':>8} {'sqlite p50':>11} {'sqlite p99':>11} "
          f"{'x p50':>7} {'x p99':>7} {'RSS MB':>7}")
    for size, op, p50, p99, b50, b99, rss in rows:
        print(f"{size:>7} {op:<7} {p50:>8.2f} {p99:>8.2f} {b50:>11.3f} {b99:>11.3f} "
              f"{p50 / b50:>7.1f} {p99 / b99:>7.1f} {rss:>7.0f}")
    if other:
        print(f"\nthis tree against {args.against} (same run, same machine)")
        print(f"{'stored':>7} {'op':<7} {'p50 ms':>8} {'there p50':>10} {'x p50':>7} {'p99 ms':>8} {'there p99':>10} "
              f"{'x p99':>7} {'RSS MB':>7} {'there RSS':>10}")
        for (size, op, p50, p99, _, _, rss), (_, _, o50, o99, _, _, o_rss) in zip(rows, other, strict=True):
            print(f"{size:>7} {op:<7} {p50:>8.2f} {o50:>10.2f} {p50 / o50:>7.2f} {p99:>8.2f} {o99:>10.2f} "
                  f"{p99 / o99:>7.2f} {rss:>7.0f} {o_rss:>10.0f}")
    print(f"(took {time.perf_counter() - started:.0f} s; median of medians {statistics.median(r[2] for r in rows):.2f} ms)")


if __name__ == "__main__":
    main()
