"""The scoring-data sink: where Seldon's request logger sends every request and response.

On a cluster, each SeldonDeployment's `logger` posts CloudEvents (binary mode: the payload is the
body; `Ce-Type` says `io.seldon.serving.inference.request` or `.response`, `Ce-Requestid` pairs
them, `Ce-Inferenceservicename` names the SeldonDeployment, `Ce-Namespace` its namespace and
`Ce-Endpoint` the predictor). cdl's Seldon engine also puts `namespace`, `deployment`,
`modelVersion`, `role` and `sampleRate` in the logger URL's query, which win over the headers;
Seldon's logger cannot sample, so the sink applies `sampleRate` per request. The sink pairs each request with its response and writes one
Scoring Data row per pair into PostgreSQL, the same rows the local router writes, so monitoring
and drift work the same on both platforms. The latency recorded is the time between the two
events arriving here, an upper bound of the model's own latency.

Anyone who can post rows could fake drift and start retrains, so with a key (`CDL_SCORING_SINK_KEY`,
from a Secret) the sink takes only events whose `token` query parameter is the key's HMAC of the
namespace they are for (`sink_token`): the Seldon engine writes it into each logger URL, so a
team that reads its own SeldonDeployment can post rows for its own namespace only. The chart's
NetworkPolicy lets only Seldon's pods reach the sink port on top of that.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from cdl.stores.records import ScoringRow

log = logging.getLogger("cdl.engines.serving.scoring_sink")
SHADOW_SUFFIX = "-shadow"
PENDING_TTL = 300.0  # seconds a request waits for its response before it is dropped
KEY_ENV = "CDL_SCORING_SINK_KEY"


def sink_key(env: dict[str, str] | None = None) -> bytes | None:
    """The sink's key from the environment (None: the sink takes unauthenticated events)."""
    value = (os.environ if env is None else env).get(KEY_ENV, "").strip()
    return value.encode() if value else None


def sink_token(key: bytes, namespace: str) -> str:
    """The token that lets events for `namespace` in: HMAC-SHA256 of the namespace."""
    return hmac.new(key, namespace.encode(), hashlib.sha256).hexdigest()


@dataclass
class _Pending:
    arrived: float
    body: Any
    headers: dict[str, str]


class ScoringSink:
    def __init__(self, database: Any, batch: int = 100, flush_seconds: float = 1.0, key: bytes | None = None) -> None:
        self.database = database
        self.key = key
        self.refused = 0
        self.batch = batch
        self.flush_seconds = flush_seconds
        self._pending: dict[str, _Pending] = {}
        self._rows: list[ScoringRow] = []
        self._lock = asyncio.Lock()
        self.written = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/", self.receive)
        app.router.add_get("/healthz", self.healthz)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _start(self, app: web.Application) -> None:
        self._flusher = asyncio.create_task(self._flush_loop())

    async def _stop(self, app: web.Application) -> None:
        self._flusher.cancel()
        await self.flush()

    async def receive(self, request: web.Request) -> web.Response:
        kind = request.headers.get("Ce-Type", "")
        request_id = request.headers.get("Ce-Requestid") or request.headers.get("Ce-Id")
        if not request_id or not kind.startswith("io.seldon.serving.inference."):
            return web.json_response({"error": "expected a Seldon request-logger CloudEvent "
                                               "(Ce-Type io.seldon.serving.inference.*, Ce-Requestid)"},
                                     status=400)
        if self.key is not None and not self._authorized(request):
            self.refused += 1
            return web.json_response({"error": "missing or wrong token for this namespace"}, status=401)
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw.decode(errors="replace")
        headers = {k.lower(): v for k, v in request.headers.items() if k.lower().startswith("ce-")}
        query = request.query
        for param, header in (("namespace", "ce-namespace"), ("deployment", "ce-inferenceservicename"),
                              ("modelVersion", "ce-endpoint")):
            if query.get(param):
                headers[header] = query[param]
        if query.get("role") == "shadow":
            headers["ce-endpoint"] = headers.get("ce-endpoint", "unknown").removesuffix(SHADOW_SUFFIX) + SHADOW_SUFFIX
        if not _sampled(request_id, query.get("sampleRate")):
            return web.Response(status=202)
        now = time.monotonic()
        if kind.endswith(".request"):
            self._pending[request_id] = _Pending(now, body, headers)
            self._expire(now)
            return web.Response(status=202)
        if kind.endswith(".response"):
            pending = self._pending.pop(request_id, None)
            row = self._row(pending, body, headers, now)
            async with self._lock:
                self._rows.append(row)
                full = len(self._rows) >= self.batch
            if full:
                await self.flush()
            return web.Response(status=202)
        return web.Response(status=202)  # other Seldon events (outliers, drift) are not scoring data

    def _authorized(self, request: web.Request) -> bool:
        assert self.key is not None
        namespace = request.query.get("namespace") or request.headers.get("Ce-Namespace") or ""
        return bool(namespace) and hmac.compare_digest(request.query.get("token", ""), sink_token(self.key, namespace))

    def _row(self, pending: _Pending | None, response: Any, headers: dict[str, str], now: float) -> ScoringRow:
        endpoint = headers.get("ce-endpoint") or headers.get("ce-modelid") or "unknown"
        shadow = endpoint.endswith(SHADOW_SUFFIX)
        error = None
        status = 200
        if isinstance(response, dict) and response.get("status", {}).get("status") == "FAILURE":
            status = int(response["status"].get("code") or 500)
            error = str(response["status"].get("info") or "failure")
        return ScoringRow(
            namespace=headers.get("ce-namespace", "default"),
            deployment=headers.get("ce-inferenceservicename", "unknown"),
            model_version=endpoint.removesuffix(SHADOW_SUFFIX),
            status_code=status,
            latency_ms=round((now - pending.arrived) * 1000, 3) if pending else 0.0,
            request=pending.body if pending else None,
            response=response,
            shadow=shadow,
            error=error,
        )

    def _expire(self, now: float) -> None:
        stale = [k for k, p in self._pending.items() if now - p.arrived > PENDING_TTL]
        for key in stale:
            self._pending.pop(key, None)

    async def flush(self) -> int:
        async with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return 0
        try:
            written = await asyncio.to_thread(self.database.insert_scoring_rows, rows)
        except Exception as exc:  # keep the rows for the next flush; the database may come back
            log.warning("could not write %d scoring row(s): %s", len(rows), exc)
            async with self._lock:
                self._rows = rows + self._rows
            return 0
        self.written += written
        return written

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            await self.flush()


def _sampled(request_id: str, rate: str | None) -> bool:
    """Keep a request with probability `rate`, decided by its id so request and response agree."""
    try:
        value = float(rate) if rate is not None else 1.0
    except ValueError:
        value = 1.0
    if value >= 1.0:
        return True
    digest = int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < value


def serve_in_thread(database: Any, port: int, host: str = "0.0.0.0", key: bytes | None = None) -> None:
    """Run the sink on its own event loop in a daemon thread (inside the operator process); the
    key defaults to `CDL_SCORING_SINK_KEY`."""
    import threading

    key = key if key is not None else sink_key()
    if key is None:
        log.warning("the scoring sink on port %d takes events from anyone: set %s (a Secret) to require a "
                    "token", port, KEY_ENV)

    def run() -> None:
        web.run_app(ScoringSink(database, key=key).app(), host=host, port=port, print=None, handle_signals=False)

    threading.Thread(target=run, name="scoring-sink", daemon=True).start()
