"""Benchmark of the operator's reaction time and footprint (issue 4; not a test).

What it measures, with N DataPipelines already present and Ready (N = 100 and 1,000 by default):

* apply -> first status write: the time from starting a create of a new DataPipeline (the real
  `kubectl apply` for every 4th sample, the Python `kubernetes` client for the others) to the
  first watch event of that object whose `.status.phase` is set. Each sample opens a watch on
  just that object (fieldSelector metadata.name, resumed from the current resourceVersion, so
  no initial list) before it creates it, and timestamps every event it gets: ADDED (the API
  server stored it), the finalizer `cdl.dev/cleanup` appearing (kopf's first write), and the
  first status phase (the reconciler's first write, `Ingesting`).
* the baseline, measured in the same run at the same N with the operator stopped: apply ->
  ADDED on the same kind of watch, i.e. the devcluster's own create -> watch-event latency. The
  ratio beside it is the operator's share. The baseline objects are deleted again (they have
  no finalizer, since no operator saw them) before the operator comes back.
* the operator process's RSS (and peak RSS) at N, the devcluster's RSS, and over an idle
  window of `--idle` seconds with nothing being created: API writes per second (the global
  resourceVersion's growth) and the CPU the operator and the devcluster use. Bulk creation
  rate and the time until all N are Ready are reported too, with the number of data runs the
  operator process started against the number of pipelines that needed one: more runs than
  pipelines means reconciles acted on a stale view and restarted runs (with a real engine, each
  one a duplicate data run).

Waits are bounded so a run stays a few minutes even when the operator falls behind: all-Ready is
awaited at most `--ready-timeout` s (the table says how many were Ready), a sample without a
status write within 30 s is a miss (it ranks above every measured sample, so a p50 or p99 that
lands on it prints as >30000), and each phase stops taking samples after `--phase-seconds`.

How the operator runs: as its own process, so its RSS is its own and its CPU is separable from
the benchmark's. `cdl operator run` would drive the real local data engine (real work per
pipeline), so instead this file re-executes itself as `python bench/operator_bench.py
--serve-operator ...`, which calls `cdl.controller.operator.run()` exactly as `cdl operator run`
does (same default configuration: poll_seconds 3.0, INFO logging to a log file, kopf settings
from make_registry) with one override: the data engine is the tests' ScriptedDataEngine
(tests/integration/operator_engines.py) in its reporting mode: it costs nothing, finishes a run
in its own thread right after the start and reports that (as the local engines report their
runs), so every bulk pipeline becomes Ready after two reconciles and then stays Ready. The
measured cost is therefore kopf + controller + reconciler + API server, not engine work.
(Before issue 17 the scripted engine finished a run on its second poll; a baseline run of the
old code uses the old file.) `--shards N` starts N operator processes that share the
DataPipelines through their Leases (CPU and RSS are then their sums).

The devcluster is a background server process (`process.start_background`) with the CRDs of
`crds/` and `--access-log` on (the idle window counts requests from it, in both phases, so the
ratio is fair); the benchmark talks to it over HTTPS with aiohttp (watches, lists) and the Python
client (creates).

Usage: .venv/bin/python bench/operator_bench.py [--sizes 100,1000] [--samples 40] [--idle 10]
       [--poll-seconds 3] [--ready-timeout 90] [--phase-seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import platform
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
NS = "bench"
LIVE_NS = "bench-live"  # another team's namespace: samples taken while the bulk converges
G, V, PLURAL = "cdl.dev", "v1alpha1", "datapipelines"
FINALIZER = "cdl.dev/cleanup"
KUBECTL_EVERY = 4  # every 4th sample goes through kubectl apply
SAMPLE_TIMEOUT = 30.0
WORKERS: int | None = None  # --workers: the operator's DataPipeline workers (default: its configuration's)  # a sample with no status write by then counts as missed


def pipeline(name: str, namespace: str = NS) -> dict[str, Any]:
    return {"apiVersion": f"{G}/{V}", "kind": "DataPipeline",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": "bench"}},
            "spec": {"source": {"uri": f"file:///data/{name}"}, "split": {"test": 0.2}}}


# --- the operator process ------------------------------------------------------------------------

def serve_operator(kubeconfig: str, workdir: Path, poll_seconds: float | None, shard: str | None = None,
                   workers: int | None = None) -> None:
    """The operator as `cdl operator run` starts it, with the scripted (free) data engine."""
    sys.path.insert(0, str(ROOT))
    from cdl.config import OperatorConfig
    from cdl.controller.operator import run
    from tests.integration.operator_engines import ScriptedDataEngine

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = OperatorConfig.load(env={})
    config.data_dir = workdir / "state"
    config.base_dir = ROOT
    if poll_seconds:
        config.poll_seconds = poll_seconds
    if workers:
        config.workers = {"DataPipeline": workers}
    if shard:  # one of --shards replicas: Leases in the bench namespace
        config.shard_identity, config.shard_namespace, config.shard_group = shard, NS, "bench"
    overrides = {"data": {"local": ScriptedDataEngine(workdir / "outputs", reports=True)}}
    ready = threading.Event()

    def announce() -> None:
        ready.wait()
        (workdir / "ready").write_text(str(os.getpid()))

    threading.Thread(target=announce, daemon=True).start()
    run(config, kubeconfig=kubeconfig, overrides=overrides, ready_flag=ready)


class OperatorProcess:
    """`--serve-operator` in its own process group; ready when it has written `ready`."""

    def __init__(self, kubeconfig: Path, workdir: Path, poll_seconds: float | None, shard: str | None = None) -> None:
        self.kubeconfig, self.workdir, self.poll_seconds, self.shard = kubeconfig, workdir, poll_seconds, shard
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "operator.log"

    def start(self, timeout: float = 60.0) -> float:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "ready").unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-operator", "--kubeconfig",
               str(self.kubeconfig), "--workdir", str(self.workdir)]
        if self.poll_seconds:
            cmd += ["--poll-seconds", str(self.poll_seconds)]
        if self.shard:
            cmd += ["--shard", self.shard]
        if WORKERS:
            cmd += ["--workers", str(WORKERS)]
        started = time.perf_counter()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=ROOT)
        deadline = time.monotonic() + timeout
        delay = 0.02
        while not (self.workdir / "ready").exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.proc.returncode}; see {self.log}:\n"
                                   + "\n".join(self.log.read_text(errors="replace").splitlines()[-20:]))
            if time.monotonic() > deadline:
                raise RuntimeError(f"the operator was not ready within {timeout:.0f} s; see {self.log}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)
        return time.perf_counter() - started

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


class OperatorGroup:
    """One operator process, or `--shards` of them sharing the DataPipelines through their Leases;
    CPU and RSS are their sums."""

    def __init__(self, kubeconfig: Path, workdir: Path, poll_seconds: float | None, shards: int) -> None:
        if shards > 1:
            self.members = [OperatorProcess(kubeconfig, workdir / f"shard-{i}", poll_seconds, shard=f"shard-{i}")
                            for i in range(shards)]
        else:
            self.members = [OperatorProcess(kubeconfig, workdir, poll_seconds)]
        self.log = self.members[0].log

    def start(self) -> float:
        took = max(m.start() for m in self.members)
        if len(self.members) > 1:  # let every replica count as a member (two renew periods) first
            time.sleep(8)
            took += 8
        return took

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    @property
    def pids(self) -> list[int]:
        return [m.pid for m in self.members]

    def cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids)

    def mb(self, field_name: str) -> float:
        return sum(proc_mb(p, field_name) for p in self.pids)


# --- measurements --------------------------------------------------------------------------------

def pct(values: list[float | None], q: float) -> float:
    """Nearest-rank percentile in milliseconds (q=0.99 of fewer than 100 samples is the maximum);
    a missing value (None: never seen) ranks above every measured one, as infinity."""
    ordered = sorted(float("inf") if v is None else v for v in values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def ms(value: float, width: int) -> str:
    """Milliseconds for the table; a percentile that landed on a missed sample shows as >timeout."""
    if value == float("inf"):
        return f">{SAMPLE_TIMEOUT * 1000:.0f}".rjust(width)
    return "-".rjust(width) if value != value else f"{value:>{width}.0f}"


def ratio(a: float, b: float, width: int) -> str:
    if a == float("inf"):
        return "inf".rjust(width)
    return "-".rjust(width) if a != a or b != b or not b else f"{a / b:>{width}.1f}"


def proc_mb(pid: int, field_name: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, from /proc (clock ticks)."""
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    via: str
    created: float = 0.0  # the create call returned (kubectl: the process exited)
    added: float | None = None
    finalizer: float | None = None
    status: float | None = None
    phase: str = ""


