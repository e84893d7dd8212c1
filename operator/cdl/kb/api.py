"""The knowledge base's HTTP API (aiohttp), served by the operator process.

JSON under /v1/ (paged lists: items, total, limit, offset, next; `q` takes the query language of
`cdl.kb.query`; `format=csv` turns a list into CSV), the dashboard under /ui/ (see
`cdl.kb.dashboard`). On a cluster it sits behind a Service reached through the API server's
service proxy (RBAC `services/proxy`); on the embedded platform the devcluster proxies the same
path to it. It listens on 127.0.0.1 unless told otherwise, and any other address needs a token.
"""

from __future__ import annotations

import asyncio
import csv
import hmac
import io
import ipaddress
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from aiohttp import web

from cdl.errors import CdlError, TransientError
from cdl.kb import dashboard
from cdl.kb.catalog import Catalog, NotFound, Page
from cdl.kb.query import QueryError

log = logging.getLogger("cdl.kb")
TOKEN_HEADER = "X-Cdl-Kb-Token"
TOKEN_COOKIE = "cdl_kb_token"
LogReader = Callable[[str, str, str | None], str]  # (engine, run id, trial id or None) -> text
EndpointFinder = Callable[[str, str], str | None]  # (namespace, Deployment) -> its prediction URL


@dataclass
class KB:
    """What the handlers use: the catalog, an optional reader of trial logs, the token."""

    catalog: Catalog
    logs: LogReader | None = None
    token: str | None = None
    endpoint: EndpointFinder | None = None


KB_KEY: web.AppKey[KB] = web.AppKey("kb", KB)


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, default=_default), status=status, content_type="application/json")


