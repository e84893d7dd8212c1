"""The service proxy: /api/v1/namespaces/NS/services/[SCHEME:]NAME[:PORT]/proxy/PATH, as kube's.

A request is forwarded to an address of the Service's Endpoints object (same name): the port
whose name or number the URL gives (else the Service's only port), mapped through targetPort to
the endpoint's port of the same name. Like kube-apiserver, the caller's Authorization header is
not passed on (it authenticated the caller to this server, not to the backend), hop-by-hop
headers are dropped, and a Service without a ready address answers 503.

Nothing here knows what serves behind a Service: whoever runs a backend registers the Service
and its Endpoints through the API like any client would.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web

from cdl.devcluster.errors import ApiError

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
                        "transfer-encoding", "upgrade", "host", "authorization", "content-length"})
RESPONSE_DROP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"})


def match(segs: list[str]) -> tuple[str, str, str] | None:
    """(namespace, service spec, rest of path) when the URL is a service proxy URL."""
    if len(segs) >= 7 and segs[:3] == ["api", "v1", "namespaces"] and segs[4] == "services" and segs[6] == "proxy":
        return segs[3], segs[5], "/".join(segs[7:])
    return None


def _parse_spec(spec: str) -> tuple[str, str, str]:
    """[scheme:]name[:port] -> (scheme, name, port)."""
    parts = spec.split(":")
    if len(parts) == 3:
        return parts[0] or "http", parts[1], parts[2]
    if len(parts) == 2:
        return "http", parts[0], parts[1]
    return "http", parts[0], ""


def resolve(cp: Any, namespace: str, spec: str) -> tuple[str, str]:
    """(scheme, host:port) of a ready endpoint of the Service."""
    scheme, name, port = _parse_spec(spec)
    services = cp.registry.lookup("", "v1", "services")
    endpoints = cp.registry.lookup("", "v1", "endpoints")
    service = cp.api.get(services, namespace, name).obj
    ports = (service.get("spec") or {}).get("ports") or []
    chosen = None
    for p in ports:
        if port and (p.get("name") == port or str(p.get("port")) == port):
            chosen = p
    if chosen is None and not port and len(ports) == 1:
        chosen = ports[0]
    if chosen is None:
        raise ApiError(503, f"no endpoints available for service \"{name}:{port}\"" if port else
                       f"service \"{name}\" has {len(ports)} ports: name one (services/{name}:PORT/proxy)")
    try:
        ep = cp.api.get(endpoints, namespace, name).obj
    except ApiError:
        raise ApiError(503, f"no endpoints available for service \"{name}\"") from None
    for subset in ep.get("subsets") or []:
        addresses = subset.get("addresses") or []
        ep_ports = subset.get("ports") or []
        target = next((p for p in ep_ports if p.get("name") == chosen.get("name")), None)
        if target is None and len(ep_ports) == 1:
            target = ep_ports[0]
        if addresses and target:
            return scheme, f"{addresses[0]['ip']}:{target['port']}"
    raise ApiError(503, f"no endpoints available for service \"{name}\"")


async def forward(cp: Any, request: web.Request, namespace: str, spec: str, rest: str) -> web.StreamResponse:
    scheme, address = resolve(cp, namespace, spec)
    if scheme not in ("http", "https"):
        raise ApiError(400, f"unsupported proxy scheme {scheme!r}: http or https")
    # The raw path keeps a trailing slash and percent-escapes as the client sent them.
    raw = request.raw_path.split("?", 1)[0]
    marker = f"/services/{spec}/proxy"
    tail = raw[raw.index(marker) + len(marker):] if marker in raw else "/" + rest
    url = f"{scheme}://{address}{tail or '/'}"
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    headers["X-Forwarded-Uri"] = request.raw_path
    body = await request.read()
    timeout = aiohttp.ClientTimeout(total=300, sock_connect=5)
    try:
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session, session.request(
                request.method, url, params=request.query, headers=headers, data=body or None,
                allow_redirects=False, ssl=False) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in RESPONSE_DROP:
                    response.headers.add(key, value)
            if "Content-Encoding" in upstream.headers:
                response.headers["Content-Encoding"] = upstream.headers["Content-Encoding"]
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(64 * 1024):
                await response.write(chunk)
            await response.write_eof()
            return response
    except aiohttp.ClientConnectionError as exc:
        raise ApiError(503, f"error trying to reach service: {exc}") from None
