"""Serving latency and throughput: the cdl router and seldon-core microservice against the floor.

The model is the anchor of design/environment.md: a 5,000-feature MLP (torch), one example per
request as JSON (about 25 KB). Measured in one run, client and servers sharing the machine:

- in-process `CdlPredictor.predict` (the floor: no HTTP, no JSON);
- seldon-core-microservice directly (`--workers 2 --threads 1 --grpc-workers 0`), as the local
  engine starts it;
- the cdl router in front of it, Scoring Data off, then on (rows into an embedded PostgreSQL);
- MLServer 1.7.1 serving the same predictor through a custom runtime (V2 protocol), when
  `.venvs/mlserver` exists (`python -m venv .venvs/mlserver && .venvs/mlserver/bin/pip install
  mlserver==1.7.1 torch==2.13.0`).

Usage: .venv/bin/python bench/serving_bench.py [--requests 2000] [--concurrency 8]
Prints a table of p50/p99 latency (ms) and requests/s at concurrency 1 and N, with the ratio of
each server's c=1 p50 to the microservice's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
FEATURES = 5000
HIDDEN = 128
CLASSES = ["business", "entertainment", "politics", "sport", "tech"]

PREDICTOR_SOURCE = '''
"""The benchmark's predictor: a 5,000-feature MLP (torch), one thread."""
import json
from pathlib import Path


class BenchPredictor:
    input_type = "tensor"
    input_shape = (5000,)

    def load(self, artifact_dir):
        import torch

        torch.set_num_threads(1)
        ckpt = Path(artifact_dir) / "checkpoint"
        self.class_names = json.loads((ckpt / "class_names.json").read_text())
        self.torch = torch
        self.net = torch.nn.Sequential(torch.nn.Linear(5000, 128), torch.nn.ReLU(),
                                       torch.nn.Linear(128, len(self.class_names)))
        self.net.load_state_dict(torch.load(ckpt / "state_dict.pth", weights_only=True)["models_state_dict"][0])
        self.net.eval()

    def predict(self, X):
        with self.torch.no_grad():
            logits = self.net(self.torch.as_tensor(X, dtype=self.torch.float32))
        return [self.class_names[i] for i in logits.argmax(dim=1).tolist()]
'''

MLSERVER_RUNTIME = '''
"""MLServer custom runtime around the same predictor class (V2 protocol)."""
import sys

from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse


class CdlRuntime(MLModel):
    async def load(self) -> bool:
        package = self.settings.parameters.uri
        sys.path.insert(0, package + "/model")
        from serve import BenchPredictor

        self.predictor = BenchPredictor()
        self.predictor.load(package)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        labels = self.predictor.predict(x)
        return InferenceResponse(model_name=self.name, outputs=[StringCodec.encode_output("label", labels)])