@dataclass
class SizeResult:
    size: int
    bulk_rate: float = 0.0  # creates per second
    ready_after: float = 0.0  # seconds from the first bulk create until all were Ready (or the wait ended)
    ready: int = 0  # DataPipelines Ready when the wait ended
    total: int = 0  # DataPipelines present
    created: int = 0  # DataPipelines this operator process had to run (bulk plus earlier samples)
    runs_started: int = 0  # data runs this operator process started (the scripted engine numbers them)
    operator_start: float = 0.0
    idle_writes: float = 0.0
    idle_requests: float = 0.0
    idle_patches: float = 0.0
    idle_operator_cpu: float = 0.0
    idle_server_cpu: float = 0.0
    bulk_operator_cpu: float = 0.0  # cores the operator used from the first bulk create until all were Ready
    bulk_server_cpu: float = 0.0  # the same for the API server
    bulk_client_cpu: float = 0.0  # the same for this benchmark process (the creates, the samples' watches)
    settle: float = 0.0  # seconds from the Ready wait's end until the operator stopped writing (cap 120)
    idle_breakdown: str = ""  # the most frequent requests of the idle window (method, last path part, code)
    operator_rss: float = 0.0
    operator_peak: float = 0.0
    server_rss: float = 0.0
    with_operator: list[Sample] = field(default_factory=list)
    during: list[Sample] = field(default_factory=list)  # in LIVE_NS while the bulk was created and converged
    baseline: list[Sample] = field(default_factory=list)


