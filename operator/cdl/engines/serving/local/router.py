"""The router in front of one Deployment: traffic split, shadow copies, Scoring Data.

One small aiohttp process per Deployment (`python -m cdl.engines.serving.local.router`), so its
URL outlives model changes and operator restarts. It

- answers `POST /api/v1.0/predictions` (Seldon protocol) by forwarding the body to a model server
  of the primary or the canary, split by percent with a smooth weighted round robin (exact
  shares, interleaved: 10 % canary is every tenth request, not a coin toss);
- sends a copy to the shadow model in the background; the client never waits for it and never
  sees its errors;
- refuses malformed requests itself with 400 and a JSON message (the model server refuses inputs
  of the wrong shape or type with its own 400, passed through);
- queues a Scoring Data row per request (sampled at `sampleRate`) and a writer thread inserts
  them into PostgreSQL in batches; a slow or absent database never slows or fails a request;
- re-reads its configuration (written by the engine) on SIGHUP and when the file changes, and
  reports the version it routes by and the requests in flight per model server on `/health`,
  so the engine knows when an old server is drained.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import queue
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from cdl.engines.serving.protocol import EnvelopeError, check_envelope

log = logging.getLogger("cdl.router")

PREDICT_PATH = "/api/v1.0/predictions"
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

    def pick_backend(self) -> str:
        backend = self.backends[self.next_backend % len(self.backends)]
        self.next_backend += 1
        return backend


@dataclass
class RouterConfig:
    version: int = 0
    namespace: str = ""
    deployment: str = ""
    routes: list[Route] = field(default_factory=list)
    shadows: list[Route] = field(default_factory=list)
    logging_enabled: bool = True
    sample_rate: float = 1.0

    @classmethod
    def read(cls, path: Path) -> RouterConfig:
        data = orjson.loads(path.read_bytes())

        def routes(items: list[dict[str, Any]], role: str) -> list[Route]:
            return [Route(r["model_version"], r.get("role", role), int(r.get("percent", 0)), list(r["backends"]))
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
    """Parse and check a Seldon-protocol request at the protocol level; the model server checks
    shape and type against what its model takes."""
    if not body:
        raise BadRequest('empty request body: send JSON like {"data": {"ndarray": [[...]]}}')
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}")
    if not isinstance(payload, dict):
        raise BadRequest(f'the request must be a JSON object like {{"data": {{"ndarray": [...]}}}}, '
                         f"got a JSON {type(payload).__name__}")
    if "data" in payload:
        data = payload["data"]
        if not isinstance(data, dict):
            raise BadRequest('"data" must be an object holding "ndarray" (or "tensor")')
        if "ndarray" in data:
            rows = data["ndarray"]
            if not isinstance(rows, list):
                raise BadRequest(f'"data.ndarray" must be a list of examples, got a JSON {_json_type(rows)}')
            if not rows:
                raise BadRequest('"data.ndarray" is empty: send one row per example')
            kinds = {_json_type(r) for r in rows}
            if len(kinds) > 1:
                raise BadRequest(f'"data.ndarray" mixes {" and ".join(sorted(kinds))} rows: every example must '
                                 "have the same type and shape")
            if kinds == {"array"}:
                lengths = {len(r) for r in rows}
                if len(lengths) > 1:
                    raise BadRequest(f'"data.ndarray" rows differ in length ({sorted(lengths)[:5]}): every example '
                                     "must have the same shape")
        elif "tensor" in data:
            tensor = data["tensor"]
            if not isinstance(tensor, dict) or not isinstance(tensor.get("shape"), list) \
                    or not isinstance(tensor.get("values"), list):
                raise BadRequest('"data.tensor" must hold "shape" (list of ints) and "values" (flat list)')
            size = 1
            for dim in tensor["shape"]:
                if not isinstance(dim, int) or dim < 0:
                    raise BadRequest(f'"data.tensor.shape" must be non-negative integers, got {tensor["shape"]}')
                size *= dim
            if size != len(tensor["values"]):
                raise BadRequest(f'"data.tensor.values" holds {len(tensor["values"])} numbers but shape '
                                 f"{tensor['shape']} needs {size}")
        else:
            raise BadRequest('"data" must hold "ndarray" (a list of examples) or "tensor"')
    elif not any(k in payload for k in ("strData", "jsonData", "binData")):
        raise BadRequest('the request must hold "data" (with "ndarray"), "strData" or "jsonData"')
    try:
        check_envelope(payload, body)
    except EnvelopeError as exc:
        raise BadRequest(str(exc)) from None
    return payload


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def error_body(code: int, message: str, reason: str) -> bytes:
    """Seldon's error shape, with the message under status.info."""
    return orjson.dumps({"status": {"code": code, "info": message, "reason": reason, "status": "FAILURE"}})


