"""The router in front of one Deployment: traffic split, shadow copies, Scoring Data.

One small process per Deployment (`python -m cdl.engines.serving.local.router`), so its URL
outlives model changes and operator restarts, serving HTTP/1.1 on asyncio protocols
(`http_wire`: httptools, a quarter of aiohttp's CPU per proxied request). It

- answers `POST /api/v1.0/predictions` (Seldon protocol) or `POST /v2/models/<name>/infer` (Open
  Inference Protocol, MLServer) by forwarding the body as received to a model server of the
  primary or the canary over a keep-alive connection pool, split by percent with a smooth
  weighted round robin (exact shares, interleaved: 10 % canary is every tenth request); with
  `--grpc-port`, the protocol's gRPC service too (`grpc_router`: V2's inference service or
  `seldon.protos.Seldon`), split, mirrored and scored the same way;
- sends a copy to the shadow model in the background once the primary answered; the client
  never waits for it and never sees its errors;
- reads no request body on the way through: the model server parses it and refuses what it
  cannot take with a 400 (cdl's wrapper checks the Seldon envelope with
  `cdl.runtime.seldon_protocol`); only for a refused Seldon-protocol request does the router
  parse the body, to answer with the message naming the client's mistake (V2 bodies are never
  read: MLServer's 400 passes through);
- hands each request's bytes (sampled at `sampleRate`) and the bytes it answered to a writer
  thread that inserts them into PostgreSQL in batches (PostgreSQL checks the JSON; nothing is
  parsed or encoded on the event loop); a slow or absent database never slows or fails a request;
- counts requests, examples and model time per model version for Prometheus on `/metrics`;
- re-reads its configuration (written by the engine) on SIGHUP and when the file changes, and
  reports the version it routes by and the requests in flight per model server on `/health`,
  so the engine knows when an old server is drained.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from cdl.engines.serving.local.http_wire import BackendPool, HttpServer, Request, Response
from cdl.runtime.seldon_protocol import EnvelopeError, check_payload
from cdl.stores.records import ScoringRow

log = logging.getLogger("cdl.router")

PREDICT_PATH = "/api/v1.0/predictions"
PING_PATHS = ("/health/ping", "/v2/health/ready", "/v2/health/live")
PROTOCOLS = ("seldon", "v2")
MAX_BODY = 64 * 1024 * 1024
BACKEND_TIMEOUT_S = 60.0
SHADOW_MAX_INFLIGHT = 32
BATCH_ROWS = 500
FLUSH_SECONDS = 0.25
MAX_QUEUED_ROWS = 50_000
DATABASE_URL_ENV = "CDL_ROUTER_DATABASE_URL"
DATABASE_SCHEMA_ENV = "CDL_ROUTER_DATABASE_SCHEMA"
SPOOL_DIR = "scoring-spool"  # beside the router's configuration: rows kept over a stop


# --------------------------------------------------------------------------- configuration


@dataclass
class Route:
    model_version: str
    role: str
    percent: int
    backends: list[str]
    current: float = 0.0  # smooth weighted round robin state
    next_backend: int = 0
    grpc_backends: list[str] = field(default_factory=list)  # host:port of the same servers' gRPC (V2)

    def pick_index(self) -> int:
        index = self.next_backend % len(self.backends)
        self.next_backend += 1
        return index

    def pick_backend(self) -> str:
        return self.backends[self.pick_index()]


@dataclass
class RouterConfig:
    version: int = 0
    namespace: str = ""
    deployment: str = ""
    routes: list[Route] = field(default_factory=list)
    shadows: list[Route] = field(default_factory=list)
    logging_enabled: bool = True
    sample_rate: float = 1.0
    protocol: str = "seldon"  # what the model servers speak: "seldon" or "v2" (Open Inference Protocol)

    @classmethod
    def read(cls, path: Path) -> RouterConfig:
        data = orjson.loads(path.read_bytes())

        def routes(items: list[dict[str, Any]], role: str) -> list[Route]:
            return [Route(r["model_version"], r.get("role", role), int(r.get("percent", 0)), list(r["backends"]),
                          grpc_backends=list(r.get("grpc_backends") or []))
                    for r in items]

        logging_cfg = data.get("logging") or {}
        return cls(
            version=int(data.get("version", 0)),
            namespace=data.get("namespace", ""),
            deployment=data.get("deployment", ""),
            routes=routes(data.get("routes") or [], "primary"),
            shadows=routes(data.get("shadows") or [], "shadow"),
            logging_enabled=bool(logging_cfg.get("enabled", True)),
            sample_rate=float(logging_cfg.get("sample_rate", 1.0)),
            protocol=str(data.get("protocol") or "seldon"),
        )


def pick_route(routes: list[Route]) -> Route | None:
    """Smooth weighted round robin over the routes that have a server (nginx's algorithm): every
    route's share is exact over any window of 100 requests, and the picks are interleaved."""
    live = [(r, r.percent) for r in routes if r.backends and r.percent > 0]
    if not live:  # e.g. 100 % canary whose server is not ready yet: any ready server answers
        live = [(r, 1) for r in routes if r.backends]
    if not live:
        return None
    total = sum(w for _, w in live)
    for r, w in live:
        r.current += w
    best = max(live, key=lambda rw: rw[0].current)[0]
    best.current -= total
    return best


# --------------------------------------------------------------------------- request checks


class BadRequest(Exception):
    pass


def check_request(body: bytes) -> Any:
    """Parse and check a Seldon-protocol request at the protocol level, shapes included (run only
    on a request the model server refused, for the message naming the field)."""
    if not body:
        raise BadRequest('empty request body: send JSON like {"data": {"ndarray": [[...]]}}')
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}")
    try:
        check_payload(payload, body)
    except EnvelopeError as exc:
        raise BadRequest(str(exc)) from None
    return payload


