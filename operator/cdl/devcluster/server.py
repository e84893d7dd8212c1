"""The aiohttp application: routing of kube's URL space onto discovery, OpenAPI and `Api`.

One process, one event loop: requests are served concurrently, writes run synchronously inside
their handler (so they never interleave), and watchers are fed from the in-process broadcaster.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from cdl.devcluster import apiservices, auth, discovery, openapi, paging, proxy, table
from cdl.devcluster.auth import OPEN_PATHS
from cdl.devcluster.errors import ApiError, bad_request
from cdl.devcluster.gc import GarbageCollector
from cdl.devcluster.jsonutil import dumps, loads
from cdl.devcluster.objects import Api, DeleteOptions, WriteOptions, now_rfc3339
from cdl.devcluster.protobuf import MAGIC, decode_delete_options, decode_object
from cdl.devcluster.registry import NAMESPACE_KEY, REVIEW_KEYS, SERVICE_ACCOUNT_KEY, Registry, ResourceType
from cdl.devcluster.scale import to_scale
from cdl.devcluster.selectors import Selector
from cdl.devcluster.store import Store
from cdl.devcluster.tls import ensure_pki
from cdl.devcluster.watch import Broadcaster, Event, expired_status, selector_view

log = logging.getLogger("cdl.devcluster")

VERSION = {
    "major": "1", "minor": "35", "gitVersion": "v1.35.2-cdl", "gitCommit": "", "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25", "compiler": "gc", "platform": "linux/amd64",
}
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
NAMESPACE_SUBRESOURCES = {"status", "finalize"}


class ControlPlane:
    """Everything one server holds: store, types, watch fan-out, writer and collector."""

    def __init__(self, data_dir: Path, token: str, history_size: int = 10_000,
                 bookmark_interval: float = 20.0) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.store = Store(data_dir / "state.db")
        self.registry = Registry()
        self.events = Broadcaster(self.store.rv, history_size)
        self.api = Api(self.store, self.registry, self.events)
        self.gc = GarbageCollector(self.api)
        self._openapi_cache: dict[Any, Any] = {}
        ns_type = self.registry.by_key(NAMESPACE_KEY)
        assert ns_type is not None
        for name in DEFAULT_NAMESPACES:
            if self.store.get(NAMESPACE_KEY, "", name) is None:
                self.api.create(ns_type, "v1", "", {"metadata": {"name": name}},
                                WriteOptions(field_manager="kube-apiserver"))
            self.api.ensure_default_service_account(name)
        apiservices.sync(self.api)
        self.api.on_crd_change.append(lambda: apiservices.sync(self.api))

    def openapi(self, what: str, build: Any) -> Any:
        key = (what, self.registry.generation)
        if key not in self._openapi_cache:
            if len(self._openapi_cache) > 256:
                self._openapi_cache.clear()
            self._openapi_cache[key] = build()
        return self._openapi_cache[key]

    async def start(self) -> None:
        self.gc.start()

    async def close(self) -> None:
        self.events.close_all()
        await self.gc.stop()
        self.store.close()


CP_KEY: web.AppKey[ControlPlane] = web.AppKey("cp", ControlPlane)
USER_KEY = "cdl.user"  # the authenticated auth.User of a request


# --- responses --------------------------------------------------------------------------------

def json_response(data: Any, status: int = 200, warnings: list[str] | None = None,
                  content_type: str = "application/json") -> web.Response:
    body = data if isinstance(data, bytes) else dumps(data)
    resp = web.Response(body=body, status=status)
    resp.headers["Content-Type"] = content_type
    for w in warnings or []:
        resp.headers.add("Warning", '299 - "' + w.replace('"', '\\"') + '"')
    return resp


def error_response(err: ApiError) -> web.Response:
    return json_response(err.status(), status=err.code)


@web.middleware
async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    cp: ControlPlane = request.app[CP_KEY]
    if request.path not in OPEN_PATHS:
        user = auth.identify(request.headers.get("Authorization"), cp.token)
        if user is None:
            return error_response(ApiError(401, "Unauthorized"))
        request[USER_KEY] = user
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e)
    except web.HTTPException:
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as e:  # noqa: BLE001 - every failure must reach the client as a Status
        log.exception("internal error on %s %s", request.method, request.path_qs)
        return error_response(ApiError(500, f"Internal error occurred: {e}"))


# --- request parsing --------------------------------------------------------------------------

@dataclass
class Target:
    """A parsed resource URL."""

    rt: ResourceType
    version: str
    namespace: str | None  # None: all namespaces (or cluster-scoped)
    name: str | None
    subresource: str


def parse_target(cp: ControlPlane, group: str, version: str, segs: list[str]) -> Target:
    ns: str | None = None
    if segs and segs[0] == "namespaces" and len(segs) >= 3 and not (len(segs) == 3 and segs[2] in NAMESPACE_SUBRESOURCES):
        ns, segs = segs[1], segs[2:]
    if not segs or len(segs) > 3:
        raise ApiError(404, "the server could not find the requested resource")
    rt = cp.registry.lookup(group, version, segs[0])
    if rt is None:
        raise ApiError(404, "the server could not find the requested resource")
    if ns is not None and not rt.namespaced:
        raise ApiError(404, "the server could not find the requested resource")
    name = segs[1] if len(segs) > 1 else None
    sub = segs[2] if len(segs) > 2 else ""
    return Target(rt, version, ns, name, sub)


async def read_body(request: web.Request) -> Any:
    raw = await request.read()
    ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if "protobuf" in ctype:
        return decode_object(raw)
    if not raw:
        raise bad_request("the request body is empty")
    try:
        return loads(raw)
    except ValueError:
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise bad_request(f"error decoding the request body: {e}")


def write_options(request: web.Request) -> WriteOptions:
    q = request.query
    return WriteOptions(
        dry_run="All" in q.getall("dryRun", []),
        field_validation=q.get("fieldValidation", ""),
        field_manager=q.get("fieldManager", ""),
        force=q.get("force", "") == "true",
        user_agent=request.headers.get("User-Agent", ""),
    )


def wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


def served(obj: dict[str, Any], api_version: str) -> dict[str, Any]:
    """The object as seen at the requested version (CRDs store one version, serve all)."""
    if obj.get("apiVersion") == api_version:
        return obj
    return {**obj, "apiVersion": api_version}


# --- handlers ---------------------------------------------------------------------------------

async def handle(request: web.Request) -> web.StreamResponse:
    cp: ControlPlane = request.app[CP_KEY]
    path = request.path.rstrip("/") or "/"
    if path in OPEN_PATHS:
        return web.Response(text="ok", content_type="text/plain")
    if path == "/version":
        return json_response(VERSION)
    if path.startswith("/openapi") or path.startswith("/swagger"):
        return openapi_handler(cp, request, path)
    segs = [s for s in path.split("/") if s]
    if (proxied := proxy.match(segs)) is not None:
        return await proxy.forward(cp, request, *proxied)
    if not segs or segs[0] not in ("api", "apis"):
        raise ApiError(404, "the server could not find the requested resource")
    accept = request.headers.get("Accept", "")
    if segs[0] == "api":
        if len(segs) == 1:
            if discovery.wants_aggregated(accept):
                return json_response(discovery.aggregated(cp.registry, True), content_type=discovery.AGGREGATED_TYPE)
            host = request.host or "127.0.0.1"
            return json_response(discovery.api_versions(host))
        group, version, rest = "", segs[1], segs[2:]
    else:
        if len(segs) == 1:
            if discovery.wants_aggregated(accept):
                return json_response(discovery.aggregated(cp.registry, False), content_type=discovery.AGGREGATED_TYPE)
            return json_response(discovery.api_group_list(cp.registry))
        if len(segs) == 2:
            doc = discovery.api_group(cp.registry, segs[1])
            if doc is None:
                raise ApiError(404, "the server could not find the requested resource")
            return json_response(doc)
        group, version, rest = segs[1], segs[2], segs[3:]
    if not rest:
        doc = discovery.resource_list(cp.registry, group, version)
        if doc is None:
            raise ApiError(404, "the server could not find the requested resource")
        return json_response(doc)
    target = parse_target(cp, group, version, rest)
    return await resource_handler(cp, request, target)


def openapi_handler(cp: ControlPlane, request: web.Request, path: str) -> web.Response:
    if path in ("/openapi/v2", "/swagger-2.0.0.pb-v1", "/swagger.json"):
        if "protobuf" in request.headers.get("Accept", "") or path.endswith("pb-v1"):
            return web.Response(body=openapi.EMPTY_V2_PROTOBUF, headers={"Content-Type": openapi.PROTOBUF_V2_TYPE})
        return json_response(cp.openapi("v2", lambda: dumps(openapi.v2_document(cp.registry))))
    if path == "/openapi/v3":
        return json_response(cp.openapi("index", lambda: dumps(openapi.v3_index(cp.registry))))
    segs = path.split("/")[3:]
    if len(segs) >= 2:
        group, version = ("", segs[1]) if segs[0] == "api" else ("/".join(segs[1:-1]), segs[-1])
        doc = cp.openapi(("gv", group, version), lambda: openapi.gv_document(cp.registry, group, version))
        if doc is not None:
            return json_response(cp.openapi(("gvb", group, version), lambda: dumps(doc)))
    raise ApiError(404, "the server could not find the requested resource")


async def resource_handler(cp: ControlPlane, request: web.Request, t: Target) -> web.StreamResponse:
    rt, api = t.rt, cp.api
    ns = t.namespace or ""
    if rt.namespaced and t.name is not None and t.namespace is None:
        raise ApiError(404, "the server could not find the requested resource")
    api_version = rt.api_version(t.version)
    method = request.method
    if t.name is None:  # collection
        if method == "GET":
            q = request.query
            selector = selection(request, t)
            if q.get("watch") in ("true", "1"):
                return await watch_handler(cp, request, t, selector)
            pg = paging.page(api.list(rt, t.namespace, selector), q.get("limit"), q.get("continue"),
                             str(cp.store.rv))
            if wants_table(request):
                tbl = table.table(rt, t.version, [served(st.obj, api_version) for st in pg.items], pg.resource_version)
                tbl["metadata"] = pg.list_meta()
                return json_response(tbl)
            head = dumps({"kind": rt.list_kind, "apiVersion": api_version, "metadata": pg.list_meta()})
            parts = [st.raw if st.obj.get("apiVersion") == api_version else dumps(served(st.obj, api_version))
                     for st in pg.items]
            return json_response(head[:-1] + b',"items":[' + b",".join(parts) + b"]}")
        if method == "POST" and rt.key in REVIEW_KEYS:
            raw = await request.read()
            body = decode_object(raw) if raw.startswith(MAGIC) else loads(raw or b"{}")
            return json_response(auth.review(body, request[USER_KEY], cp.token), 201)
        if method == "POST":
            opts = write_options(request)
            obj = api.create(rt, t.version, ns, await read_body(request), opts)
            return json_response(obj, 201, opts.warnings)
        if method == "DELETE":
            selector = selection(request, t)
            opts = await delete_options(request)
            deleted = [api.delete(rt, st.obj["metadata"].get("namespace", ""), st.obj["metadata"]["name"], opts)
                       for st in api.list(rt, t.namespace, selector)]
            return json_response({"kind": rt.list_kind, "apiVersion": api_version,
                                  "metadata": {"resourceVersion": str(cp.store.rv)}, "items": deleted})
        raise ApiError(405, f"method {method} is not allowed on a collection")
    name = t.name
    if t.subresource == "scale" and rt.scale is not None:
        if method == "GET":
            return json_response(to_scale(rt, api.get(rt, ns, name).obj))
        if method in ("PUT", "PATCH"):
            opts = write_options(request)
            return json_response(api.scale(rt, t.version, ns, name, method, request.headers.get("Content-Type", ""),
                                           await request.read(), opts))
        raise ApiError(405, f"method {method} is not allowed on scale")
    if t.subresource == "token" and rt.key == SERVICE_ACCOUNT_KEY and method == "POST":
        sa = api.get(rt, ns, name).obj
        return json_response(auth.token_request(cp.token, sa, await read_body(request)), 201)
    if t.subresource and t.subresource != "status":
        raise ApiError(404, "the server could not find the requested resource")
    if t.subresource == "status" and not rt.status_subresource:
        raise ApiError(404, "the server could not find the requested resource")
    if method == "GET":
        st = api.get(rt, ns, name)
        if wants_table(request):
            return json_response(table.table(rt, t.version, [served(st.obj, api_version)], str(st.rv)))
        return json_response(st.raw if st.obj.get("apiVersion") == api_version else served(st.obj, api_version))
    if method == "PUT":
        opts = write_options(request)
        obj = api.replace(rt, t.version, ns, name, await read_body(request), opts, t.subresource)
        return json_response(obj, 200, opts.warnings)
    if method == "PATCH":
        opts = write_options(request)
        obj, created = api.patch(rt, t.version, ns, name, request.headers.get("Content-Type", ""),
                                 await request.read(), opts, t.subresource)
        return json_response(obj, 201 if created else 200, opts.warnings)
    if method == "DELETE" and not t.subresource:
        return json_response(api.delete(rt, ns, name, await delete_options(request)))
    raise ApiError(405, f"method {method} is not allowed here")


def selection(request: web.Request, t: Target) -> Selector:
    """The request's label and field selectors; 400 for a field the resource cannot select by."""
    selector = Selector.parse(request.query.get("labelSelector"), request.query.get("fieldSelector"))
    if selector.fields:
        info = t.rt.version(t.version)
        selector.check_fields(t.rt.key, info.selectable_fields if info else frozenset())
    return selector