# --------------------------------------------------------------------------- scoring data


class ScoringWriter:
    """Batches Scoring Data rows into PostgreSQL on a thread of its own.

    Rows wait in a bounded queue; a failed insert is retried with backoff, and past
    MAX_QUEUED_ROWS the oldest rows are dropped (and counted) rather than the router slowing.
    A row PostgreSQL refuses is set aside by the store, never retried. Rows still queued when the
    router stops go to the spool (`cdl.stores.spool`) and are written first by the next router."""

    def __init__(self, database_url: str | None, database: Any = None, schema: str | None = None,
                 spool: Any = None) -> None:
        self.database_url = database_url
        self.schema = schema
        self.database = database
        self.queue: queue.Queue[Any] = queue.Queue()
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
        if self.queue.qsize() + len(self._pending) >= MAX_QUEUED_ROWS:
            self.dropped += 1
            return
        self.queue.put(row)

    def backlog(self) -> int:
        return self.queue.qsize() + len(self._pending)

    def _db(self) -> Any:
        if self.database is None:
            from cdl.stores.postgres import Database

            self.database = Database(self.database_url, schema=self.schema,
                                     application_name="cdl-router")
        return self.database

    def _run(self) -> None:
        backoff = 0.5
        while not (self._stop.is_set() and self.queue.empty() and not self._pending):
            try:
                self._pending.append(self.queue.get(timeout=FLUSH_SECONDS))
            except queue.Empty:
                pass
            deadline = time.monotonic() + FLUSH_SECONDS
            while len(self._pending) < BATCH_ROWS and time.monotonic() < deadline:
                try:
                    self._pending.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
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
        if self._thread is not None:
            self._thread.join(timeout)
        if self.spool is None:
            return
        locked = self._writing.acquire(timeout=2.0)  # not while a batch is half-way to the database
        try:
            left = list(self._pending)
            self._pending.clear()
            while True:
                try:
                    left.append(self.queue.get_nowait())
                except queue.Empty:
                    break
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
    from cdl.stores.records import ScoringRow

    return ScoringRow(
        namespace=config.namespace, deployment=config.deployment, model_version=model_version,
        status_code=status, latency_ms=latency_ms, request=request, response=response, shadow=shadow,
        error=error, created_at=datetime.now(UTC),
    )


# --------------------------------------------------------------------------- the server