def error_body(code: int, message: str, reason: str) -> bytes:
    """Seldon's error shape, with the message under status.info."""
    return orjson.dumps({"status": {"code": code, "info": message, "reason": reason, "status": "FAILURE"}})


# --------------------------------------------------------------------------- scoring data


class ScoringWriter:
    """Batches Scoring Data rows into PostgreSQL on a thread of its own.

    Rows wait in a bounded deque: appending one is all the event loop does (no lock, no thread
    woken per row: the writer wakes every FLUSH_SECONDS, or when a batch's worth is waiting, and
    takes what is there). A failed insert is retried with backoff, and past
    MAX_QUEUED_ROWS the oldest rows are dropped (and counted) rather than the router slowing.
    A row PostgreSQL refuses is set aside by the store, never retried. Rows still queued when the
    router stops go to the spool (`cdl.stores.spool`) and are written first by the next router."""

    def __init__(self, database_url: str | None, database: Any = None, schema: str | None = None,
                 spool: Any = None) -> None:
        self.database_url = database_url
        self.schema = schema
        self.database = database
        self.queue: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: list[Any] = []
        self.spool = spool  # a cdl.stores.spool.ScoringSpool, or None
        self.spooled = 0
        self.replayed = 0
        self._writing = threading.Lock()  # held while a batch is written: stop() spools only the rest

    @property
    def enabled(self) -> bool:
        return self.database is not None or bool(self.database_url)

    def start(self) -> None:
        if self.enabled and self._thread is None:
            if self.spool is not None:
                self._pending.extend(self.spool.take())
                self.replayed = len(self._pending)
            self._thread = threading.Thread(target=self._run, name="scoring-writer", daemon=True)
            self._thread.start()

    def put(self, row: Any) -> None:
        if not self.enabled:
            return
        if len(self.queue) + len(self._pending) >= MAX_QUEUED_ROWS:
            self.dropped += 1
            return
        self.queue.append(row)
        if len(self.queue) == BATCH_ROWS:
            self._wake.set()

    def backlog(self) -> int:
        return len(self.queue) + len(self._pending)

    def _take_queued(self) -> None:
        queued = self.queue
        while queued:
            self._pending.append(queued.popleft())

    def _db(self) -> Any:
        if self.database is None:
            from cdl.stores.postgres import Database

            self.database = Database(self.database_url, schema=self.schema,
                                     application_name="cdl-router")
        return self.database

    def _run(self) -> None:
        backoff = 0.5
        while not (self._stop.is_set() and not self.queue and not self._pending):
            if len(self.queue) + len(self._pending) < BATCH_ROWS and not self._stop.is_set():
                self._wake.wait(FLUSH_SECONDS)  # a batch fills meanwhile: one insert per flush at low rates
                self._wake.clear()
            self._take_queued()
            if not self._pending:
                continue
            with self._writing:
                batch = self._pending[:BATCH_ROWS]
                try:
                    self._db().insert_scoring_rows(batch)
                except Exception as exc:  # database down: keep the rows, retry later
                    self.failures += 1
                    self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                    log.warning("scoring rows not written yet (%d waiting): %s", self.backlog(), self.last_error)
                    self.database = None if self.database_url else self.database
                    failed = True
                else:
                    del self._pending[:len(batch)]
                    failed = False
            if failed:
                if self._stop.wait(backoff) and (self.spool is not None or self.failures > 3):
                    return  # shutting down with the database away: stop() spools the rows
                backoff = min(backoff * 2, 10.0)
                continue
            self.written += len(batch)
            backoff = 0.5

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (for up to `timeout` s), then spool whatever is left."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.spool is None:
            return
        locked = self._writing.acquire(timeout=2.0)  # not while a batch is half-way to the database
        try:
            self._take_queued()
            left = list(self._pending)
            self._pending.clear()
            if left:
                self.spool.save(left)
                self.spooled += len(left)
                log.warning("%d scoring rows not written before stopping: spooled to %s", len(left),
                            self.spool.directory)
        finally:
            if locked:
                self._writing.release()