'''


@dataclass
class Result:
    name: str
    c1: tuple[float, float, float] | None = None  # p50, p99, req/s
    cn: tuple[float, float, float] | None = None
    processes: int | None = None
    pss_mb: float | None = None
    note: str = ""


def build_package(dest: Path) -> Path:
    import torch

    from cdl.runtime import package

    torch.manual_seed(0)
    root = dest / "bench-1"
    (root / "model").mkdir(parents=True)
    (root / "checkpoint").mkdir()
    (root / "model" / "serve.py").write_text(PREDICTOR_SOURCE)
    net = torch.nn.Sequential(torch.nn.Linear(FEATURES, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, len(CLASSES)))
    torch.save({"models_state_dict": [net.state_dict()]}, root / "checkpoint" / "state_dict.pth")
    (root / "checkpoint" / "class_names.json").write_text(json.dumps(CLASSES))
    (root / "requirements.txt").write_text("torch==2.13.0\n")
    package.write_manifest(root, {"name": "bench", "version": 1, "framework": "pytorch",
                                  "entrypoints": {"predictor": "serve:BenchPredictor"}})
    sha, _ = package.pack(root, dest / "bench-1.tar.gz")
    return dest / "bench-1.tar.gz"


def rows(n: int, seed: int = 0) -> list[list[float]]:
    """Bag-of-words-like rows: 60 % zeros, the rest weights with 3 decimals (about 23 KB as JSON)."""
    rng = np.random.default_rng(seed)
    values = np.round(rng.random((n, FEATURES)), 3) * (rng.random((n, FEATURES)) > 0.6)
    return [[int(v) if v == 0 else float(v) for v in r] for r in values]


def seldon_body(row: list[float]) -> bytes:
    return json.dumps({"data": {"ndarray": [row]}}).encode()


def v2_body(row: list[float]) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": [1, FEATURES], "datatype": "FP32", "data": row}]}).encode()


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


async def load(url: str, bodies: list[bytes], concurrency: int, total: int) -> tuple[float, float, float]:
    """`total` POSTs with `concurrency` clients on one keep-alive session; (p50, p99, req/s)."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for i in counter:
            body = bodies[i % len(bodies)]
            start = time.perf_counter()
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
            latencies.append((time.perf_counter() - start) * 1000.0)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        for body in bodies[:20]:  # warm up
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{url}: {errors} of {total} requests failed")
    p50, p99 = percentiles(latencies)
    return p50, p99, total / elapsed


def measure(url: str, bodies: list[bytes], concurrency: int, requests: int) -> tuple[tuple[float, float, float],
                                                                                      tuple[float, float, float]]:
    c1 = asyncio.run(load(url, bodies, 1, max(200, requests // 4)))
    cn = asyncio.run(load(url, bodies, concurrency, requests))
    return c1, cn


def group_footprint(pid: int) -> tuple[int, float]:
    """Processes and PSS (MB) of a process and its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0.0
    pss = 0
    for p in procs:
        try:
            pss += p.memory_full_info().pss
        except psutil.Error:
            pass
    return len(procs), pss / 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_process(package_dir: Path, calls: int) -> Result:
    from cdl.runtime.serving import CdlPredictor

    model = CdlPredictor(model_package=str(package_dir))
    model.load()
    x = np.asarray(rows(50, seed=1), dtype=np.float64)
    for i in range(50):
        model.predict(x[i:i + 1])
    raw_ms, wrapped_ms = [], []
    for i in range(calls):
        one = x[i % 50:i % 50 + 1]
        start = time.perf_counter()
        model.model.predict(one.tolist())
        raw_ms.append((time.perf_counter() - start) * 1000.0)
        start = time.perf_counter()
        model.predict(one)
        wrapped_ms.append((time.perf_counter() - start) * 1000.0)
    raw = percentiles(raw_ms)
    wrapped = percentiles(wrapped_ms)
    return Result("in-process CdlPredictor.predict (floor)", c1=(wrapped[0], wrapped[1], 1000.0 / np.mean(wrapped_ms)),
                  note=f"bare predictor {raw[0]:.3f} ms p50; wrapper checks add {wrapped[0] - raw[0]:.3f} ms")


def mlserver(package_dir: Path, work: Path, bodies: list[bytes], concurrency: int, requests: int) -> Result:
    venv = ROOT / ".venvs" / "mlserver"
    binary = venv / "bin" / "mlserver"
    if not binary.exists():
        return Result("MLServer 1.7.1 custom runtime", note=f"skipped: {binary} not installed")
    models = work / "mlserver"
    (models / "bench").mkdir(parents=True)
    (models / "bench" / "cdl_runtime.py").write_text(MLSERVER_RUNTIME)
    (models / "bench" / "model-settings.json").write_text(json.dumps({
        "name": "bench", "implementation": "cdl_runtime.CdlRuntime", "parameters": {"uri": str(package_dir)}}))
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (models / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
        "parallel_workers": 0, "debug": False}))
    log = open(work / "mlserver.log", "wb")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", OMP_NUM_THREADS="1", PYTHONPATH=str(models / "bench"))
    proc = subprocess.Popen([str(binary), "start", str(models)], cwd=models, stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlserver exited: {(work / 'mlserver.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/v2/models/bench/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("mlserver not ready in 120 s")
            time.sleep(0.2)
        c1, cn = measure(f"{base}/v2/models/bench/infer", bodies, concurrency, requests)
        n, pss = group_footprint(proc.pid)
        return Result("MLServer 1.7.1 custom runtime (V2)", c1, cn, n, pss)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrent run")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    from cdl.engines.base import ResourceKey, ServedModel, ServingRequest
    from cdl.engines.serving.local import LocalServingEngine
    from cdl.engines.serving.local.venv import ensure_seldon_venv
    from cdl.runtime import package as cdl_package
    from cdl.stores.embedded_postgres import EmbeddedPostgres
    from cdl.stores.postgres import Database

    work = Path(tempfile.mkdtemp(prefix="cdl-serving-bench-"))
    results: list[Result] = []
    engine = pg = None
    try:
        archive = build_package(work)
        sha = cdl_package.file_sha256(archive)
        unpacked = cdl_package.unpack(archive, work / "unpacked")
        data = rows(64)
        bodies = [seldon_body(r) for r in data]
        print(f"request body {len(bodies[0]) / 1024:.1f} KB; {args.requests} requests at c={args.concurrency}, "
              f"{max(200, args.requests // 4)} at c=1", file=sys.stderr)

        results.append(in_process(unpacked, 2000))

        venv = ensure_seldon_venv()
        pg = EmbeddedPostgres(work / "pg", database="bench")
        database = Database(pg.start())
        database.migrate()
        engine = LocalServingEngine(work / "serving", database=database, venv_dir=venv, poll_seconds=0.2)
        key = ResourceKey("bench", "mlp")
        model = ServedModel("bench-1", archive.as_uri(), sha, "serve:BenchPredictor")
        engine.apply(ServingRequest(key, 1, [model], sample_rate=0.0))
        status = engine.wait_available(key, 180)
        if status.state != "Available":
            raise RuntimeError(f"deployment not available: {status}\n{engine.logs(key)}")
        dep = engine._deployments[key.slug]
        (server,) = dep.state.servers.values()
        direct = f"http://127.0.0.1:{server['http_port']}/api/v1.0/predictions"

        c1, cn = measure(direct, bodies, args.concurrency, args.requests)
        n, pss = group_footprint(server["pid"])
        results.append(Result("seldon-core-microservice, 2 sync workers", c1, cn, n, pss))

        c1, cn = measure(status.url, bodies, args.concurrency, args.requests)
        rn, rpss = group_footprint(dep.state.router.pid)
        results.append(Result("cdl router -> microservice, scoring off", c1, cn, n + rn, pss + rpss))

        engine.apply(ServingRequest(key, 2, [model], sample_rate=1.0))
        engine.wait_available(key, 60)
        c1, cn = measure(status.url, bodies, args.concurrency, args.requests)
        rn, rpss = group_footprint(dep.state.router.pid)
        results.append(Result("cdl router -> microservice, scoring on", c1, cn, n + rn, pss + rpss,
                              note="every request a row in PostgreSQL (batched)"))

        results.append(mlserver(unpacked, work, [v2_body(r) for r in data], args.concurrency, args.requests))
    finally:
        if engine is not None:
            engine.close(stop_servers=True)
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)

    base = next((r.c1[0] for r in results if r.name.startswith("seldon-core") and r.c1), None)
    print(f"\nServing benchmark, {platform.node()} ({os.cpu_count()} cores), {time.strftime('%Y-%m-%d %H:%M')}, "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    header = (f"| server | c=1 p50 ms | c=1 p99 ms | c={args.concurrency} p50 ms | c={args.concurrency} p99 ms "
              f"| c={args.concurrency} req/s | c=1 p50 vs microservice | processes, PSS |")
    print(header)
    print("|" + "---|" * 8)
    for r in results:
        cells = [r.name]
        cells += [f"{r.c1[0]:.3f}", f"{r.c1[1]:.3f}"] if r.c1 else ["-", "-"]
        cells += [f"{r.cn[0]:.1f}", f"{r.cn[1]:.1f}", f"{r.cn[2]:.0f}"] if r.cn else ["-", "-", "-"]
        cells.append(f"{r.c1[0] / base:.2f}x" if (r.c1 and base) else "-")
        cells.append(f"{r.processes}, {r.pss_mb:.0f} MB" if r.processes else "-")
        print("| " + " | ".join(cells) + " |")
    for r in results:
        if r.note:
            print(f"- {r.name}: {r.note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