class Bench:
    def __init__(self, info: Any, workdir: Path, poll_seconds: float | None, shards: int = 1) -> None:
        from kubernetes import client, config

        self.info = info
        ctx = ssl.create_default_context(cafile=str(info.ca_file)) if info.ca_file else None
        self.session = aiohttp.ClientSession(
            base_url=info.url, headers={"Authorization": f"Bearer {info.token}"},
            connector=aiohttp.TCPConnector(ssl=ctx, limit=32))
        self.api_client = config.new_client_from_config(config_file=str(info.kubeconfig))
        self.custom = client.CustomObjectsApi(self.api_client)
        self.core = client.CoreV1Api(self.api_client)
        self.kubectl_cache = workdir / "kubecache"
        self.operator = OperatorGroup(info.kubeconfig, workdir / "operator", poll_seconds, shards)
        self.pool = ThreadPoolExecutor(4)  # bulk creates and deletes
        self.sample_pool = ThreadPoolExecutor(2)  # samples never queue behind the bulk's creates
        self.base = f"/apis/{G}/{V}/namespaces/{NS}/{PLURAL}"
        self.serial = 0

    async def close(self) -> None:
        self.operator.stop()
        await self.session.close()
        self.api_client.close()
        self.pool.shutdown()
        self.sample_pool.shutdown()

    # -- API helpers
    async def rv(self) -> int:
        async with self.session.get(f"/api/v1/namespaces/{NS}/configmaps", params={"limit": "1"}) as r:
            assert r.status == 200, await r.text()
            return int((await r.json())["metadata"]["resourceVersion"])

    async def phases(self) -> dict[str, str]:
        return (await self.listed_phases())[0]

    async def listed_phases(self) -> tuple[dict[str, str], str]:
        """Every DataPipeline's phase and the list's resourceVersion, listed in pages of 500 (one
        list of 10,000 objects would hold the API server's event loop for a few hundred ms, a
        stall the samples would show)."""
        out: dict[str, str] = {}
        token = ""
        while True:
            params = {"limit": "500", **({"continue": token} if token else {})}
            async with self.session.get(self.base, params=params) as r:
                assert r.status == 200, await r.text()
                page = await r.json()
            out.update({o["metadata"]["name"]: (o.get("status") or {}).get("phase", "") for o in page["items"]})
            token = page["metadata"].get("continue") or ""
            if not token:
                return out, page["metadata"]["resourceVersion"]

    def create_sync(self, name: str, namespace: str = NS) -> None:
        self.custom.create_namespaced_custom_object(G, V, namespace, PLURAL, pipeline(name, namespace))

    def delete_sync(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(G, V, NS, PLURAL, name)

    async def kubectl(self, *args: str, stdin: bytes | None = None) -> None:
        proc = await asyncio.create_subprocess_exec(
            str(KUBECTL), "--kubeconfig", str(self.info.kubeconfig), "--cache-dir", str(self.kubectl_cache), *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)
        out, err = await proc.communicate(stdin)
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} exited {proc.returncode}: {err.decode()}")

    # -- phases of the run
    async def bulk(self, start: int, stop: int) -> float:
        """Create bulk-<start..stop-1> with the Python client (4 threads); returns creates/s."""
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        await asyncio.gather(*(loop.run_in_executor(self.pool, self.create_sync, f"bulk-{i}")
                               for i in range(start, stop)))
        return (stop - start) / (time.perf_counter() - t0)

    async def wait_ready(self, timeout: float) -> tuple[int, int]:
        """Wait until every DataPipeline is Ready, at most `timeout`; returns (ready, total). One
        list, then a watch from it (listing 30,000 objects every few seconds would be most of
        the API server's work and inflate every figure taken meanwhile)."""
        deadline = time.monotonic() + timeout
        phases, rv = await self.listed_phases()
        unready = sum(1 for p in phases.values() if p != "Ready")
        while unready and time.monotonic() < deadline:
            params = {"watch": "true", "resourceVersion": rv, "allowWatchBookmarks": "true",
                      "timeoutSeconds": str(max(1, int(min(60, deadline - time.monotonic()))))}
            async with self.session.get(self.base, params=params, timeout=aiohttp.ClientTimeout(total=None)) as stream:
                if stream.status != 200:
                    phases, rv = await self.listed_phases()
                    unready = sum(1 for p in phases.values() if p != "Ready")
                    continue
                async for line in stream.content:
                    if not line.strip():
                        continue
                    ev = json.loads(line)
                    obj = ev.get("object") or {}
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if ev.get("type") == "ERROR":  # expired: list again
                        phases, rv = await self.listed_phases()
                        unready = sum(1 for p in phases.values() if p != "Ready")
                        break
                    if ev.get("type") == "BOOKMARK":
                        continue
                    name = obj["metadata"]["name"]
                    was = phases.pop(name, None)
                    if ev.get("type") != "DELETED":
                        phases[name] = (obj.get("status") or {}).get("phase", "")
                    unready += (phases.get(name, "Ready") != "Ready") - (was is not None and was != "Ready")
                    if unready == 0:
                        break
                    if time.monotonic() > deadline:
                        break
        return sum(1 for p in phases.values() if p == "Ready"), len(phases)

    async def runs_started(self) -> int:
        """How many data runs this operator process has started: ScriptedDataEngine names a run
        `run-<name>-<n>` with n its running count of start_run calls, so the largest n is that."""
        async with self.session.get(self.base) as r:
            items = (await r.json())["items"]
        ids = [((o.get("status") or {}).get("engineRef") or {}).get("id", "") for o in items]
        return max((int(i.rsplit("-", 1)[1]) for i in ids if i.startswith("run-")), default=0)

    async def settle(self, quiet: float = 3.0, cap: float = 120.0) -> float:
        """Wait until the operator has written nothing (no PATCH, POST) for `quiet` seconds, at
        most `cap`: what is still queued (Events, follow-ups) is not idleness. Returns the wait."""
        log = self.info.log_file
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < cap:
            offset = log.stat().st_size
            await asyncio.sleep(quiet)
            with open(log, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            if '"PATCH ' not in text and '"POST ' not in text:
                break
        return time.perf_counter() - t0

    async def idle_window(self, seconds: float, result: SizeResult) -> None:
        """API writes/s and CPU of both processes while nothing is being created."""
        log = self.info.log_file
        offset = log.stat().st_size
        rv0, op0, sv0 = await self.rv(), self.operator.cpu(), cpu_seconds(self.info.pid)
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        rv1, op1, sv1 = await self.rv(), self.operator.cpu(), cpu_seconds(self.info.pid)
        elapsed = time.perf_counter() - t0
        with open(log, "rb") as f:
            f.seek(offset)
            requests = [ln for ln in f.read().decode(errors="replace").splitlines() if '" 2' in ln or '" 4' in ln]
        requests = [ln for ln in requests if '"GET ' in ln or '"PATCH ' in ln or '"POST ' in ln
                    or '"PUT ' in ln or '"DELETE ' in ln]
        result.idle_requests = (len(requests) - 2) / elapsed  # less our own two rv reads
        result.idle_patches = sum(1 for ln in requests if '"PATCH ' in ln) / elapsed
        kinds: dict[str, int] = {}
        for ln in requests:
            verb = ln.split('"', 2)[1].split(" ")[:2]
            code = ln.split('" ', 1)[1].split(" ")[0] if '" ' in ln else "?"
            what = f"{verb[0]} {verb[1].split('?')[0].rsplit('/', 2)[-1] if len(verb) > 1 else ''} {code}"
            kinds[what] = kinds.get(what, 0) + 1
        result.idle_breakdown = ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])[:6])
        result.idle_writes = (rv1 - rv0) / elapsed
        result.idle_operator_cpu = (op1 - op0) / elapsed
        result.idle_server_cpu = (sv1 - sv0) / elapsed

    async def sample(self, via: str, want_status: bool, namespace: str = NS) -> tuple[str, Sample]:
        """Create one DataPipeline, timing the events of a watch opened on it beforehand."""
        self.serial += 1
        name = f"sample-{self.serial}"
        s = Sample(via)
        rv = await self.rv()
        params = {"watch": "true", "resourceVersion": str(rv), "timeoutSeconds": str(int(SAMPLE_TIMEOUT) + 10),
                  "fieldSelector": f"metadata.name={name}"}
        async with self.session.get(f"/apis/{G}/{V}/namespaces/{namespace}/{PLURAL}", params=params,
                                    timeout=aiohttp.ClientTimeout(total=None)) as stream:
            assert stream.status == 200, await stream.text()
            done = asyncio.Event()

            async def reader() -> None:
                async for line in stream.content:
                    if not line.strip():
                        continue
                    now = time.perf_counter()
                    ev = json.loads(line)
                    obj = ev.get("object") or {}
                    if ev.get("type") == "ADDED" and s.added is None:
                        s.added = now - t0
                    if s.finalizer is None and FINALIZER in (obj.get("metadata") or {}).get("finalizers", []):
                        s.finalizer = now - t0
                    phase = (obj.get("status") or {}).get("phase")
                    if phase and s.status is None:
                        s.status, s.phase = now - t0, phase
                    if s.added is not None and (not want_status or s.status is not None):
                        done.set()
                        return

            t0 = time.perf_counter()
            task = asyncio.create_task(reader())
            if via == "kubectl":
                await self.kubectl("apply", "-f", "-", stdin=json.dumps(pipeline(name, namespace)).encode())
            else:
                await asyncio.get_running_loop().run_in_executor(self.sample_pool, self.create_sync, name, namespace)
            s.created = time.perf_counter() - t0
            try:
                await asyncio.wait_for(done.wait(), SAMPLE_TIMEOUT)
            except TimeoutError:
                pass  # counted as missing below
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return name, s

    async def samples_until(self, stop: asyncio.Event, every: float = 1.0) -> list[Sample]:
        """Samples in another namespace, one per `every` seconds, until `stop` (the bulk converging)."""
        out: list[Sample] = []
        while not stop.is_set():
            _, s = await self.sample("kubectl" if len(out) % KUBECTL_EVERY == 0 else "python", True, LIVE_NS)
            out.append(s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
        return out

    async def samples(self, n: int, want_status: bool, budget: float) -> tuple[list[str], list[Sample]]:
        """Up to n samples, one at a time; stops early once `budget` seconds have gone."""
        names: list[str] = []
        out: list[Sample] = []
        deadline = time.monotonic() + budget
        for i in range(n):
            if time.monotonic() > deadline:
                break
            name, s = await self.sample("kubectl" if i % KUBECTL_EVERY == 0 else "python", want_status)
            names.append(name)
            out.append(s)
        return names, out


def progress(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def run(sizes: list[int], samples: int, idle: float, poll_seconds: float | None, workdir: Path,
              ready_timeout: float, phase_seconds: float, log_dir: Path | None = None,
              shards: int = 1) -> list[SizeResult]:
    from kubernetes import client

    from cdl.devcluster import process

    info = process.start_background(workdir / "devcluster", crds_dir=ROOT / "crds", extra_args=["--access-log"])
    bench = Bench(info, workdir, poll_seconds, shards)
    results: list[SizeResult] = []
    try:
        for ns in (NS, LIVE_NS):
            bench.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        await bench.kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.{G}", "--timeout=30s")
        await bench.kubectl("get", PLURAL, "-n", NS)  # warms kubectl's discovery cache
        present = 0
        for size in sizes:
            r = SizeResult(size)
            unrun = sum(1 for p in (await bench.phases()).values() if p != "Ready")
            r.operator_start = bench.operator.start()
            progress(f"{size}: operator up in {r.operator_start:.1f} s; creating {size - present} DataPipelines")
            t0 = time.perf_counter()
            cpu0 = bench.operator.cpu(), cpu_seconds(info.pid), time.process_time()
            converged = asyncio.Event()
            during = asyncio.create_task(bench.samples_until(converged))
            if size > present:
                r.bulk_rate = await bench.bulk(present, size)
            r.created = unrun + max(0, size - present)
            # every DataPipeline present (earlier samples included) should be Ready before measuring
            r.ready, r.total = await bench.wait_ready(ready_timeout)
            r.ready_after = time.perf_counter() - t0
            r.bulk_operator_cpu = (bench.operator.cpu() - cpu0[0]) / r.ready_after
            r.bulk_server_cpu = (cpu_seconds(info.pid) - cpu0[1]) / r.ready_after
            r.bulk_client_cpu = (time.process_time() - cpu0[2]) / r.ready_after
            converged.set()
            r.during = await during
            r.created += len(r.during)  # each of them needed a run too
            r.settle = await bench.settle()
            progress(f"{size}: {r.ready}/{r.total} Ready after {r.ready_after:.0f} s (CPU meanwhile: operator "
                     f"{r.bulk_operator_cpu:.0%}, API server {r.bulk_server_cpu:.0%}, benchmark "
                     f"{r.bulk_client_cpu:.0%} of a core); writes stopped {r.settle:.0f} s later; idle window {idle:g} s")
            await bench.idle_window(idle, r)
            r.runs_started = await bench.runs_started()
            if r.idle_breakdown:
                progress(f"{size}: idle requests: {r.idle_breakdown}")
            progress(f"{size}: sampling apply -> status with the operator")
            _, r.with_operator = await bench.samples(samples, want_status=True, budget=phase_seconds)
            r.operator_rss = bench.operator.mb("VmRSS")
            r.operator_peak = bench.operator.mb("VmHWM")
            r.server_rss = proc_mb(info.pid, "VmRSS")
            bench.operator.stop()
            progress(f"{size}: operator stopped; sampling the baseline (apply -> ADDED)")
            names, r.baseline = await bench.samples(samples, want_status=False, budget=phase_seconds)
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(bench.pool, bench.delete_sync, n) for n in names))
            present = max(present, size)
            results.append(r)
    finally:
        await bench.close()
        process.stop(info.data_dir)
        if log_dir is not None:  # the operator's and the devcluster's logs, for a look afterwards
            log_dir.mkdir(parents=True, exist_ok=True)
            for i, m in enumerate(bench.operator.members):
                if m.log.exists():
                    shutil.copy(m.log, log_dir / f"operator-{i}.log")
            if info.log_file and Path(info.log_file).exists():
                shutil.copy(info.log_file, log_dir / Path(info.log_file).name)
    return results