def scoring_row(config: RouterConfig, model_version: str, request: Any, response: Any, status: int,
                latency_ms: float, shadow: bool, error: str | None) -> Any:
    """One Scoring Data row; `request` and `response` are the bytes received and sent, as they
    are: the writer's thread (the database) parses them, never the event loop."""
    return ScoringRow(
        namespace=config.namespace, deployment=config.deployment, model_version=model_version,
        status_code=status, latency_ms=latency_ms, request=request, response=response, shadow=shadow,
        error=error, created_at=datetime.now(UTC),
    )


class Figures:
    """Per model version: requests by status, examples predicted, model and request time, for
    Prometheus (`/metrics`). The model's own time and example count come from the model server's
    answer (`meta.tags` of cdl's Seldon wrapper, `parameters` of its MLServer runtime)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        labels = ("deployment", "model_version", "role")
        self.requests = Counter("cdl_requests", "Requests answered", (*labels, "code"), registry=self.registry)
        self.examples = Counter("cdl_predicted_examples", "Examples predicted", labels, registry=self.registry)
        self.model_seconds = Histogram("cdl_model_seconds", "The model's own time per request", labels,
                                       registry=self.registry,
                                       buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.request_seconds = Histogram("cdl_request_seconds", "Request time through the router", labels,
                                         registry=self.registry,
                                         buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10))
        self._children: dict[tuple[str, ...], tuple[Any, Any, Any]] = {}
        self._codes: dict[tuple[str, ...], Any] = {}

    def observe(self, deployment: str, route: Route, status: int, seconds: float, examples: int | None,
                model_ms: float | None) -> None:
        key = (deployment, route.model_version, route.role)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.examples.labels(*key), self.model_seconds.labels(*key),
                                              self.request_seconds.labels(*key))
        code = self._codes.get((*key, str(status)))
        if code is None:
            code = self._codes[(*key, str(status))] = self.requests.labels(*key, str(status))
        code.inc()
        children[2].observe(seconds)
        if examples:
            children[0].inc(examples)
        if model_ms is not None:
            children[1].observe(model_ms / 1000.0)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# --------------------------------------------------------------------------- the server


class Router:
    def __init__(self, config_path: Path, writer: ScoringWriter, grpc_port: int | None = None,
                 host: str = "127.0.0.1") -> None:
        self.config_path = config_path
        self.grpc_port = grpc_port  # the Open Inference Protocol's gRPC side, when asked for
        self.host = host
        self.grpc: Any = None
        self.config = RouterConfig.read(config_path)
        self._mtime = config_path.stat().st_mtime_ns
        self.writer = writer
        self.pool: BackendPool | None = None
        self.http: HttpServer | None = None
        self.port = 0
        self.inflight: dict[str, int] = {}
        self.shadow_tasks: set[asyncio.Task[None]] = set()
        self.shadow_dropped = 0
        self._watcher: asyncio.Task[None] | None = None
        self.requests = 0
        self.errors = 0
        self.figures = Figures()

    # ------------------------------------------------------------------ configuration

    def reload(self) -> None:
        try:
            mtime = self.config_path.stat().st_mtime_ns
            config = RouterConfig.read(self.config_path)
        except Exception as exc:  # a half-written or broken file: keep routing by the last good one
            log.error("configuration %s not reloaded: %s", self.config_path, exc)
            return
        self._mtime = mtime
        if config.version != self.config.version:
            log.info("configuration version %d -> %d", self.config.version, config.version)
        self.config = config

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                if self.config_path.stat().st_mtime_ns != self._mtime:
                    self.reload()
            except OSError:
                pass

    # ------------------------------------------------------------------ lifecycle

    async def start(self, port: int = 0) -> int:
        """Serve on `self.host`:`port` (0: a free one) with the gRPC side when asked; returns the port."""
        # keep-alive connections to each model server: no connection set up per request
        self.pool = BackendPool(per_host=64, timeout=BACKEND_TIMEOUT_S, connect_timeout=5.0)
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests run it in one)
            pass
        self._watcher = asyncio.create_task(self._watch_config())
        self.writer.start()
        if self.grpc_port is not None:
            from cdl.engines.serving.local.grpc_router import GrpcProxy

            self.grpc = GrpcProxy(self, pick_route, scoring_row)
            self.grpc_port = await self.grpc.start(self.host, self.grpc_port)
        self.http = HttpServer(self.handle, _error_response, MAX_BODY)
        self.port = await self.http.start(self.host, port)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking requests, let those in flight finish (up to `grace` s), then write or spool
        the Scoring Data still queued."""
        if self.http is not None:
            await self.http.close(grace)
        if self._watcher is not None:
            self._watcher.cancel()
        for task in list(self.shadow_tasks):
            task.cancel()
        if self.grpc is not None:
            await self.grpc.stop()
        if self.pool is not None:
            self.pool.close()
        await asyncio.to_thread(self.writer.stop)

    # ------------------------------------------------------------------ handlers

    async def handle(self, request: Request) -> Response:
        """Dispatch by method and path."""
        path, method = request.path, request.method
        if method == "POST":
            if path == PREDICT_PATH or _is_v2_infer(path):
                return await self.predict(request)
        elif method in ("GET", "HEAD"):
            if path in PING_PATHS:
                return Response(200, b"pong", "text/plain; charset=utf-8")
            if path == "/health":
                return self.health()
            if path == "/metrics":
                return Response(200, self.figures.text(), "text/plain; charset=utf-8")
        known = path in (PREDICT_PATH, "/health", "/metrics", *PING_PATHS) or _is_v2_infer(path)
        if known:
            return _json(405, error_body(405, f"{method} is not allowed on {path}", "METHOD_NOT_ALLOWED"))
        return _json(404, error_body(404, f"no such path: {path}", "NOT_FOUND"))

    def health(self) -> Response:
        cfg = self.config
        body = {
            "status": "ok",
            "version": cfg.version,
            "protocol": cfg.protocol,
            "grpc_port": self.grpc_port if self.grpc is not None else None,
            "routes": [{"model_version": r.model_version, "role": r.role, "percent": r.percent,
                        "backends": len(r.backends)} for r in cfg.routes + cfg.shadows],
            "inflight": {k: v for k, v in self.inflight.items() if v},
            "requests": self.requests,
            "errors": self.errors,
            # counts only: the health page is unauthenticated, and a database error can quote a
            # client's request (the error itself is in the router's log)
            "scoring": {"written": self.writer.written, "queued": self.writer.backlog(),
                        "dropped": self.writer.dropped, "failures": self.writer.failures,
                        "spooled": self.writer.spooled, "replayed": self.writer.replayed},
            "shadow_inflight": len(self.shadow_tasks),
            "shadow_dropped": self.shadow_dropped,
        }
        return Response(200, orjson.dumps(body))

    async def predict(self, request: Request) -> Response:
        self.requests += 1
        try:
            return await self._predict(request)
        except Exception as exc:  # never let one request take the router down
            self.errors += 1
            log.exception("request failed inside the router")
            return _json(500, error_body(500, f"router error: {type(exc).__name__}: {exc}", "ROUTER_ERROR"))

    async def _predict(self, request: Request) -> Response:
        started = time.perf_counter()
        config = self.config
        v2 = request.path != PREDICT_PATH
        if v2 != (config.protocol == "v2"):
            speaks = "the Open Inference Protocol (POST /v2/models/<name>/infer)" if config.protocol == "v2" \
                else f"the Seldon protocol (POST {PREDICT_PATH})"
            return _json(404, error_body(404, f"Deployment {config.namespace}/{config.deployment} speaks {speaks}",
                                         "WRONG_PROTOCOL"))
        body = request.body
        rate = config.sample_rate
        log_it = config.logging_enabled and self.writer.enabled and (rate >= 1.0 or random.random() < rate)
        if not body:
            return self._refuse(config, body, 'empty request body: send JSON like {"data": {"ndarray": [[...]]}}'
                                if not v2 else 'empty request body: send JSON like {"inputs": [...]}',
                                started, log_it)
        route = pick_route(config.routes)
        if route is None:
            if not v2:
                try:
                    check_request(body)
                except BadRequest as exc:
                    return self._refuse(config, body, str(exc), started, log_it)
            self.errors += 1
            message = f"no model server of Deployment {config.namespace}/{config.deployment} is ready"
            if log_it:
                self.writer.put(scoring_row(config, "", body, None, 503,
                                            (time.perf_counter() - started) * 1000.0, False, message))
            return _json(503, error_body(503, message, "NO_READY_MODEL"))
        # the body goes out as received: the model server parses it once and checks it (the
        # Seldon envelope with cdl.runtime.seldon_protocol, shapes with its own numpy pass)
        status, answer, error = await self._forward(route, body)
        if status != 200 and not v2:
            # refused (or not answered): only now is the body read here, for the message that
            # names the client's mistake, whatever the server made of it
            try:
                check_request(body)
            except BadRequest as exc:
                self.figures.observe(config.deployment, route, 400, time.perf_counter() - started, None, None)
                return self._refuse(config, body, str(exc), started, log_it)
        if not 400 <= status < 500:  # a client's mistake is not mirrored
            for shadow in config.shadows:
                if shadow.backends:
                    self._start_shadow(config, shadow, body, log_it)
        examples: int | None = None
        model_ms: float | None = None
        if status == 200:
            answer, examples, model_ms = _annotate(answer, route, v2)
        elif status >= 500 or status == 0:
            self.errors += 1
        seconds = time.perf_counter() - started
        self.figures.observe(config.deployment, route, status or 502, seconds, examples, model_ms)
        if log_it:
            self.writer.put(scoring_row(config, route.model_version, body, answer or None, status or 502,
                                        seconds * 1000.0, False, error))
        if status == 0:
            return _json(502, error_body(502, error or "model server unreachable", "MODEL_SERVER_UNREACHABLE"))
        return Response(status, answer, headers=(("X-Cdl-Model-Version", route.model_version),
                                                 ("X-Cdl-Role", route.role)))

    def _refuse(self, config: RouterConfig, body: bytes, message: str, started: float, log_it: bool) -> Response:
        if log_it:
            self.writer.put(scoring_row(config, "", body, None, 400, (time.perf_counter() - started) * 1000.0,
                                        False, message))
        return _json(400, error_body(400, message, "BAD_REQUEST"))

    async def _forward(self, route: Route, body: bytes) -> tuple[int, bytes, str | None]:
        """POST the body to one of the route's servers; on a refused connection try the next
        replica. Returns (status, body, error); status 0 when no server answered."""
        assert self.pool is not None
        error: str | None = None
        for _attempt in range(max(1, len(route.backends))):
            backend = route.pick_backend()
            self.inflight[backend] = self.inflight.get(backend, 0) + 1
            try:
                status, answer = await self.pool.post(backend, body)
                if status >= 400:
                    error = _error_text(answer)
                return status, answer, error
            except (TimeoutError, OSError) as exc:
                error = f"model server {route.model_version} at {backend} unreachable: {type(exc).__name__} {exc}"
            finally:
                self.inflight[backend] -= 1
        return 0, b"", error

    def _start_shadow(self, config: RouterConfig, shadow: Route, body: bytes, log_it: bool) -> None:
        if len(self.shadow_tasks) >= SHADOW_MAX_INFLIGHT:
            self.shadow_dropped += 1  # the shadow is behind: skip this copy rather than queue without bound
            return
        task = asyncio.create_task(self._shadow(config, shadow, body, log_it))
        self.shadow_tasks.add(task)
        task.add_done_callback(self.shadow_tasks.discard)

    async def _shadow(self, config: RouterConfig, shadow: Route, body: bytes, log_it: bool) -> None:
        started = time.perf_counter()
        try:
            status, answer, error = await self._forward(shadow, body)
            if log_it:
                self.writer.put(scoring_row(config, shadow.model_version, body, answer or None, status or 502,
                                            (time.perf_counter() - started) * 1000.0, True, error))
        except Exception:  # a shadow's trouble is never the client's
            log.debug("shadow request failed", exc_info=True)


