"""`cdl dashboard`: a local gateway to the Kubernetes API, as `kubectl proxy` is.

The browser talks to 127.0.0.1; the gateway forwards every request to the API server with the
user's kubeconfig credentials. So the dashboard (behind the service proxy path) and the actions
it makes (PATCH a ModelVersion's stage, a Deployment's model) run under the user's own RBAC,
never a back door of the operator.

Safety: on a loopback address only Host headers naming loopback are served (no DNS
rebinding); any other address needs a token (given once as ?token=, kept in a cookie). A
request that changes something must carry the X-Cdl-Dashboard header, which another site's page
cannot send without a CORS preflight that the gateway never grants.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import ssl
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from cdl.errors import CdlError

log = logging.getLogger("cdl.kb.gateway")
COOKIE = "cdl_dashboard_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DROP_REQUEST = frozenset({"host", "authorization", "cookie", "connection", "keep-alive", "transfer-encoding",
                          "content-length", "upgrade", "te", "x-cdl-kb-token", "accept-encoding"})
DROP_RESPONSE = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"})
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Upstream:
    """Where and how to reach the API server, from a kubeconfig."""

    server: str
    headers: dict[str, str]
    ssl: ssl.SSLContext | bool

    @classmethod
    def from_kubeconfig(cls, path: str | None) -> Upstream:
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=path) if path else client.ApiClient()
        conf = api.configuration
        headers = {}
        auth = conf.get_api_key_with_prefix("authorization") or conf.get_api_key_with_prefix("BearerToken")
        if auth:
            headers["Authorization"] = auth
        elif conf.username:
            headers["Authorization"] = conf.get_basic_auth_token()
        context: ssl.SSLContext | bool = False
        if conf.host.startswith("https"):
            context = ssl.create_default_context(cafile=conf.ssl_ca_cert)
            if not conf.verify_ssl:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if conf.cert_file:
                context.load_cert_chain(conf.cert_file, conf.key_file)
        return cls(conf.host.rstrip("/"), headers, context)


def build_app(upstream: Upstream, *, token: str | None, loopback: bool, kb_token: str | None = None) -> web.Application:
    session: dict[str, aiohttp.ClientSession] = {}

    async def start(app: web.Application) -> None:
        session["s"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                                             auto_decompress=False)

    async def stop(app: web.Application) -> None:
        await session["s"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        host = (request.host or "").rsplit(":", 1)[0] if not (request.host or "").startswith("[") else \
            (request.host or "").split("]")[0] + "]"
        if loopback and host not in LOOPBACK_HOSTS:
            return web.Response(status=403, text=f"host {request.host!r} refused: the gateway serves loopback names")
        set_cookie = False
        if token:
            given = request.cookies.get(COOKIE) or request.headers.get("X-Cdl-Dashboard-Token") or ""
            if request.query.get("token"):
                given, set_cookie = request.query["token"], True
            if not hmac.compare_digest(given.encode(), token.encode()):
                return web.Response(status=401, text="unauthorized: open the URL with ?token=... that "
                                                     "`cdl dashboard` printed")
        if request.method not in SAFE_METHODS and request.headers.get("X-Cdl-Dashboard") != "1":
            return web.Response(status=403, text="a change must come from the dashboard (X-Cdl-Dashboard header)")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROP_REQUEST}
        headers.update(upstream.headers)
        if kb_token and "/services/" in request.path and "/proxy" in request.path:
            headers["X-Cdl-Kb-Token"] = kb_token
        query = [(k, v) for k, v in request.query.items() if not (token and k == "token")]
        body = await request.read()
        try:
            async with session["s"].request(request.method, upstream.server + request.path, params=query,
                                            headers=headers, data=body or None, ssl=upstream.ssl,
                                            allow_redirects=False) as resp:
                out = web.StreamResponse(status=resp.status, reason=resp.reason)
                for k, v in resp.headers.items():
                    if k.lower() not in DROP_RESPONSE:
                        out.headers.add(k, v)
                if "Content-Encoding" in resp.headers:
                    out.headers["Content-Encoding"] = resp.headers["Content-Encoding"]
                if set_cookie:
                    out.set_cookie(COOKIE, token or "", httponly=True, samesite="Strict")
                await out.prepare(request)
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    await out.write(chunk)
                await out.write_eof()
                return out
        except aiohttp.ClientError as exc:
            return web.Response(status=502, text=f"the Kubernetes API at {upstream.server} is unreachable: {exc}")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def check_address(address: str, token: str | None) -> None:
    if not is_loopback(address) and not token:
        raise CdlError(f"--address {address}: not a loopback address; pass --token to serve there "
                       "(everyone who can reach it acts with your Kubernetes credentials)")


def dashboard_path(service: str | None = None) -> str:
    from cdl.kb.client import service_path

    return service_path(service) + "/ui/"


async def serve(upstream: Upstream, address: str, port: int, token: str | None,
                kb_token: str | None = None) -> tuple[web.AppRunner, int]:
    check_address(address, token)
    runner = web.AppRunner(build_app(upstream, token=token, loopback=is_loopback(address), kb_token=kb_token),
                           access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, address, port)
    await site.start()
    sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
    return runner, sockets[0].getsockname()[1] if sockets else port