class Router:
    def __init__(self, config_path: Path, writer: ScoringWriter) -> None:
        self.config_path = config_path
        self.config = RouterConfig.read(config_path)
        self._mtime = config_path.stat().st_mtime_ns
        self.writer = writer
        self.session: aiohttp.ClientSession | None = None
        self.inflight: dict[str, int] = {}
        self.shadow_tasks: set[asyncio.Task[None]] = set()
        self.shadow_dropped = 0
        self._watcher: asyncio.Task[None] | None = None
        self.requests = 0
        self.errors = 0

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

    async def on_startup(self, app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=64, keepalive_timeout=30)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=BACKEND_TIMEOUT_S, connect=5),
            json_serialize=lambda o: orjson.dumps(o).decode())
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests run it in one)
            pass
        self._watcher = asyncio.create_task(self._watch_config())
        self.writer.start()

    async def on_cleanup(self, app: web.Application) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for task in list(self.shadow_tasks):
            task.cancel()
        if self.session is not None:
            await self.session.close()
        await asyncio.to_thread(self.writer.stop)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(PREDICT_PATH, self.predict)
        app.router.add_get("/health", self.health)
        app.router.add_get("/health/ping", self.ping)
        app.on_startup.append(self.on_startup)
        app.on_cleanup.append(self.on_cleanup)
        return app

    # ------------------------------------------------------------------ handlers

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="pong")

    async def health(self, request: web.Request) -> web.Response:
        cfg = self.config
        body = {
            "status": "ok",
            "version": cfg.version,
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
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def predict(self, request: web.Request) -> web.Response:
        self.requests += 1
        try:
            return await self._predict(request)
        except Exception as exc:  # never let one request take the router down
            self.errors += 1
            log.exception("request failed inside the router")
            return _json(500, error_body(500, f"router error: {type(exc).__name__}: {exc}", "ROUTER_ERROR"))

    async def _predict(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        config = self.config
        body = await request.read()
        log_it = config.logging_enabled and self.writer.enabled and random.random() < config.sample_rate
        try:
            payload = check_request(body)
        except BadRequest as exc:
            if log_it:
                self.writer.put(scoring_row(config, "", _lenient(body), None, 400,
                                            (time.perf_counter() - started) * 1000.0, False, str(exc)))
            return _json(400, error_body(400, str(exc), "BAD_REQUEST"))
        route = pick_route(config.routes)
        if route is None:
            self.errors += 1
            message = f"no model server of Deployment {config.namespace}/{config.deployment} is ready"
            if log_it:
                self.writer.put(scoring_row(config, "", payload, None, 503,
                                            (time.perf_counter() - started) * 1000.0, False, message))
            return _json(503, error_body(503, message, "NO_READY_MODEL"))
        for shadow in config.shadows:
            if shadow.backends:
                self._start_shadow(config, shadow, body, payload, log_it)
        status, answer, error = await self._forward(route, body)
        latency_ms = (time.perf_counter() - started) * 1000.0
        parsed: Any = None
        if answer:
            try:
                parsed = orjson.loads(answer)
            except orjson.JSONDecodeError:
                parsed = None
        if status == 200 and isinstance(parsed, dict):
            meta = parsed.get("meta") if isinstance(parsed.get("meta"), dict) else {}
            meta["requestPath"] = {route.role: route.model_version}
            parsed["meta"] = meta
            answer = orjson.dumps(parsed)
        elif status >= 500 or status == 0:
            self.errors += 1
        if log_it:
            self.writer.put(scoring_row(config, route.model_version, payload, parsed, status or 502, latency_ms,
                                        False, error))
        if status == 0:
            return _json(502, error_body(502, error or "model server unreachable", "MODEL_SERVER_UNREACHABLE"))
        headers = {"X-Cdl-Model-Version": route.model_version, "X-Cdl-Role": route.role}
        return web.Response(status=status, body=answer, content_type="application/json", headers=headers)

    async def _forward(self, route: Route, body: bytes) -> tuple[int, bytes, str | None]:
        """POST the body to one of the route's servers; on a refused connection try the next
        replica. Returns (status, body, error); status 0 when no server answered."""
        assert self.session is not None
        error: str | None = None
        for _attempt in range(max(1, len(route.backends))):
            backend = route.pick_backend()
            self.inflight[backend] = self.inflight.get(backend, 0) + 1
            try:
                async with self.session.post(backend, data=body,
                                             headers={"Content-Type": "application/json"}) as resp:
                    answer = await resp.read()
                    if resp.status >= 400:
                        error = _error_text(answer)
                    return resp.status, answer, error
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                error = f"model server {route.model_version} at {backend} unreachable: {type(exc).__name__} {exc}"
            finally:
                self.inflight[backend] -= 1
        return 0, b"", error

    def _start_shadow(self, config: RouterConfig, shadow: Route, body: bytes, payload: Any, log_it: bool) -> None:
        if len(self.shadow_tasks) >= SHADOW_MAX_INFLIGHT:
            self.shadow_dropped += 1  # the shadow is behind: skip this copy rather than queue without bound
            return
        task = asyncio.create_task(self._shadow(config, shadow, body, payload, log_it))
        self.shadow_tasks.add(task)
        task.add_done_callback(self.shadow_tasks.discard)

    async def _shadow(self, config: RouterConfig, shadow: Route, body: bytes, payload: Any, log_it: bool) -> None:
        started = time.perf_counter()
        try:
            status, answer, error = await self._forward(shadow, body)
            if log_it:
                try:
                    parsed = orjson.loads(answer) if answer else None
                except orjson.JSONDecodeError:
                    parsed = None
                self.writer.put(scoring_row(config, shadow.model_version, payload, parsed, status or 502,
                                            (time.perf_counter() - started) * 1000.0, True, error))
        except Exception:  # a shadow's trouble is never the client's
            log.debug("shadow request failed", exc_info=True)


def _json(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")


def _lenient(body: bytes) -> Any:
    """A malformed body as something storable: the JSON when it parses, else its text."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return {"raw": body[:4096].decode("utf-8", errors="replace")}


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    from cdl.stores.spool import ScoringSpool

    writer = ScoringWriter(os.environ.get(DATABASE_URL_ENV) or None, schema=os.environ.get(DATABASE_SCHEMA_ENV) or None,
                           spool=ScoringSpool(args.config.parent / SPOOL_DIR))
    router = Router(args.config, writer)
    log.info("router for %s/%s on %s:%d (config version %d)", router.config.namespace, router.config.deployment,
             args.host, args.port, router.config.version)
    web.run_app(router.app(), host=args.host, port=args.port, print=None, access_log=None,
                handle_signals=True, shutdown_timeout=5.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
