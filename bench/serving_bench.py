"""Serving throughput and latency, side by side in one run: where each request's time goes.

Two models, each served by every server, each server measured directly and through the cdl
router (Scoring Data off, then on: rows into an embedded PostgreSQL):

- the BBC news classifier (usecases/bbc-news, PyTorch; an untrained network of the real shape
  over a vocabulary from the generated corpus: serving cost does not depend on the weights), one
  short sentence per request;
- the 22 KB MLP: 5,000 features -> 128 -> 5 (PyTorch), one example per request as JSON.

Servers: the in-process `CdlPredictor` (no HTTP), a minimal aiohttp + orjson server around it
(bench/floor_server.py: the floor), seldon-core-microservice (as the local engine starts it),
MLServer with cdl's runtime (Open Inference Protocol), and, for the MLP at c=32, MLServer with
adaptive batching. Load comes from `wrk` (C, one thread; `scripts/install-bench-tools.sh`), which takes far
less of the shared cores than a Python client. The gRPC side of seldon-core-microservice
(`seldon.protos.Seldon/Predict`) and of MLServer (`inference.GRPCInferenceService/ModelInfer`) is
measured the same way, directly and through the router's gRPC side, with a grpc.aio client in a
process of its own sending the same request as protobuf bytes (CPU per request is counted for
the servers and the router only).

Per configuration it prints p50/p99 at c=1, req/s and p50 at c=8 (and c=32), the ratio to the
floor, what the router costs over the server behind it (its share of router + server CPU per
request; with Scoring Data on, the share with the embedded PostgreSQL's CPU too, as that runs on
the same cores here), and where a request's time goes:
request parse, model (the server's own figure, from the router's Prometheus histogram), response
encode (both measured in the server's environment with its own code), and the rest (HTTP, the
server's framework, the client).

    .venv/bin/python bench/serving_bench.py [--seconds 4] [--only mlp|bbc]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BBC_MODEL = ROOT / "usecases" / "bbc-news" / "model"
FEATURES, HIDDEN = 5000, 128
CLASSES = ["business", "entertainment", "politics", "sport", "tech"]
SENTENCE = "The government announced new tax plans for small businesses ahead of the election."

MLP_PREDICTOR = '''
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


# --------------------------------------------------------------------------- packages


def mlp_package(dest: Path) -> Path:
    import torch

    from cdl.runtime import package

    torch.manual_seed(0)
    root = dest / "mlp"
    (root / "model").mkdir(parents=True)
    (root / "checkpoint").mkdir()
    (root / "model" / "serve.py").write_text(MLP_PREDICTOR)
    net = torch.nn.Sequential(torch.nn.Linear(FEATURES, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 5))
    torch.save({"models_state_dict": [net.state_dict()]}, root / "checkpoint" / "state_dict.pth")
    (root / "checkpoint" / "class_names.json").write_text(json.dumps(CLASSES))
    package.write_manifest(root, {"name": "mlp", "version": 1, "framework": "pytorch",
                                  "entrypoints": {"predictor": "serve:BenchPredictor"}})
    return root


def bbc_package(dest: Path) -> Path:
    """The BBC predictor's package: its code, a vocabulary fitted on the generated corpus, and a
    network of the trained shape (hidden 256) with initial weights."""
    import torch

    from cdl.runtime import package

    sys.path.insert(0, str(BBC_MODEL))
    sys.path.insert(0, str(BBC_MODEL.parent / "data"))
    import generate  # type: ignore[import-not-found]
    from news_model import ModelConfig, TextVectorizer, load_corpus, write_assets  # type: ignore[import-not-found]

    corpus_dir = dest / "bbc-corpus"
    generate.generate(corpus_dir, per_class=40, seed=1, invalid=False, readme=False)
    corpus = load_corpus(corpus_dir)
    vectorizer = TextVectorizer()
    vectorizer.fit([vectorizer.tokens(t) for t in corpus.texts], vocab_size=10000, min_df=1)
    config = ModelConfig(input_dim=len(vectorizer.vocab), hidden_size=256, num_classes=len(CLASSES), dropout=0.3)
    torch.manual_seed(0)
    net = config.build()
    root = dest / "bbc"
    shutil.copytree(BBC_MODEL, root / "model", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "checkpoint").mkdir()
    torch.save({"models_state_dict": [net.state_dict()]}, root / "checkpoint" / "state_dict.pth")
    write_assets(root / "checkpoint", {"vocab": vectorizer.vocab, "class_names": CLASSES,
                                       "model_config": config.__dict__})
    (root / "checkpoint" / "class_names.json").write_text(json.dumps(CLASSES))
    package.write_manifest(root, {"name": "bbc", "version": 1, "framework": "pytorch",
                                  "entrypoints": {"predictor": "serve:NewsPredictor"}})
    return root


def mlp_row(seed: int = 0) -> list[float]:
    """A bag-of-words-like row: 60 % zeros, the rest weights with 3 decimals (about 22 KB as JSON)."""
    rng = np.random.default_rng(seed)
    values = np.round(rng.random(FEATURES), 3) * (rng.random(FEATURES) > 0.6)
    return [int(v) if v == 0 else float(v) for v in values]


@dataclass
class Model:
    name: str
    package: Path
    seldon_body: bytes
    v2_body: bytes


def models(dest: Path, only: str | None) -> list[Model]:
    out = []
    if only in (None, "bbc"):
        out.append(Model("BBC news, one sentence", bbc_package(dest),
                         json.dumps({"data": {"ndarray": [SENTENCE]}}).encode(),
                         json.dumps({"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES",
                                                 "data": [SENTENCE]}]}).encode()))
    if only in (None, "mlp"):
        row = mlp_row()
        out.append(Model("22 KB MLP", mlp_package(dest), json.dumps({"data": {"ndarray": [row]}}).encode(),
                         json.dumps({"inputs": [{"name": "x", "shape": [1, FEATURES], "datatype": "FP32",
                                                 "data": row}]}).encode()))
    return out


# --------------------------------------------------------------------------- load


@dataclass
class Run:
    p50: float
    p99: float
    rps: float
    errors: int = 0
    cpu_ms: float | None = None  # CPU time per request of the measured processes (robust to a busy machine)
    db_cpu_ms: float | None = None  # PostgreSQL's CPU per request while it stores the rows (scoring on)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the processes and their children (a server's workers too)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                try:
                    t = proc.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
    return total


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, body: bytes, concurrency: int, seconds: float, work: Path, pids: list[int] = (),
        db_pids: list[int] = ()) -> Run:
    """`wrk` POSTing one body; latency percentiles (ms), requests per second, and the CPU per
    request of `pids` (with their children) over the measured run."""
    (work / "body.json").write_bytes(body)
    script = work / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f'local f = io.open("{work / "body.json"}", "rb")\nwrk.body = f:read("*all")\nf:close()\n')
    subprocess.run(["wrk", "-t1", "-c1", "-d1s", "-s", str(script), url], capture_output=True, timeout=60)  # warm
    cpu_before, db_before = cpu_seconds(list(pids)), cpu_seconds(list(db_pids))
    done = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "--timeout", "10s",
                           "-s", str(script), url], capture_output=True, text=True, timeout=seconds + 60)
    cpu, db_cpu = cpu_seconds(list(pids)) - cpu_before, cpu_seconds(list(db_pids)) - db_before
    text = done.stdout
    count = re.search(r"(\d+) requests in", text)

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    n = int(count.group(1)) if count else 0
    return Run(pct("50"), pct("99"), float(rps.group(1)) if rps else 0.0, int(errors.group(1)) if errors else 0,
               cpu / n * 1000.0 if (pids and n) else None, db_cpu / n * 1000.0 if (db_pids and n) else None)


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    url: str  # predict URL
    health: str
    protocol: str  # seldon | v2
    stopper: Any
    pid: int = 0
    grpc: str = ""  # host:port of its gRPC side


def start_floor(model: Model, work: Path) -> Server:
    from cdl.engines.serving.local.microservice import free_port

    port = free_port("127.0.0.1")
    log = work / "floor.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "floor_server.py"), "--package",
                                 str(model.package), "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    base = f"http://127.0.0.1:{port}"
    wait_ready(f"{base}/health/ping", proc, log)
    return Server("aiohttp + orjson floor", f"{base}/api/v1.0/predictions", f"{base}/health/ping", "seldon",
                  lambda: stop(proc), proc.pid)


def start_engine_server(kind: str, model: Model, work: Path, batch: int = 0) -> Server:
    """seldon-core-microservice or MLServer exactly as the local engine starts them."""
    from cdl.engines.serving.local import venv as venvs
    from cdl.engines.serving.local.microservice import Microservice, ServerState, prepare_wrapper_dir
    from cdl.engines.serving.local.mlserver import MLServerProcess

    state = ServerState(id=f"{kind}-{batch}", model_version="bench-1", sha256="", predictor="",
                        package_dir=str(model.package), server=kind, model_name="bench",
                        max_batch_size=batch, max_batch_time_ms=2.0 if batch else 0.0)
    venv = venvs.ensure_venv(kind=kind)
    process = (MLServerProcess if kind == "mlserver" else Microservice)(
        state, venv, prepare_wrapper_dir(work / "wrapper"), work / "logs")
    process.start()
    deadline = time.monotonic() + 180
    while not process.healthy():
        if not process.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{kind} did not start: {Path(state.log).read_text()[-3000:]}")
        time.sleep(0.2)
    name = "seldon-core-microservice" if kind == "seldon" else \
        f"MLServer{f', batching {batch}' if batch else ''}"
    return Server(name, state.predict_url, "", "v2" if kind == "mlserver" else "seldon", process.stop,
                  state.pid or 0, f"127.0.0.1:{state.grpc_port}")


class RouterProcess:
    """The cdl router (`python -m cdl.engines.serving.local.router`) in front of one server."""

    def __init__(self, server: Server, work: Path, database_url: str) -> None:
        from cdl.engines.serving.local.microservice import free_port

        self.server, self.config = server, work / "router.json"
        self.version = 0
        self.write(logging=False)
        self.port = free_port("127.0.0.1")
        self.grpc_port = free_port("127.0.0.1")
        log = work / "router.log"
        env = {**os.environ, "CDL_ROUTER_DATABASE_URL": database_url}
        with open(log, "ab") as out:  # with its gRPC side, as the local engine starts it
            self.proc = subprocess.Popen([sys.executable, "-m", "cdl.engines.serving.local.router", "--config",
                                          str(self.config), "--port", str(self.port),
                                          "--grpc-port", str(self.grpc_port)], stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True, env=env)
        wait_ready(f"http://127.0.0.1:{self.port}/health/ping", self.proc, log)

    @property
    def url(self) -> str:
        base = f"http://127.0.0.1:{self.port}"
        return f"{base}/v2/models/bench/infer" if self.server.protocol == "v2" else f"{base}/api/v1.0/predictions"

    def write(self, logging: bool) -> None:
        self.version += 1
        self.config.write_text(json.dumps({
            "version": self.version, "namespace": "bench", "deployment": "bench", "protocol": self.server.protocol,
            "routes": [{"model_version": "bench-1", "role": "primary", "percent": 100,
                        "backends": [self.server.url],
                        "grpc_backends": [self.server.grpc] if self.server.grpc else []}],
            "shadows": [], "logging": {"enabled": logging, "sample_rate": 1.0}}))

    def scoring(self, on: bool) -> None:
        self.write(on)
        os.kill(self.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.health()["version"] != self.version and time.monotonic() < deadline:
            time.sleep(0.05)

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as resp:
            return json.loads(resp.read())

    def model_ms(self) -> float | None:
        """The model's mean time per request as the servers reported it (Prometheus histogram)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        total = re.search(r"^cdl_model_seconds_sum\{[^}]*\} ([\d.e+-]+)$", text, re.M)
        count = re.search(r"^cdl_model_seconds_count\{[^}]*\} ([\d.e+-]+)$", text, re.M)
        if not (total and count) or float(count.group(1)) == 0:
            return None
        return float(total.group(1)) / float(count.group(1)) * 1000.0

    def drain(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.health()["scoring"]["queued"] and time.monotonic() < deadline:
            time.sleep(0.2)

    def stop(self) -> None:
        stop(self.proc)


# --------------------------------------------------------------------------- where the time goes


def seldon_costs(model: Model) -> tuple[float, float]:
    """Request parse (orjson, as the wrapper's Flask does, plus its input checks) and response
    encode (orjson), ms, measured here with the same libraries."""
    import orjson

    from cdl.runtime.serving import CdlPredictor

    predictor = CdlPredictor(model_package=str(model.package))
    predictor.load()
    answer = predictor.predict_raw(orjson.loads(model.seldon_body))
    from cdl.runtime.serving import validate_rows

    def parse() -> None:
        rows = orjson.loads(model.seldon_body)["data"]["ndarray"]
        validate_rows(rows, predictor.input_type, predictor.input_shape)

    return _time(parse), _time(lambda: orjson.dumps(answer))


V2_COSTS = '''
import json, sys, time
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse
body = open(sys.argv[1], "rb").read()
def parse():
    req = InferenceRequest.model_validate_json(body)
    i = req.inputs[0]
    return StringCodec.decode_input(i) if i.datatype == "BYTES" else NumpyCodec.decode_input(i).tolist()
def encode():
    out = StringCodec.encode_output("label", ["business"])
    return InferenceResponse(model_name="bench", outputs=[out], parameters={"cdl_model_ms": 0.1}).model_dump_json()
def timed(f, n=300):
    for _ in range(20): f()
    t = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - t) / n * 1000
print(json.dumps([timed(parse), timed(encode)]))
'''


def v2_costs(model: Model, work: Path) -> tuple[float, float]:
    """Request parse (pydantic model + codec, as MLServer does) and response encode, ms,
    measured in MLServer's environment."""
    from cdl.engines.serving.local import venv as venvs

    (work / "v2.json").write_bytes(model.v2_body)
    python = venvs.ensure_venv(kind="mlserver") / "bin" / "python"
    done = subprocess.run([str(python), "-c", V2_COSTS, str(work / "v2.json")], capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        return float("nan"), float("nan")
    parse, encode = json.loads(done.stdout)
    return parse, encode


def _time(fn: Any, n: int = 300) -> float:
    for _ in range(20):
        fn()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1000.0


def batch_gain(model: Model, size: int = 32) -> str:
    """What adaptive batching can save at most: the bare predictor's time per row alone and in a
    batch of `size` rows (rows as lists, as both servers hand them over), and how much of that is
    turning the JSON numbers into the model's input (per element: no batch amortizes it)."""
    import orjson

    from cdl.runtime.serving import CdlPredictor

    predictor = CdlPredictor(model_package=str(model.package))
    predictor.load()
    rows = orjson.loads(model.seldon_body)["data"]["ndarray"]
    batch = rows * size
    one = _time(lambda: predictor.model.predict(rows), 100)
    many = _time(lambda: predictor.model.predict(batch), 10) / size
    convert = _time(lambda: np.asarray(batch, dtype=np.float32), 10) / size if not isinstance(rows[0], str) else 0.0
    return (f"bare predictor per row: {one:.3f} ms alone, {many:.3f} ms in a batch of {size} "
            f"(at most {one - many:.3f} ms per request saved by batching); list -> float32 array "
            f"{convert:.3f} ms per row, in any batch")


def in_process(model: Model) -> tuple[float, float]:
    """p50 ms of the bare predictor and of `CdlPredictor.predict_rows` (its checks included)."""
    import orjson

    from cdl.runtime.serving import CdlPredictor

    predictor = CdlPredictor(model_package=str(model.package))
    predictor.load()
    rows = orjson.loads(model.seldon_body)["data"]["ndarray"]
    bare, wrapped = [], []
    for i in range(600):
        started = time.perf_counter()
        predictor.model.predict(rows)
        middle = time.perf_counter()
        predictor.predict_rows(rows)
        end = time.perf_counter()
        if i >= 100:
            bare.append((middle - started) * 1000.0)
            wrapped.append((end - middle) * 1000.0)
    return float(np.median(bare)), float(np.median(wrapped))


# --------------------------------------------------------------------------- the run


@dataclass
class Row:
    model: str
    name: str
    behind: str | None = None  # the server a router row is in front of
    c1: Run | None = None
    c8: Run | None = None
    c32: Run | None = None
    parse: float | None = None
    model_ms: float | None = None
    encode: float | None = None
    notes: list[str] = field(default_factory=list)


GRPC_CLIENT = r"""
import asyncio, json, sys, time
import grpc
target, method, path, concurrency, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
payload = open(path, "rb").read()

async def main():
    latencies, errors = [], 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(method)  # bytes in, bytes out
        for _ in range(20):
            await call(payload, timeout=30)
        stop = time.perf_counter() + seconds

        async def worker():
            nonlocal errors
            while time.perf_counter() < stop:
                t = time.perf_counter()
                try:
                    await call(payload, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    print(json.dumps({"calls": n + errors + 20, "rps": n / wall, "errors": errors,
                      "p50": latencies[n // 2] * 1000 if n else float("nan"),
                      "p99": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else float("nan")}))

asyncio.run(main())
"""


def grpc_payload(model: Model, protocol: str) -> tuple[str, bytes]:
    """The gRPC method and the request as protobuf bytes: the same example the REST body carries."""
    from google.protobuf import json_format

    from cdl.engines.serving.local import grpc_router

    if protocol == "seldon":
        body = json.loads(model.seldon_body)
        rows = body["data"]["ndarray"]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for r in rows for v in r):  # numbers: packed doubles
            array = np.asarray(rows, dtype=np.float64)
            body = {"data": {"tensor": {"shape": list(array.shape), "values": array.ravel().tolist()}}}
        message = json_format.ParseDict(body, grpc_router._seldon_message()())
        return "/seldon.protos.Seldon/Predict", message.SerializeToString()
    request_class, _ = grpc_router._classes()
    request = request_class(model_name="bench")
    for tensor in json.loads(model.v2_body)["inputs"]:
        item = request.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        if tensor["datatype"] == "BYTES":
            item.contents.bytes_contents.extend(v.encode() for v in tensor["data"])
        else:
            item.contents.fp32_contents.extend(tensor["data"])
    return grpc_router.INFER, request.SerializeToString()


def grpc_load(target: str, method: str, payload: bytes, concurrency: int, seconds: float, work: Path,
              pids: list[int] = (), db_pids: list[int] = ()) -> Run:
    """Unary gRPC calls from `concurrency` tasks for `seconds` (a client process of its own):
    latency percentiles, calls per second, CPU per call of `pids` (with their children)."""
    path = work / "grpc-request.bin"
    path.write_bytes(payload)
    cpu_before, db_before = cpu_seconds(list(pids)), cpu_seconds(list(db_pids))
    done = subprocess.run([sys.executable, "-c", GRPC_CLIENT, target, method, str(path), str(concurrency),
                           str(seconds)], capture_output=True, text=True, timeout=seconds + 120)
    cpu, db_cpu = cpu_seconds(list(pids)) - cpu_before, cpu_seconds(list(db_pids)) - db_before
    if done.returncode != 0:
        raise RuntimeError(f"gRPC load failed: {done.stderr[-2000:]}")
    out = json.loads(done.stdout)
    n = out["calls"]
    return Run(out["p50"], out["p99"], out["rps"], out["errors"], cpu / n * 1000.0 if pids else None,
               db_cpu / n * 1000.0 if db_pids else None)


def measure(url: str, body: bytes, work: Path, seconds: float, concurrencies: tuple[int, ...],
            pids: list[int] = (), db_pids: list[int] = ()) -> dict[int, Run]:
    return {c: wrk(url, body, c, seconds, work, pids, db_pids) for c in concurrencies}


def bench_model(model: Model, work: Path, database_url: str, seconds: float, pg_pid: int | None) -> list[Row]:
    rows: list[Row] = []
    bare, wrapped = in_process(model)
    rows.append(Row(model.name, "in-process CdlPredictor", c1=Run(wrapped, float("nan"), 1000.0 / wrapped),
                    model_ms=bare, notes=[f"bare predictor {bare:.3f} ms, with cdl's checks {wrapped:.3f} ms",
                                          batch_gain(model)]))
    seldon_parse, seldon_encode = seldon_costs(model)
    v2_parse, v2_encode = v2_costs(model, work)
    mlp = model.name.startswith("22 KB")
    starters = [lambda: start_floor(model, work), lambda: start_engine_server("seldon", model, work),
                lambda: start_engine_server("mlserver", model, work)]
    if mlp:
        starters.append(lambda: start_engine_server("mlserver", model, work, batch=32))
    for start in starters:
        server = start()
        try:
            body = model.v2_body if server.protocol == "v2" else model.seldon_body
            parse, encode = (v2_parse, v2_encode) if server.protocol == "v2" else (seldon_parse, seldon_encode)
            conc = (1, 8, 32) if mlp and server.name.startswith("MLServer") else (1, 8)
            direct = Row(model.name, server.name, parse=parse, encode=encode)
            runs = measure(server.url, body, work, seconds, conc, [server.pid])
            direct.c1, direct.c8, direct.c32 = runs[1], runs[8], runs.get(32)
            rows.append(direct)
            if "batching" in server.name:
                continue  # batching is measured at c=32 against the same server unbatched
            router = RouterProcess(server, work, database_url)
            try:
                for scoring in (False, True):
                    router.scoring(scoring)
                    row = Row(model.name, f"cdl router, scoring {'on' if scoring else 'off'}", behind=server.name,
                              parse=parse, encode=encode)
                    # the router's CPU (its scoring writer's thread included), and PostgreSQL's apart
                    runs = measure(router.url, body, work, seconds, (1, 8), [router.proc.pid],
                                   [pg_pid] if scoring and pg_pid else [])
                    row.c1, row.c8 = runs[1], runs[8]
                    if scoring:
                        router.drain()
                        row.notes.append(f"{router.health()['scoring']['written']} rows written")
                    rows.append(row)
                direct.model_ms = router.model_ms()
                for row in rows[-2:]:
                    row.model_ms = direct.model_ms
                if server.grpc:
                    rows += grpc_rows(model, server, router, work, seconds, pg_pid)
            finally:
                router.stop()
        finally:
            server.stopper()
    return rows


def grpc_rows(model: Model, server: Server, router: RouterProcess, work: Path, seconds: float,
              pg_pid: int | None) -> list[Row]:
    """The server's gRPC side directly, then through the router's gRPC side, scoring off and on."""
    method, payload = grpc_payload(model, server.protocol)
    direct = Row(model.name, f"gRPC: {server.name}")
    direct.c1, direct.c8 = (grpc_load(server.grpc, method, payload, c, seconds, work, [server.pid]) for c in (1, 8))
    rows = [direct]
    for scoring in (False, True):
        router.scoring(scoring)
        written = router.health()["scoring"]["written"]
        row = Row(model.name, f"gRPC: cdl router, scoring {'on' if scoring else 'off'}", behind=direct.name)
        row.c1, row.c8 = (grpc_load(f"127.0.0.1:{router.grpc_port}", method, payload, c, seconds, work,
                                    [router.proc.pid], [pg_pid] if scoring and pg_pid else [])
                          for c in (1, 8))
        if scoring:
            router.drain()
            row.notes.append(f"{router.health()['scoring']['written'] - written} rows written")
        rows.append(row)
    return rows


def report(rows: list[Row], seconds: float) -> str:
    out = []
    load = os.getloadavg()
    out.append(f"Serving benchmark, {os.uname().nodename} ({os.cpu_count()} cores), {time.strftime('%Y-%m-%d %H:%M')}, "
               f"wrk -t1, {seconds:g} s per point; load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for model in dict.fromkeys(r.model for r in rows):
        mine = [r for r in rows if r.model == model]
        floor = next((r for r in mine if r.name.startswith("aiohttp") and r.c8), None)
        out.append(f"\n### {model}\n")
        out.append("| configuration | c=1 p50 ms | c=1 p99 ms | c=8 req/s | c=8 p50 ms | c=32 req/s | c=8 vs floor "
                   "| router: req/s vs server, +p50 c=1 | CPU ms/req (c=8) | router CPU share | parse ms "
                   "| model ms | encode ms | rest ms (c=1) |")
        out.append("|" + "---|" * 14)
        direct: dict[str, Row] = {}
        for r in mine:
            if r.behind is None:
                direct[r.name] = r
            name = r.name if r.behind is None else f"&nbsp;&nbsp;{r.name} -> {r.behind}"
            cells = [name]
            cells += [f"{r.c1.p50:.3f}", "-" if r.c1.p99 != r.c1.p99 else f"{r.c1.p99:.2f}"] if r.c1 else ["-", "-"]
            cells += [f"{r.c8.rps:.0f}", f"{r.c8.p50:.2f}"] if r.c8 else ["-", "-"]
            cells.append(f"{r.c32.rps:.0f}" if r.c32 else "-")
            cells.append(f"{r.c8.rps / floor.c8.rps:.2f}x" if (r.c8 and floor) else "-")
            behind = direct.get(r.behind or "")
            if behind and behind.c8 and r.c8 and behind.c1 and r.c1:
                cells.append(f"{r.c8.rps / behind.c8.rps:.2f}x, {r.c1.p50 - behind.c1.p50:+.2f} ms")
            else:
                cells.append("-")
            cpu = r.c8.cpu_ms if r.c8 else None
            db = r.c8.db_cpu_ms if r.c8 else None
            cells.append("-" if cpu is None else f"{cpu:.3f}" + (f" + PostgreSQL {db:.3f}" if db else ""))
            behind_cpu = behind.c8.cpu_ms if (behind and behind.c8) else None
            if cpu is not None and behind_cpu:
                share = f"{cpu / (cpu + behind_cpu):.0%}"
                if db:
                    share += f" ({(cpu + db) / (cpu + db + behind_cpu):.0%} with PostgreSQL)"
                cells.append(share)
            else:
                cells.append("-")
            for v in (r.parse, r.model_ms, r.encode):
                cells.append("-" if v is None or v != v else f"{v:.3f}")
            if r.behind is None and r.c1 and None not in (r.parse, r.model_ms, r.encode) and r.parse == r.parse:
                cells.append(f"{r.c1.p50 - r.parse - r.model_ms - r.encode:.3f}")
            else:
                cells.append("-")
            out.append("| " + " | ".join(cells) + " |")
            errors = sum(x.errors for x in (r.c1, r.c8, r.c32) if x)
            if errors:
                r.notes.append(f"{errors} non-2xx answers")
        notes = [f"- {r.name}{' -> ' + r.behind if r.behind else ''}: {'; '.join(r.notes)}" for r in mine if r.notes]
        if notes:
            out.append("")
            out += notes
    return "\n".join(out)


def postgres_pid(data_dir: Path) -> int | None:
    """The embedded PostgreSQL's postmaster (its backends are its children)."""
    for pidfile in data_dir.rglob("postmaster.pid"):
        try:
            return int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of load per point")
    parser.add_argument("--only", choices=("mlp", "bbc"), default=None)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is not installed: bash scripts/install-bench-tools.sh", file=sys.stderr)
        return 2
    from cdl.stores.embedded_postgres import EmbeddedPostgres
    from cdl.stores.postgres import Database

    work = Path(tempfile.mkdtemp(prefix="cdl-serving-bench-"))
    pg = EmbeddedPostgres(work / "pg", database="bench")
    rows: list[Row] = []
    try:
        database_url = pg.start()
        Database(database_url).migrate()
        for model in models(work, args.only):
            print(f"{model.name}: Seldon body {len(model.seldon_body)} B, V2 body {len(model.v2_body)} B",
                  file=sys.stderr)
            rows += bench_model(model, work, database_url, args.seconds, postgres_pid(work / "pg"))
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(report(rows, args.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