def _annotate(answer: bytes, route: Route, v2: bool) -> tuple[bytes, int | None, float | None]:
    """A model server's 200 answer as the client gets it (Seldon: `meta.requestPath` names the
    model that answered), with the example count and the model's time it reports. The answer is
    small (labels), so parsing it costs little."""
    try:
        parsed = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return answer, None, None
    if not isinstance(parsed, dict):
        return answer, None, None
    if v2:
        params = parsed.get("parameters") if isinstance(parsed.get("parameters"), dict) else {}
        outputs = parsed.get("outputs") or [{}]
        shape = outputs[0].get("shape") if isinstance(outputs[0], dict) else None
        examples = params.get("cdl_examples", shape[0] if shape else None)
        return answer, examples, params.get("cdl_model_ms")
    meta = parsed.get("meta") if isinstance(parsed.get("meta"), dict) else {}
    tags = meta.get("tags") if isinstance(meta.get("tags"), dict) else {}
    meta["requestPath"] = {route.role: route.model_version}
    parsed["meta"] = meta
    data = parsed.get("data") if isinstance(parsed.get("data"), dict) else {}
    examples = tags.get("cdl_examples")
    if examples is None and isinstance(data.get("ndarray"), list):
        examples = len(data["ndarray"])
    return orjson.dumps(parsed), examples, tags.get("cdl_model_ms")