async def delete_options(request: web.Request) -> DeleteOptions:
    q = request.query
    body: dict[str, Any] = {}
    raw = await request.read()
    if raw.startswith(MAGIC):
        body = decode_delete_options(raw)
    elif raw:
        try:
            parsed = loads(raw)
            body = parsed if isinstance(parsed, dict) else {}
        except ValueError:
            raise bad_request("error decoding DeleteOptions")
    pre = body.get("preconditions") or {}
    dry = "All" in q.getall("dryRun", []) or "All" in (body.get("dryRun") or [])
    propagation = q.get("propagationPolicy") or body.get("propagationPolicy") or "Background"
    if body.get("orphanDependents") is True or q.get("orphanDependents") == "true":
        propagation = "Orphan"
    return DeleteOptions(propagation=propagation, uid=pre.get("uid"),
                         resource_version=pre.get("resourceVersion"), dry_run=dry)


# --- watch ------------------------------------------------------------------------------------

async def watch_handler(cp: ControlPlane, request: web.Request, t: Target, selector: Selector) -> web.StreamResponse:
    q = request.query
    rt = t.rt
    api_version = rt.api_version(t.version)
    as_table = wants_table(request)
    bookmarks = q.get("allowWatchBookmarks") == "true"
    send_initial = q.get("sendInitialEvents") == "true"
    rv_param = q.get("resourceVersion", "")
    try:
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        since = int(rv_param) if rv_param not in ("", "0") else None
    except ValueError:
        raise bad_request(f"invalid watch parameters: resourceVersion={rv_param!r}")
    if rt.namespaced and t.namespace is None:
        ns_filter = None
    else:
        ns_filter = t.namespace if rt.namespaced else ""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout else None
    sub = cp.events.subscribe(rt.key, ns_filter)
    try:
        # Snapshot or replay now, with no await since subscribing: the queue holds exactly
        # the events after it.
        first: list[tuple[str, dict[str, Any]]] = []
        gone: dict[str, Any] | None = None
        if send_initial or since is None:
            first = [("ADDED", st.obj) for st in cp.api.list(rt, ns_filter, selector)]
        elif since < cp.events.oldest_resumable():
            gone = expired_status(since, cp.events.oldest_resumable())
        else:
            for ev in cp.events.since(since, rt.key, ns_filter):
                seen = selector_view(ev, selector.matches)
                if seen:
                    first.append((seen, ev.obj))
        initial_rv = cp.store.rv
        resp = web.StreamResponse(status=200)
        resp.headers["Content-Type"] = "application/json"
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        writer = _WatchWriter(resp, rt, t.version, api_version, as_table)
        if gone is not None:
            await resp.write(dumps({"type": "ERROR", "object": gone}) + b"\n")
            return resp
        for typ, obj in first:
            await writer.event(typ, obj)
        if send_initial:
            await resp.write(dumps({"type": "BOOKMARK", "object": {
                "kind": rt.kind, "apiVersion": api_version,
                "metadata": {"resourceVersion": str(initial_rv),
                             "annotations": {"k8s.io/initial-events-end": "true"}}}}) + b"\n")
        while True:
            wait = cp.bookmark_interval if bookmarks else 5.0
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    break
            try:
                ev = await asyncio.wait_for(sub.queue.get(), wait)
            except TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    break
                if bookmarks and sub.queue.empty():
                    await resp.write(dumps({"type": "BOOKMARK", "object": {
                        "kind": rt.kind, "apiVersion": api_version,
                        "metadata": {"resourceVersion": str(cp.store.rv)}}}) + b"\n")
                continue
            if ev is None:
                break
            if selector.empty:
                await writer.raw_event(ev)
            else:
                seen = selector_view(ev, selector.matches)
                if seen:
                    await writer.event(seen, ev.obj)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        cp.events.unsubscribe(sub)
    return resp


