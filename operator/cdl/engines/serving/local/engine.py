"""LocalServingEngine: Deployments as model server processes behind a router.

Each Deployment gets one router process (its stable URL: traffic split, shadow copies, Scoring
Data) and, per served model (primary, canary, shadow), `replicas` model servers running the
generic `CdlPredictor` wrapper: seldon-core-microservice from the seldon environment (Seldon
protocol, the default), or MLServer with cdl's custom runtime from the mlserver environment
(`server: mlserver`: the Open Inference Protocol over REST and gRPC, adaptive batching). `apply` records what should run and
returns at once; a supervisor thread makes it so and keeps it so:

- a server or router that dies is restarted with backoff (a server that never came up backs off
  up to 30 s, and its log's load error becomes the Degraded reason);
- a changed model is rolled: the new servers start beside the old ones, traffic moves when they
  are healthy, and the old ones are stopped once the router has no request in flight on them;
- the same models again (a new generation that changed nothing served) restart nothing.

State (ports, pids, what is routed) lives in `<root>/deployments/<ns--name>/state.json`, so a new
engine after an operator restart adopts the processes that still run and restarts the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cdl.engines.serving.local.venv as seldon_venv
from cdl.engines.base import EngineRef, ResourceKey, ServedModel, ServingRequest, ServingStatus
from cdl.engines.changes import ChangeFeed
from cdl.engines.registry.cache import PackageCache
from cdl.engines.serving.local.microservice import (
    Microservice,
    ServerState,
    free_port,
    prepare_wrapper_dir,
    process_alive,
    stop_group,
    stop_groups,
)
from cdl.engines.serving.local.mlserver import MLServerProcess
from cdl.engines.serving.local.router import DATABASE_SCHEMA_ENV, DATABASE_URL_ENV, PREDICT_PATH
from cdl.errors import PermanentEngineError

log = logging.getLogger("cdl.engines.serving.local")

START_TIMEOUT_S = 180.0  # a server not healthy by then is killed and counted as a failed start
MAX_BACKOFF_S = 30.0
DRAIN_TIMEOUT_S = 30.0  # an old server still busy after this long is stopped anyway
HEALTH_EVERY_S = 3.0  # a ready server is pinged this often
HEALTH_TIMEOUT_S = 3.0
HEALTH_MISSES = 5  # consecutive unanswered pings (15 s) before a running server is restarted
FAILURES_FOR_DEGRADED = 1  # a server that exited before ever answering makes the Deployment Degraded
STATE_FILE = "state.json"


@dataclass
class RouterState:
    port: int = 0
    grpc_port: int = 0  # the router's gRPC side (V2 inference service, or seldon.protos.Seldon)
    pid: int | None = None
    create_time: float | None = None
    log: str = ""
    restarts: int = 0
    failures: int = 0
    next_start: float = 0.0
    written_version: int = 0  # the config version in router.json
    confirmed_version: int = 0  # the version the router said it routes by
    healthy: bool = False
    ever_healthy: bool = False
    routed_since: dict[str, float] = field(default_factory=dict)  # server id -> when it left the routes


@dataclass
class DeploymentState:
    namespace: str
    name: str
    uid: str = ""
    generation: int = 0
    fingerprint: str = ""
    models: list[dict[str, Any]] = field(default_factory=list)  # ServedModel dicts + package_dir
    replicas: int = 1
    request_logging: bool = True
    sample_rate: float = 1.0
    server: str = "seldon"  # seldon | mlserver
    max_batch_size: int = 0
    max_batch_time_ms: float = 0.0
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> ServerState wire
    active: dict[str, str] = field(default_factory=dict)  # role -> model key the router serves now
    router: RouterState = field(default_factory=RouterState)
    config: dict[str, Any] = field(default_factory=dict)  # the routes last written (without version)
    error: str = ""  # a permanent problem (Failed)

    def wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> DeploymentState:
        data = dict(data)
        router = RouterState(**{k: v for k, v in (data.pop("router", None) or {}).items()
                                if k in RouterState.__dataclass_fields__})
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(router=router, **known)


def model_key(model: dict[str, Any]) -> str:
    """Servers are shared by identity, not role: promoting the canary to primary reuses them."""
    raw = f"{model['model_version']}|{model['sha256']}|{model['predictor']}"
    if model.get("server", "seldon") != "seldon":  # another server (or its batching) is another server
        raw += f"|{model['server']}|{model.get('max_batch_size', 0)}|{model.get('max_batch_time_ms', 0.0)}"
    return f"{_safe(model['model_version'])[:40]}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def _fingerprint(request: ServingRequest) -> str:
    body = json.dumps([[asdict(m) for m in request.models], request.replicas, request.request_logging,
                       request.sample_rate, request.server, request.max_batch_size, request.max_batch_time_ms],
                      sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _backoff(failures: int) -> float:
    return 0.0 if failures <= 1 else min(MAX_BACKOFF_S, 2.0 ** (failures - 2))


class _Deployment:
    """The live side of one Deployment: its state plus the process handles of this engine."""

    def __init__(self, directory: Path, state: DeploymentState) -> None:
        self.dir = directory
        self.state = state
        self.lock = threading.RLock()
        self.servers: dict[str, Microservice] = {}
        self.router_popen: subprocess.Popen[bytes] | None = None
        self.router_health: dict[str, Any] = {}
        self.deleted = False

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.state.namespace, self.state.name, self.state.uid)

    @property
    def url(self) -> str:
        if self.state.server == "mlserver":
            return f"http://127.0.0.1:{self.state.router.port}/v2/models/{self.state.name}/infer"
        return f"http://127.0.0.1:{self.state.router.port}{PREDICT_PATH}"

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(self.state.wire(), indent=1, sort_keys=True))
        tmp.replace(self.dir / STATE_FILE)


class LocalServingEngine:
    """ServingEngine on this machine: seldon-core-microservice processes behind a router each."""

    name = "local"

    def __init__(self, root: Path, database: Any | None = None, artifacts: Any | None = None,
                 venv_dir: Path | None = None, *, mlserver_venv_dir: Path | None = None, workers: int = 2,
                 poll_seconds: float = 0.5,
                 supervise: bool = True) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.database = database
        self.artifacts = artifacts
        self.packages = PackageCache(self.root / "packages", artifacts=artifacts)
        self.venv_dir = Path(venv_dir).resolve() if venv_dir else seldon_venv.default_venv_dir()
        self.venv_dirs = {seldon_venv.SELDON: self.venv_dir,
                          seldon_venv.MLSERVER: Path(mlserver_venv_dir).resolve() if mlserver_venv_dir
                          else seldon_venv.default_venv_dir(seldon_venv.MLSERVER)}
        self.workers = workers
        self.poll_seconds = poll_seconds
        self._lock = threading.RLock()
        self._deployments: dict[str, _Deployment] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._venv_errors: dict[str, str] = {}
        self._venv_threads: dict[str, threading.Thread] = {}
        self._wrapper: Path | None = None
        self.changes = ChangeFeed()  # servers started, died or became ready, for the operator
        self.subscribe = self.changes.subscribe
        self._adopt()
        self._thread: threading.Thread | None = None
        if supervise:
            self._thread = threading.Thread(target=self._supervise, name="cdl-serving-supervisor", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ protocol

    def apply(self, request: ServingRequest) -> EngineRef:
        """Record what should be served and wake the supervisor; idempotent. Packages are fetched
        and unpacked here, so a missing or corrupt artifact fails the call (PermanentEngineError)."""
        if not request.models:
            raise PermanentEngineError(f"Deployment {request.key}: no model to serve", reason="NoModel")
        fingerprint = _fingerprint(request)
        dep = self._get_or_create(request.key)
        with dep.lock:
            if dep.state.fingerprint == fingerprint and not dep.state.error:
                dep.state.generation = request.generation
                dep.save()
                return self._ref(dep)
        models = []
        try:
            for model in request.models:
                entry = asdict(model)
                entry["package_dir"] = str(self._package_dir(request.key, model))
                entry.update(server=request.server, max_batch_size=request.max_batch_size,
                             max_batch_time_ms=request.max_batch_time_ms)
                models.append(entry)
        except PermanentEngineError as exc:
            with dep.lock:
                if not dep.state.models:  # nothing served yet: status says why (a served model keeps serving)
                    dep.state.error = exc.message
            raise
        with dep.lock:
            st = dep.state
            st.uid = request.key.uid or st.uid
            st.generation = request.generation
            st.fingerprint = fingerprint
            st.models = models
            st.replicas = request.replicas
            st.request_logging = request.request_logging
            st.sample_rate = request.sample_rate
            st.server = request.server
            st.max_batch_size = request.max_batch_size
            st.max_batch_time_ms = request.max_batch_time_ms
            st.error = ""
            if not st.router.port:
                st.router.port = free_port("127.0.0.1")
            if not st.router.grpc_port:
                st.router.grpc_port = free_port("127.0.0.1")
            self._plan_servers(dep)
            # the router's new configuration is written now, so status is not Available until
            # the router confirms it routes by it
            self._route(dep, self._wanted(dep))
            dep.save()
        self._wake.set()
        return self._ref(dep)

    def status(self, key: ResourceKey) -> ServingStatus:
        dep = self._deployments.get(key.slug)
        if dep is None:
            return ServingStatus(state="Pending", message=f"Deployment {key} is not deployed in the local engine")
        with dep.lock:
            return self._status(dep)

    def delete(self, key: ResourceKey) -> None:
        """Stop the router and every server of the Deployment (by process group) and forget it."""
        with self._lock:
            dep = self._deployments.pop(key.slug, None)
        directory = self.root / "deployments" / key.slug
        if dep is None and (directory / STATE_FILE).exists():
            dep = self._load(directory)
        if dep is None:
            return
        with dep.lock:
            dep.deleted = True
            self._stop_processes(dep)
            dep.state.servers.clear()
        shutil.rmtree(directory, ignore_errors=True)

    def _stop_processes(self, dep: _Deployment) -> None:
        """Stop the router and servers of `dep` by process group; its state (the router's port
        above all: the Deployment's URL) stays for whoever starts them again."""
        r = dep.state.router
        groups = [(r.pid, r.create_time)] + [(s.get("pid"), s.get("create_time")) for s in dep.state.servers.values()]
        stop_groups(groups)
        for popen in [dep.router_popen] + [ms._popen for ms in dep.servers.values()]:
            if popen is not None:
                popen.poll()  # reap
        r.pid, r.healthy, r.confirmed_version = None, False, 0
        for sid, server in dep.state.servers.items():
            dep.state.servers[sid] = {**server, "pid": None, "ready": False}

    # ------------------------------------------------------------------ extras (CLI, tests)

    def logs(self, key: ResourceKey, tail: int = 200) -> str:
        """The router's and servers' log tails, for `cdl logs`."""
        dep = self._deployments.get(key.slug)
        if dep is None:
            return ""
        parts = []
        paths = [("router", dep.state.router.log)] + [(sid, s.get("log", "")) for sid, s in dep.state.servers.items()]
        for name, path in paths:
            if path and Path(path).exists():
                lines = Path(path).read_text(errors="replace").splitlines()[-tail:]
                parts.append(f"==> {name} <==\n" + "\n".join(lines))
        return "\n\n".join(parts)

    def server_pids(self, key: ResourceKey) -> dict[str, int]:
        """Model server id -> pid (tests and the CLI)."""
        dep = self._deployments.get(key.slug)
        if dep is None:
            return {}
        with dep.lock:
            return {sid: s["pid"] for sid, s in dep.state.servers.items() if s.get("pid")}

    def router_pid(self, key: ResourceKey) -> int | None:
        dep = self._deployments.get(key.slug)
        return dep.state.router.pid if dep else None

    def wait_available(self, key: ResourceKey, timeout: float = 120.0) -> ServingStatus:
        """Block until Available (tests, `cdl` scripts); returns the last status either way."""
        deadline = time.monotonic() + timeout
        status = self.status(key)
        while status.state != "Available" and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.1)
            status = self.status(key)
        return status

    def close(self, stop_servers: bool = False) -> None:
        """Stop supervising (an operator shutting down leaves its servers running for the next
        one to adopt, unless `stop_servers`: `cdl down`). Stopped or not, every Deployment is
        kept, so the next engine serves it again at the same URL."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        if stop_servers:
            for dep in list(self._deployments.values()):
                with dep.lock:
                    self._stop_processes(dep)
                    dep.save()

    # ------------------------------------------------------------------ planning

    def _get_or_create(self, key: ResourceKey) -> _Deployment:
        with self._lock:
            dep = self._deployments.get(key.slug)
            if dep is None:
                dep = _Deployment(self.root / "deployments" / key.slug,
                                  DeploymentState(namespace=key.namespace, name=key.name, uid=key.uid))
                self._deployments[key.slug] = dep
            return dep

    def _plan_servers(self, dep: _Deployment) -> None:
        """Add the servers the new spec needs; servers of models no longer wanted are retired by
        the supervisor once traffic has left them."""
        st = dep.state
        for model in st.models:
            mkey = model_key(model)
            for replica in range(st.replicas):
                sid = f"{mkey}-r{replica}"
                if sid not in st.servers:
                    st.servers[sid] = ServerState(
                        id=sid, model_version=model["model_version"], sha256=model["sha256"],
                        predictor=model["predictor"], package_dir=model["package_dir"], replica=replica,
                        server=model.get("server", "seldon"), model_name=st.name,
                        max_batch_size=int(model.get("max_batch_size") or 0),
                        max_batch_time_ms=float(model.get("max_batch_time_ms") or 0.0),
                    ).wire()

    def _wanted(self, dep: _Deployment) -> dict[str, list[str]]:
        """model key -> the server ids it should have."""
        out: dict[str, list[str]] = {}
        for model in dep.state.models:
            mkey = model_key(model)
            out[mkey] = [f"{mkey}-r{i}" for i in range(dep.state.replicas)]
        return out

    def _package_dir(self, key: ResourceKey, model: ServedModel) -> Path:
        """A local unpacked copy of the model's package (shared by Deployments, checked by sha256)."""
        return self.packages.get(model.artifact_uri, model.sha256,
                                 what=f"Deployment {key}: the package of ModelVersion {model.model_version}")

    def _ref(self, dep: _Deployment) -> EngineRef:
        return EngineRef(id=dep.key.slug, url=dep.url, engine="local")

    # ------------------------------------------------------------------ status

    def _status(self, dep: _Deployment) -> ServingStatus:
        st = dep.state
        router = st.router
        ref = {"router": f"{router.pid or '-'}/{router.port}", "servers": str(len(st.servers))}
        if router.grpc_port:  # inference.GRPCInferenceService (mlserver) or seldon.protos.Seldon
            ref["grpc"] = f"127.0.0.1:{router.grpc_port}"
        base = {"url": dep.url, "desired": st.replicas, "ref": ref}
        if st.error:
            return ServingStatus(state="Failed", message=st.error, ready=0, **base)
        for kind in self._kinds(dep):
            if self._venv_errors.get(kind):
                return ServingStatus(state="Failed", message=self._venv_errors[kind], ready=0, **base)
            if not seldon_venv.is_ready(self.venv_dirs[kind], kind):
                return ServingStatus(state="Deploying", ready=0, message=f"preparing the {kind} environment "
                                     f"{self.venv_dirs[kind]} (first use: about a minute)", **base)
        wanted = self._wanted(dep)
        by_id = {sid: ServerState.from_wire(s) for sid, s in st.servers.items()}
        ready_per_model = {mkey: sum(1 for sid in ids if by_id.get(sid) and by_id[sid].ready)
                           for mkey, ids in wanted.items()}
        ready = min(ready_per_model.values()) if ready_per_model else 0
        problems: list[str] = []
        starting: list[str] = []
        for model in st.models:
            mkey = model_key(model)
            for sid in wanted[mkey]:
                s = by_id.get(sid)
                if s is None or s.ready:
                    continue
                if s.failures >= FAILURES_FOR_DEGRADED and not s.ever_ready:
                    problems.append(f"model {model['model_version']} ({model['role']}) failed to load: "
                                    f"{s.last_exit or 'the server exited'}")
                elif s.ever_ready:
                    problems.append(f"model server {sid} of {model['model_version']} is restarting"
                                    f"{' after ' + s.last_exit if s.last_exit else ''}")
                else:
                    starting.append(model["model_version"])
        router_ok = router.healthy and router.confirmed_version >= router.written_version and router.written_version > 0
        if not router_ok and router.ever_healthy and not router.healthy:
            problems.append("the router is restarting")
        routed = {r.get("model_version") for r in st.config.get("routes", [])}
        switching = [m["model_version"] for m in st.models
                     if m["role"] != "shadow" and m["model_version"] not in routed and m["percent"] > 0]
        if problems:
            # dedupe: two replicas failing for the same reason say it once
            message = "; ".join(dict.fromkeys(problems))
            return ServingStatus(state="Degraded", ready=ready, message=message, **base)
        if ready >= st.replicas and router_ok and not switching:
            names = ", ".join(f"{m['model_version']} ({m['role']}"
                              + ("" if m["role"] == "shadow" else f" {m['percent']}%") + ")" for m in st.models)
            return ServingStatus(state="Available", ready=ready, message=f"serving {names} at {dep.url}", **base)
        what = ", ".join(dict.fromkeys(starting + switching)) or "the router"
        return ServingStatus(state="Deploying", ready=ready, message=f"starting {what}", **base)

    # ------------------------------------------------------------------ supervision

    def _supervise(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                break
            for dep in list(self._deployments.values()):
                changed = False
                try:
                    with dep.lock:
                        if not dep.deleted:
                            before = dep.state.wire()
                            self._converge(dep)
                            changed = dep.state.wire() != before
                    if changed:  # a server started, died or became ready: tell the operator
                        self.changes.emit(dep.key)
                except Exception:  # keep supervising the others
                    log.exception("serving supervisor: %s", dep.key)

    @staticmethod
    def _kinds(dep: _Deployment) -> list[str]:
        """The model server environments a Deployment's servers need."""
        return sorted({s.get("server", "seldon") for s in dep.state.servers.values()} | {dep.state.server})

    def _ensure_venv(self, kind: str = seldon_venv.SELDON) -> bool:
        venv = self.venv_dirs[kind]
        if seldon_venv.is_ready(venv, kind):
            return True
        thread = self._venv_threads.get(kind)
        if thread is None or not thread.is_alive():
            if self._venv_errors.get(kind):
                return False

            def build() -> None:
                try:
                    seldon_venv.ensure_venv(venv, kind)
                except Exception as exc:
                    self._venv_errors[kind] = str(exc)
                self._wake.set()

            thread = self._venv_threads[kind] = threading.Thread(target=build, name=f"cdl-{kind}-venv", daemon=True)
            thread.start()
        return False

    def _wrapper_dir(self) -> Path:
        if self._wrapper is None:
            self._wrapper = prepare_wrapper_dir(self.root / "wrapper")
        return self._wrapper

    def _converge(self, dep: _Deployment) -> None:
        st = dep.state
        if st.error or not st.models:
            return
        if not all([self._ensure_venv(kind) for kind in self._kinds(dep)]):
            return
        before = json.dumps(st.wire(), sort_keys=True)
        wanted = self._wanted(dep)
        wanted_ids = {sid for ids in wanted.values() for sid in ids}
        for sid in list(st.servers):
            if sid in wanted_ids:
                self._keep_server(dep, sid)
            else:
                self._keep_server(dep, sid, restart=False)
        self._keep_router(dep)
        self._route(dep, wanted)
        self._retire(dep, wanted_ids)
        if json.dumps(st.wire(), sort_keys=True) != before:
            dep.save()

    def _microservice(self, dep: _Deployment, sid: str) -> Microservice:
        ms = dep.servers.get(sid)
        state = ServerState.from_wire(dep.state.servers[sid])
        if ms is None:
            kind = state.server if state.server in self.venv_dirs else seldon_venv.SELDON
            process = MLServerProcess if kind == seldon_venv.MLSERVER else Microservice
            ms = process(state, self.venv_dirs[kind], self._wrapper_dir(), dep.dir / "logs", workers=self.workers)
            dep.servers[sid] = ms
        else:
            ms.state = state
        return ms

    def _keep_server(self, dep: _Deployment, sid: str, restart: bool = True) -> None:
        ms = self._microservice(dep, sid)
        s = ms.state
        now = time.time()
        if s.pid:
            if ms.alive():
                if not s.ready:
                    if ms.healthy(timeout=0.5):
                        s.ready = s.ever_ready = True
                        s.failures = 0
                        s.last_exit = None
                    elif now - float(s.extra.get("started_at", now)) > START_TIMEOUT_S:
                        ms.stop()
                        s.pid = None
                        s.failures += 1
                        s.last_exit = f"not healthy {START_TIMEOUT_S:.0f} s after starting"
                        s.next_start = now + _backoff(s.failures)
                elif now - float(s.extra.get("checked_at", 0.0)) >= HEALTH_EVERY_S:
                    # a server that runs but stopped answering (a deadlocked predictor) is restarted
                    s.extra["checked_at"] = now
                    misses = 0 if ms.healthy(timeout=HEALTH_TIMEOUT_S) else int(s.extra.get("misses", 0)) + 1
                    s.extra["misses"] = misses
                    if misses >= HEALTH_MISSES:
                        ms.stop()
                        s.pid, s.ready = None, False
                        s.failures, s.extra["misses"] = 1, 0
                        s.last_exit = f"stopped answering health checks for {misses * HEALTH_EVERY_S:.0f} s"
                        s.next_start = now
                        log.warning("model server %s of %s %s; restarting", sid, dep.key, s.last_exit)
            else:
                code = ms.exit_code()
                stop_group(s.pid, s.create_time, grace=0.5)  # workers orphaned by a killed master
                was_ready = s.ready
                # a server that never answered failed to start: its log says why; one that
                # served and then exited was stopped or crashed
                reason = None if was_ready else ms.load_error()
                s.pid, s.ready = None, False
                s.failures = 1 if was_ready else s.failures + 1
                s.last_exit = reason or _exit_text(code)
                s.next_start = now + _backoff(s.failures)
                log.warning("model server %s of %s exited (%s); restarting in %.0f s", sid, dep.key, s.last_exit,
                            max(0.0, s.next_start - now))
        if not s.pid and restart and now >= s.next_start:
            if s.restarts or s.failures:
                s.restarts += 1
            ms.start()
            s.extra["started_at"] = time.time()
        dep.state.servers[sid] = s.wire()

    # ------------------------------------------------------------------ the router

    def _router_env(self, dep: _Deployment) -> dict[str, str]:
        env = dict(os.environ)
        env.pop(DATABASE_URL_ENV, None)
        env.pop(DATABASE_SCHEMA_ENV, None)
        if self.database is not None and dep.state.request_logging:
            env[DATABASE_URL_ENV] = self.database.url
            if getattr(self.database, "schema", None):
                env[DATABASE_SCHEMA_ENV] = self.database.schema
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _keep_router(self, dep: _Deployment) -> None:
        r = dep.state.router
        now = time.time()
        alive = (dep.router_popen.poll() is None) if (dep.router_popen is not None and dep.router_popen.pid == r.pid) \
            else process_alive(r.pid, r.create_time)
        if r.pid and not alive:
            stop_group(r.pid, r.create_time, grace=0.5)
            r.pid, r.healthy = None, False
            r.failures += 1
            r.next_start = now + _backoff(r.failures)
            log.warning("router of %s exited; restarting", dep.key)
        if not r.pid:
            if now < r.next_start:
                return
            self._write_router_config(dep, force=True)
            self._start_router(dep)
            return
        health = self._router_health(r.port)
        if health is None:
            r.healthy = False
            return
        if r.grpc_port and not health.get("grpc_port"):
            # started by a cdl whose Seldon routers had no gRPC side: restart it with one
            stop_group(r.pid, r.create_time, grace=2.0)
            r.pid, r.healthy = None, False
            return
        dep.router_health = health
        r.healthy = r.ever_healthy = True
        r.failures = 0
        r.confirmed_version = int(health.get("version", 0))
        if r.confirmed_version < r.written_version and r.pid:
            _signal(r.pid, signal.SIGHUP)

    def _start_router(self, dep: _Deployment) -> None:
        r = dep.state.router
        if r.restarts or r.failures:
            r.restarts += 1
        log_path = dep.dir / "logs" / "router.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "cdl.engines.serving.local.router", "--config", str(dep.dir / "router.json"),
               "--port", str(r.port)]
        if r.grpc_port:
            cmd += ["--grpc-port", str(r.grpc_port)]
        with open(log_path, "ab") as out:
            dep.router_popen = subprocess.Popen(cmd, env=self._router_env(dep), stdin=subprocess.DEVNULL, stdout=out,
                                                stderr=subprocess.STDOUT, start_new_session=True)
        r.pid = dep.router_popen.pid
        r.log = str(log_path)
        r.healthy = False
        try:
            import psutil

            r.create_time = psutil.Process(r.pid).create_time()
        except Exception:
            r.create_time = None

    @staticmethod
    def _router_health(port: int) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1.0) as resp:
                return json.loads(resp.read())
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def _route(self, dep: _Deployment, wanted: dict[str, list[str]]) -> None:
        """Point the router at ready servers; a role moves to its new model once all of the new
        model's replicas are ready, or at once when the old one has nothing ready to offer."""
        st = dep.state
        ready: dict[str, list[str]] = {}
        grpc_targets: dict[str, str] = {}  # predict URL -> the same server's gRPC host:port
        versions: dict[str, str] = {}
        for sid, raw in st.servers.items():
            s = ServerState.from_wire(raw)
            mkey = sid.rsplit("-r", 1)[0]
            versions[mkey] = s.model_version
            if s.ready and s.pid:
                ready.setdefault(mkey, []).append(s.predict_url)
                if s.grpc_port:
                    grpc_targets[s.predict_url] = f"127.0.0.1:{s.grpc_port}"
        routes, shadows = [], []
        roles_now = set()
        for model in st.models:
            role, mkey = model["role"], model_key(model)
            roles_now.add(role)
            current = st.active.get(role)
            if current != mkey and (len(ready.get(mkey, [])) >= len(wanted[mkey]) or not ready.get(current or "")):
                st.active[role] = current = mkey
            backends = sorted(ready.get(current or "", []))
            entry = {"model_version": versions.get(current, model["model_version"]), "role": role,
                     "percent": model["percent"], "backends": backends, "key": current}
            if any(b in grpc_targets for b in backends):
                entry["grpc_backends"] = [grpc_targets.get(b, "") for b in backends]
            (shadows if role == "shadow" else routes).append(entry)
        for role in list(st.active):
            if role not in roles_now:
                del st.active[role]
        config = {"namespace": st.namespace, "deployment": st.name, "routes": routes, "shadows": shadows,
                  "logging": {"enabled": st.request_logging and self.database is not None,
                              "sample_rate": st.sample_rate},
                  "protocol": "v2" if st.server == "mlserver" else "seldon"}
        if config != st.config:
            st.config = config
            self._write_router_config(dep)

    def _write_router_config(self, dep: _Deployment, force: bool = False) -> None:
        st = dep.state
        r = st.router
        if not st.config:
            st.config = {"namespace": st.namespace, "deployment": st.name, "routes": [], "shadows": [],
                         "logging": {"enabled": False, "sample_rate": st.sample_rate},
                         "protocol": "v2" if st.server == "mlserver" else "seldon"}
        path = dep.dir / "router.json"
        if force and path.exists() and r.written_version:
            return  # the file already holds the latest version
        r.written_version += 1
        dep.dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name("router.json.tmp")
        tmp.write_text(json.dumps({"version": r.written_version, **st.config}, indent=1))
        tmp.replace(path)
        if r.pid and r.healthy:  # before its handler is installed SIGHUP would end it; it reads the file at start
            _signal(r.pid, signal.SIGHUP)

    def _retire(self, dep: _Deployment, wanted_ids: set[str]) -> None:
        """Stop servers no longer wanted, once the router routes without them and has no request
        in flight on them (or DRAIN_TIMEOUT_S passed)."""
        st = dep.state
        r = st.router
        routed = {url for entry in st.config.get("routes", []) + st.config.get("shadows", [])
                  for url in entry["backends"]}
        inflight = dep.router_health.get("inflight", {}) if r.healthy else {}
        for sid in list(st.servers):
            if sid in wanted_ids:
                continue
            s = ServerState.from_wire(st.servers[sid])
            if s.predict_url in routed and s.ready:
                continue
            left = r.routed_since.setdefault(sid, time.time())
            confirmed = r.confirmed_version >= r.written_version or not r.healthy
            drained = not inflight.get(s.predict_url) or time.time() - left > DRAIN_TIMEOUT_S
            if (confirmed and drained) or not s.pid:
                self._stop_server(dep, sid)

    def _stop_server(self, dep: _Deployment, sid: str) -> None:
        raw = dep.state.servers.pop(sid, None)
        ms = dep.servers.pop(sid, None)
        dep.state.router.routed_since.pop(sid, None)
        if ms is not None:
            ms.stop()
        elif raw:
            stop_group(raw.get("pid"), raw.get("create_time"))

    # ------------------------------------------------------------------ adoption

    def _adopt(self) -> None:
        base = self.root / "deployments"
        if not base.is_dir():
            return
        for directory in sorted(base.iterdir()):
            if (directory / STATE_FILE).exists():
                dep = self._load(directory)
                if dep is not None:
                    self._deployments[directory.name] = dep

    def _load(self, directory: Path) -> _Deployment | None:
        try:
            state = DeploymentState.from_wire(json.loads((directory / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            log.error("serving state %s unreadable (%s): ignoring it", directory, exc)
            return None
        dep = _Deployment(directory, state)
        # processes that are gone get restarted by the supervisor; live ones are adopted by pid
        for raw in state.servers.values():
            if raw.get("pid") and not process_alive(raw.get("pid"), raw.get("create_time")):
                raw["pid"], raw["ready"] = None, False
        if state.router.pid and not process_alive(state.router.pid, state.router.create_time):
            state.router.pid, state.router.healthy = None, False
        return dep


def _exit_text(code: int | None) -> str:
    if code is None:
        return "the process exited"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