def _json(status: int, body: bytes) -> Response:
    return Response(status, body)


def _error_response(status: int, message: str) -> Response:
    """What the HTTP layer answers to a request it cannot take (malformed, too large)."""
    reason = {400: "BAD_REQUEST", 413: "REQUEST_TOO_LARGE"}.get(status, "ROUTER_ERROR")
    return _json(status, error_body(status, message, reason))


def _is_v2_infer(path: str) -> bool:
    """`/v2/models/<name>/infer`, one path segment for the name."""
    parts = path.split("/")
    return len(parts) == 5 and parts[1] == "v2" and parts[2] == "models" and bool(parts[3]) and parts[4] == "infer"


def _error_text(answer: bytes) -> str:
    try:
        data = orjson.loads(answer)
        info = (data.get("status") or {}).get("info") if isinstance(data, dict) else None
        if info:
            return str(info)[:1000]
    except orjson.JSONDecodeError:
        pass
    return answer[:1000].decode("utf-8", errors="replace")


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cdl router in front of one Deployment's model servers")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--grpc-port", type=int, default=None,
                        help="also serve the protocol's gRPC service on this port (V2's inference service or "
                             "seldon.protos.Seldon)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.environ.get("CDL_ROUTER_UVLOOP", "1") != "0":  # grpc.aio (grpcio >= 1.6x) runs on it too
        try:  # libuv's event loop: a fifth less CPU per proxied request than asyncio's, half the p50 at c=1
            import uvloop

            uvloop.install()
        except ImportError:
            pass
    from cdl.stores.spool import ScoringSpool

    writer = ScoringWriter(os.environ.get(DATABASE_URL_ENV) or None, schema=os.environ.get(DATABASE_SCHEMA_ENV) or None,
                           spool=ScoringSpool(args.config.parent / SPOOL_DIR))
    router = Router(args.config, writer, grpc_port=args.grpc_port, host=args.host)
    log.info("router for %s/%s on %s:%d (config version %d)", router.config.namespace, router.config.deployment,
             args.host, args.port, router.config.version)
    asyncio.run(_serve(router, args.port))
    return 0


async def _serve(router: Router, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully (requests in flight finish, Scoring
    Data is written or spooled)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await router.start(port)
    await stop.wait()
    log.info("stopping: %d requests in flight", len(router.http.tasks) if router.http else 0)
    await router.stop(grace=5.0)


if __name__ == "__main__":
    raise SystemExit(main())