class _WatchWriter:
    """Writes events as plain objects or, for `kubectl get -w`, as one-row Tables."""

    def __init__(self, resp: web.StreamResponse, rt: ResourceType, version: str, api_version: str,
                 as_table: bool) -> None:
        self.resp, self.rt, self.version, self.api_version, self.as_table = resp, rt, version, api_version, as_table
        self.first_table = True

    async def raw_event(self, ev: Event) -> None:
        if not self.as_table and ev.obj.get("apiVersion") == self.api_version:
            await self.resp.write(ev.line())
        else:
            await self.event(ev.type, ev.obj)

    async def event(self, typ: str, obj: dict[str, Any]) -> None:
        obj = served(obj, self.api_version)
        if self.as_table:
            obj = table.table(self.rt, self.version, [obj], obj["metadata"].get("resourceVersion", ""),
                              with_definitions=self.first_table)
            if not self.first_table:
                obj.pop("columnDefinitions", None)
            self.first_table = False
        await self.resp.write(dumps({"type": typ, "object": obj}) + b"\n")


# --- app --------------------------------------------------------------------------------------

def build_app(cp: ControlPlane) -> web.Application:
    app = web.Application(middlewares=[middleware], client_max_size=64 * 1024 * 1024)
    app[CP_KEY] = cp
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@dataclass
class Running:
    """A started server: its control plane, runner and bound port."""

    cp: ControlPlane
    runner: web.AppRunner
    port: int
    url: str
    ca_file: Path | None

    async def stop(self) -> None:
        self.cp.events.close_all()
        await self.runner.cleanup()
        await self.cp.close()


async def start_server(data_dir: Path, token: str, host: str = "127.0.0.1", port: int = 0,
                       history_size: int = 10_000, bookmark_interval: float = 20.0,
                       access_log: bool = False, tls: bool = True) -> Running:
    """Open the store, bind the port and start serving; returns once clients can connect.

    With `tls` (the default) it serves HTTPS with a CA kept in `<data_dir>/pki`: kubectl sends
    bearer tokens only over TLS."""
    pki = ensure_pki(data_dir / "pki") if tls else None
    cp = ControlPlane(data_dir, token, history_size, bookmark_interval)
    await cp.start()
    app = build_app(cp)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=log if access_log else None,
                           shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True,
                       ssl_context=pki.server_context() if pki else None)
    await site.start()
    server = site._server  # the bound socket tells the real port when port=0
    bound = server.sockets[0].getsockname()[1] if server and server.sockets else port  # type: ignore[union-attr]
    url = f"{'https' if pki else 'http'}://{host}:{bound}"
    log.info("serving on %s (rv %s, %s objects) at %s", url, cp.store.rv,
             sum(cp.store.count(r) for r in cp.store.resources()), now_rfc3339())
    return Running(cp, runner, bound, url, pki.ca_cert if pki else None)