def render(results: list[SizeResult], samples: int, idle: float, poll: float, elapsed: float, load: str,
           shards: int = 1) -> str:
    import kopf

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    lines = [
        f"operator benchmark, {datetime.date.today()}, {platform.machine()} {os.cpu_count()} cores ({cpu}), "
        f"Python {sys.version.split()[0]}, kopf {kopf.__version__ if hasattr(kopf, '__version__') else '?'}, "
        f"poll_seconds {poll:g}, operator processes (shards) {shards}, DataPipeline workers {WORKERS or 'default'}, "
        f"load average at start {load}, at end "
        + " ".join(f"{x:.1f}" for x in os.getloadavg()),
        f"{samples} samples per size and phase, every {KUBECTL_EVERY}th through kubectl apply; p99 of fewer "
        "than 100 samples is the maximum; times in ms",
        "",
        "apply -> first status write (operator running) vs apply -> ADDED (operator stopped: baseline)",
        f"{'present':>7} {'client':<7} {'n':>3} {'status p50':>10} {'p99':>7} {'base p50':>9} {'p99':>7} "
        f"{'x p50':>6} {'x p99':>6} | with operator, p50: {'ADDED':>6} {'+final.':>7} {'+status':>7} {'miss':>4}",
    ]
    for r in results:
        for via in ("python", "kubectl"):
            op = [s for s in r.with_operator if s.via == via]
            base = [s for s in r.baseline if s.via == via]
            st = [s.status for s in op]  # a miss counts as slower than every measured sample
            bs = [s.added for s in base]
            added = [s.added for s in op if s.added is not None]
            to_fin = [s.finalizer - s.added for s in op if s.finalizer is not None and s.added is not None]
            to_st = [s.status - (s.finalizer if s.finalizer is not None else s.added) for s in op
                     if s.status is not None and s.added is not None]
            miss = sum(1 for s in op if s.status is None) + sum(1 for s in base if s.added is None)
            p50, p99, b50, b99 = pct(st, .5), pct(st, .99), pct(bs, .5), pct(bs, .99)
            lines.append(f"{r.size:>7} {via:<7} {len(op):>3} {ms(p50, 10)} {ms(p99, 7)} {ms(b50, 9)} {ms(b99, 7)} "
                         f"{ratio(p50, b50, 6)} {ratio(p99, b99, 6)} | {'':>20}{ms(pct(added, .5), 6)} "
                         f"{ms(pct(to_fin, .5), 7)} {ms(pct(to_st, .5), 7)} {miss:>4}")
    lines += [
        "",
        f"while the bulk is created and converges: apply -> first status write in another namespace ({LIVE_NS}),",
        "one sample a second; CPU used meanwhile (cores) by the operator, the API server and this benchmark",
        f"{'present':>7} {'client':<7} {'n':>4} {'status p50':>10} {'p99':>7} {'max':>7} {'miss':>4} "
        f"{'op CPU':>7} {'srv CPU':>7} {'bench CPU':>9} | p99 of: {'ADDED':>6} {'+final.':>7} {'+status':>7}",
    ]
    for r in results:
        for via in ("python", "kubectl"):
            during = [s for s in r.during if s.via == via]
            st = [s.status for s in during]
            top = max((float("inf") if v is None else v for v in st), default=float("nan")) * 1000
            added = [s.added for s in during if s.added is not None]
            to_fin = [s.finalizer - s.added for s in during if s.finalizer is not None and s.added is not None]
            to_st = [s.status - (s.finalizer if s.finalizer is not None else s.added) for s in during
                     if s.status is not None and s.added is not None]
            lines.append(f"{r.size:>7} {via:<7} {len(st):>4} {ms(pct(st, .5), 10)} {ms(pct(st, .99), 7)} "
                         f"{ms(top, 7)} {sum(1 for v in st if v is None):>4} {r.bulk_operator_cpu:>7.0%} "
                         f"{r.bulk_server_cpu:>7.0%} {r.bulk_client_cpu:>9.0%} | {'':>8}{ms(pct(added, .99), 6)} "
                         f"{ms(pct(to_fin, .99), 7)} {ms(pct(to_st, .99), 7)}")
    lines += [
        "",
        "after the bulk create: Ready = Ready/present when the wait ended ('after s'); runs = data runs this",
        "operator process started / DataPipelines it had to run (above 1 each: runs restarted); 'quiet s' =",
        "until the operator's writes (Events, patches) stopped for 3 s, at most 120 s; then an idle",
        f"window of {idle:g} s with nothing created: API requests/s and PATCH/s (devcluster access log, less the",
        "benchmark's own), writes/s (resourceVersion growth), CPU; RSS after the samples",
        f"{'present':>7} {'bulk/s':>7} {'Ready':>11} {'after s':>7} {'quiet s':>7} {'runs':>9} {'op start s':>10} "
        f"{'req/s':>6} "
        f"{'PATCH/s':>7} "
        f"{'writes/s':>8} {'op CPU':>7} "
        f"{'srv CPU':>7} {'op RSS MB':>9} {'op peak MB':>10} {'srv RSS MB':>10}",
    ]
    for r in results:
        lines.append(f"{r.size:>7} {r.bulk_rate:>7.0f} {f'{r.ready}/{r.total}':>11} {r.ready_after:>7.0f} "
                     f"{r.settle:>7.0f} "
                     f"{f'{r.runs_started}/{r.created}':>9} {r.operator_start:>10.1f} {r.idle_requests:>6.1f} {r.idle_patches:>7.1f} {r.idle_writes:>8.1f} {r.idle_operator_cpu:>7.0%} {r.idle_server_cpu:>7.0%} "
                     f"{r.operator_rss:>9.0f} {r.operator_peak:>10.0f} {r.server_rss:>10.0f}")
    lines.append(f"(took {elapsed:.0f} s; CPU in cores: 100% = one core busy; 'miss' = samples with no status "
                 f"write within {SAMPLE_TIMEOUT:.0f} s; +final. = ADDED -> finalizer, +status = finalizer -> status)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000", help="DataPipelines present, ascending")
    parser.add_argument("--samples", type=int, default=40, help="samples per size, with and without operator")
    parser.add_argument("--idle", type=float, default=10.0, help="idle window in seconds")
    parser.add_argument("--ready-timeout", type=float, default=90.0, help="longest wait for all to be Ready")
    parser.add_argument("--phase-seconds", type=float, default=60.0, help="time cap for each phase's samples")
    parser.add_argument("--poll-seconds", type=float, default=None, help="operator poll_seconds (default: config's)")
    parser.add_argument("--log-dir", type=Path, default=None, help="copy the operator and devcluster logs here")
    parser.add_argument("--shards", type=int, default=1, help="operator processes sharing the resources")
    parser.add_argument("--shard", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=None, help="the operator's DataPipeline workers")
    parser.add_argument("--serve-operator", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kubeconfig", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_operator:
        serve_operator(args.kubeconfig, Path(args.workdir), args.poll_seconds, args.shard, args.workers)
        return
    global WORKERS
    WORKERS = args.workers
    from cdl.config import OperatorConfig

    sizes = sorted(int(s) for s in args.sizes.split(","))
    poll = args.poll_seconds or OperatorConfig.load(env={}).poll_seconds
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cdl-opbench-") as tmp:
        results = asyncio.run(run(sizes, args.samples, args.idle, args.poll_seconds, Path(tmp),
                                      args.ready_timeout, args.phase_seconds, args.log_dir, args.shards))
    print(render(results, args.samples, args.idle, poll, time.perf_counter() - started, load, args.shards))


if __name__ == "__main__":
    main()