def flatten(item: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested record as one row of dotted columns (for CSV)."""
    out: dict[str, Any] = {}
    for key, value in item.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, list):
            out[name] = json.dumps(value, default=_default)
        else:
            out[name] = value
    return out


def csv_text(items: list[dict[str, Any]]) -> str:
    rows = [flatten(i) for i in items]
    columns: list[str] = []
    for r in rows:
        columns.extend(c for c in r if c not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def listing(request: web.Request, data: dict[str, Any] | list[dict[str, Any]], name: str) -> web.Response:
    """JSON, or CSV with `format=csv` (a download named after the listing)."""
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise CdlError(f"format: unsupported value {fmt!r}: supported values: json, csv")
    if fmt == "csv":
        items = data["items"] if isinstance(data, dict) else data
        return web.Response(text=csv_text(items), content_type="text/csv",
                            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})
    return json_response(data)


def page(request: web.Request) -> Page:
    return Page.parse(request.query.get("limit"), request.query.get("offset"))


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    kb = request.app[KB_KEY]
    if kb.token and request.path not in ("/healthz",):
        given = (request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE)
                 or request.query.get("token") or "")
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            given = given or auth[7:].strip()
        if not hmac.compare_digest(given.encode(), kb.token.encode()):
            return json_response({"error": f"unauthorized: send the knowledge base token in {TOKEN_HEADER}"}, 401)
    try:
        response = await handler(request)
    except NotFound as exc:
        return json_response({"error": str(exc)}, 404)
    except QueryError as exc:
        return json_response({"error": str(exc)}, 400)
    except CdlError as exc:
        if isinstance(exc, TransientError):
            return json_response({"error": str(exc)}, 503)
        return json_response({"error": str(exc)}, 400)
    if kb.token and request.query.get("token") and isinstance(response, web.Response):
        response.set_cookie(TOKEN_COOKIE, kb.token, httponly=True, samesite="Strict")
    return response


async def _run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Database reads are blocking; run them off the event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def _catalog(request: web.Request) -> Catalog:
    return request.app[KB_KEY].catalog


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def experiments(request: web.Request) -> web.Response:
    data = await _run(_catalog(request).experiments, request.query.get("namespace") or None, page(request))
    return listing(request, data, "experiments")


async def runs(request: web.Request) -> web.Response:
    m = request.match_info
    return listing(request, await _run(_catalog(request).runs, m["ns"], m["name"]), "runs")


async def trials(request: web.Request) -> web.Response:
    m, q = request.match_info, request.query
    data = await _run(_catalog(request).trials, m["ns"], m["name"], run_id=q.get("run") or None,
                      query=q.get("q"), page=page(request))
    return listing(request, data, f"{m['name']}-trials")


async def compare(request: web.Request) -> web.Response:
    """Trials of a run side by side as flat rows, best first (what `cdl experiments compare` prints)."""
    from cdl.engines.training.local.records import compare_from_database

    m = request.match_info
    catalog = _catalog(request)
    run_id = request.query.get("run") or (await _run(catalog.runs, m["ns"], m["name"]))[0]["run_id"]
    rows, metric, smaller = await _run(compare_from_database, catalog.db, run_id)
    from cdl.engines.training.local import searchers

    rows.sort(key=lambda r: (searchers.sort_key(r.get(metric), smaller),
                             int(r["trial"]) if str(r["trial"]).isdigit() else 0))
    wanted = [t for t in request.query.get("trials", "").split(",") if t]
    if wanted:
        rows = [r for r in rows if str(r["trial"]) in wanted]
    return listing(request, {"run": run_id, "metric": metric, "smallerIsBetter": smaller, "items": rows,
                             "total": len(rows)}, f"{m['name']}-compare")


async def trial(request: web.Request) -> web.Response:
    m = request.match_info
    return json_response(await _run(_catalog(request).trial, m["run"], m["trial"]))


async def logs(request: web.Request) -> web.Response:
    return await _logs(request, request.match_info["run"])


async def _logs(request: web.Request, run_id: str) -> web.Response:
    kb = request.app[KB_KEY]
    run = await _run(kb.catalog.run, run_id)
    if kb.logs is None:
        raise NotFound("this knowledge base has no access to trial logs")
    text = await _run(kb.logs, run["engine"], run["run_id"], request.query.get("trial") or None)
    return web.Response(text=text, content_type="text/plain")


async def projects(request: web.Request) -> web.Response:
    return listing(request, await _run(_catalog(request).projects), "projects")


async def model_versions(request: web.Request) -> web.Response:
    q = request.query
    data = await _run(_catalog(request).model_versions, model=q.get("model") or None, query=q.get("q"),
                      page=page(request))
    return listing(request, data, "model-versions")


def _version(request: web.Request) -> int:
    raw = request.match_info["version"]
    try:
        return int(raw)
    except ValueError:
        raise CdlError(f"version: {raw!r} is not a version number") from None


async def model_version(request: web.Request) -> web.Response:
    return json_response(await _run(_catalog(request).model_version, request.match_info["model"], _version(request)))


async def model_version_named(request: web.Request) -> web.Response:
    m = request.match_info
    return json_response(await _run(_catalog(request).model_version_named, m["ns"], m["name"]))


async def experiment_logs(request: web.Request) -> web.Response:
    m = request.match_info
    latest = (await _run(_catalog(request).runs, m["ns"], m["name"]))[0]
    return await _logs(request, request.query.get("run") or latest["run_id"])


async def report_markdown(request: web.Request) -> web.Response:
    text = await _run(_catalog(request).report_markdown, request.match_info["model"], _version(request))
    return web.Response(text=text, content_type="text/markdown")


async def package(request: web.Request) -> web.StreamResponse:
    """The registered package archive (code, weights, requirements, manifest), streamed."""
    stream, size, filename = await _run(_catalog(request).package_stream, request.match_info["model"],
                                        _version(request))
    response = web.StreamResponse(headers={"Content-Type": "application/gzip",
                                           "Content-Disposition": f'attachment; filename="{filename}"'})
    if size:
        response.content_length = size
    await response.prepare(request)
    try:
        while chunk := await _run(stream.read, 1 << 20):
            await response.write(chunk)
    finally:
        stream.close()
    await response.write_eof()
    return response


async def lineage(request: web.Request) -> web.Response:
    return json_response(await _run(_catalog(request).lineage, request.match_info["model"], _version(request)))


async def deployments(request: web.Request) -> web.Response:
    return listing(request, await _run(_catalog(request).deployments, request.query.get("namespace") or None),
                   "deployments")


async def deployment(request: web.Request) -> web.Response:
    m = request.match_info
    try:
        bucket = int(request.query.get("bucket", "60"))
    except ValueError:
        raise CdlError(f"bucket: {request.query['bucket']!r} is not a whole number of seconds") from None
    return json_response(await _run(_catalog(request).deployment, m["ns"], m["name"], bucket_seconds=bucket))


async def predictions(request: web.Request) -> web.Response:
    """Send an input to a Deployment's endpoint (Seldon protocol) and return its answer.

    Only from the dashboard's own script: the X-Cdl-Dashboard header cannot be set by another
    site's page without a CORS preflight, which this server never grants.
    """
    import aiohttp

    if request.headers.get("X-Cdl-Dashboard") != "1":
        return json_response({"error": "predictions: send the X-Cdl-Dashboard: 1 header"}, 403)
    kb, m = request.app[KB_KEY], request.match_info
    url = await _run(kb.endpoint, m["ns"], m["name"]) if kb.endpoint else None
    if not url:
        raise NotFound(f"Deployment {m['ns']}/{m['name']} has no endpoint (not found, or not serving yet)")
    try:
        payload = await request.json()
    except ValueError:
        raise CdlError("body: not JSON; send a Seldon payload, e.g. {\"data\": {\"ndarray\": [\"text\"]}}") from None
    if not isinstance(payload, dict) or not ({"data", "binData", "strData", "jsonData"} & set(payload)):
        raise CdlError("body: expected a Seldon payload with one of data, binData, strData, jsonData")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session, \
                session.post(url, json=payload) as resp:
            text = await resp.text()
            status = resp.status
    except aiohttp.ClientError as exc:
        return json_response({"error": f"{url} unreachable: {exc}"}, 502)
    try:
        return json_response({"endpoint": url, "status": status, "response": json.loads(text)},
                             200 if status < 400 else 502)
    except ValueError:
        return json_response({"endpoint": url, "status": status, "response": text}, 200 if status < 400 else 502)


def build_app(kb: KB) -> web.Application:
    app = web.Application(middlewares=[errors])
    app[KB_KEY] = kb
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/v1/experiments", experiments)
    r.add_get("/v1/namespaces/{ns}/experiments/{name}/runs", runs)
    r.add_get("/v1/namespaces/{ns}/experiments/{name}/trials", trials)
    r.add_get("/v1/namespaces/{ns}/experiments/{name}/compare", compare)
    r.add_get("/v1/namespaces/{ns}/experiments/{name}/logs", experiment_logs)
    r.add_get("/v1/namespaces/{ns}/modelversions/{name}", model_version_named)
    r.add_get("/v1/runs/{run}/trials/{trial}", trial)
    r.add_get("/v1/runs/{run}/logs", logs)
    r.add_get("/v1/projects", projects)
    r.add_get("/v1/modelversions", model_versions)
    r.add_get("/v1/models/{model}/versions/{version}", model_version)
    r.add_get("/v1/models/{model}/versions/{version}/report.md", report_markdown)
    r.add_get("/v1/models/{model}/versions/{version}/lineage", lineage)
    r.add_get("/v1/models/{model}/versions/{version}/package", package)
    r.add_get("/v1/deployments", deployments)
    r.add_get("/v1/namespaces/{ns}/deployments/{name}", deployment)
    r.add_post("/v1/namespaces/{ns}/deployments/{name}/predictions", predictions)
    dashboard.add_routes(app, kb.catalog, kb.endpoint)
    return app


def check_bind(host: str, token: str | None) -> None:
    """Loopback only, unless a token guards the port."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        raise CdlError(f"kb host {host!r} is not a loopback address: set a token (kb_token / CDL_KB_TOKEN) to "
                       "listen there")


@dataclass
class Served:
    """A knowledge base serving in a background thread."""

    port: int
    thread: threading.Thread
    loop: asyncio.AbstractEventLoop
    runner: web.AppRunner

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def serve_in_thread(kb: KB, host: str = "127.0.0.1", port: int = 0) -> Served:
    """Serve on its own event loop in a daemon thread; returns once the port is bound."""
    check_bind(host, kb.token)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(build_app(kb), access_log=None)
    ready = threading.Event()
    bound: list[int] = []
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, host, port, reuse_address=True)
            loop.run_until_complete(site.start())
            sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
            bound.append(sockets[0].getsockname()[1] if sockets else port)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="cdl-kb", daemon=True)
    thread.start()
    ready.wait(30)
    if failure:
        raise CdlError(f"the knowledge base could not listen on {host}:{port}: {failure[0]}")
    log.info("knowledge base serving on http://%s:%s", host, bound[0])
    return Served(bound[0], thread, loop, runner)
