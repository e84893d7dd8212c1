"""A light list-and-watch of the four kinds that feeds `Controller.observe` directly.

Why not kopf's watch: at 10,000 resources kopf's per-event machinery (a task and a logger per
object, causes, handler matching, diff bases, its finalizer patch) took about 60 % of the
operator's CPU while a bulk converged (py-spy, bench/operator_bench.py), and that CPU is what a
newly applied resource waited for. Here an event costs one JSON parse and a dictionary update.
One thread per kind and namespace lists the objects in pages, then follows the watch stream
from the list's resourceVersion with bookmarks, resuming where it left off after a timeout or a
dropped connection and listing again when the server says the version is gone (410); a list
reports what vanished while nobody watched as deletions. One stream per namespace (as kopf
had): a namespace creating thousands of objects does not put its events ahead of another
namespace's in a shared stream. With all namespaces (or globs) watched, `ResourceWatches` also
watches the Namespaces and starts and stops the streams as namespaces come and go.
Finalizers and deletion are the controller's (`Controller.process`), not the watch's.
"""

from __future__ import annotations

import fnmatch
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cdl.api.kinds import KindInfo

log = logging.getLogger("cdl.controller.watch")

PAGE_SIZE = 500
WATCH_SECONDS = 60  # the server ends each watch request after about this long; it is resumed
READ_TIMEOUT = WATCH_SECONDS + 30  # a silent connection for longer than this is dead
MAX_BACKOFF = 10.0
POOL_SIZE = 256  # connections kept for reuse (4 streams per watched namespace)

Observe = Callable[[str, str | None, dict[str, Any]], None]


class Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


class ListWatch:
    """List-and-watch of one collection in its own thread: `handle(type, body)` gets every object
    of a list (type None) and every watch event; `relisted(seen)` the keys a fresh list held."""

    def __init__(self, name: str, request: Callable[..., Any], handle: Callable[[str | None, dict[str, Any]], None],
                 relisted: Callable[[set[tuple[str, str]]], None]) -> None:
        self.name = name
        self.request = request  # the list call, with _preload_content=False
        self.handle = handle
        self.relisted = relisted
        self.resource_version: str | None = None
        self._stopping = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name=f"cdl-watch-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def signal_stop(self) -> None:
        self._stopping.set()
        response = self._response
        if response is not None:  # unblock the read of a quiet stream
            try:
                response.shutdown()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def stop(self, timeout: float = 5.0) -> None:
        self.signal_stop()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                if self.resource_version is None:
                    self.resource_version = self._list()
                self._watch()
                failures = 0
            except Gone:
                self.resource_version = None
            except Exception as exc:  # noqa: BLE001 - the API server restarts, networks drop: go on
                if self._stopping.is_set():
                    return
                failures += 1
                delay = min(MAX_BACKOFF, 0.5 * 2 ** (failures - 1)) * random.uniform(0.8, 1.2)
                log.warning("watch of %s: %s; again in %.1f s", self.name, exc, delay)
                if isinstance(exc, ApiException) and exc.status == 410:
                    self.resource_version = None
                self._stopping.wait(delay)

    def _list(self) -> str:
        seen: set[tuple[str, str]] = set()
        token = None
        while True:
            response = self.request(limit=PAGE_SIZE, _continue=token, _request_timeout=(10, READ_TIMEOUT))
            page = orjson.loads(response.data)
            for body in page.get("items") or []:
                meta = body["metadata"]
                seen.add((meta.get("namespace") or "", meta["name"]))
                self.handle(None, body)
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                break
        self.relisted(seen)
        return page["metadata"]["resourceVersion"]

    def _watch(self) -> None:
        response = self.request(watch=True, resource_version=self.resource_version, allow_watch_bookmarks=True,
                                timeout_seconds=int(WATCH_SECONDS * random.uniform(0.9, 1.1)),
                                _request_timeout=(10, READ_TIMEOUT))
        self._response = response
        try:
            for line in _lines(response):
                if self._stopping.is_set():
                    return
                event = orjson.loads(line)
                kind, body = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if body.get("code") == 410:
                        raise Gone()
                    raise RuntimeError(f"the API server ended the watch: {body.get('message') or body}")
                version = (body.get("metadata") or {}).get("resourceVersion")
                if version:
                    self.resource_version = version
                if kind != "BOOKMARK":
                    self.handle(kind, body)
        finally:
            self._response = None
            response.release_conn()


def _lines(response: Any) -> Iterator[bytes]:
    """The newline-separated JSON events of a watch response, as bytes."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


def _params(params: dict[str, Any], label_selector: str | None) -> dict[str, Any]:
    params = {k: v for k, v in params.items() if v is not None}
    if label_selector:
        params["label_selector"] = label_selector
    return params


class ResourceWatches:
    """The watches of the four kinds for one operator: one stream per kind and namespace, for
    the listed namespaces, or for every namespace there is (or that matches a listed glob)."""

    def __init__(self, kinds: list[KindInfo], observe: Observe,
                 known: Callable[[str, str | None], set[tuple[str, str]]], namespaces: list[str] | None = None,
                 label_selector: str | None = None, api_client: client.ApiClient | None = None) -> None:
        self.kinds = kinds
        self.observe = observe
        self.known = known  # (kind, namespace) -> the (namespace, name) the controller holds
        self.label_selector = label_selector
        if api_client is None:  # its own pool, kept large enough for one connection per stream
            configuration = client.Configuration.get_default_copy()
            configuration.connection_pool_maxsize = POOL_SIZE
            api_client = client.ApiClient(configuration)
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(self.api_client)
        names = list(namespaces or []) or ["*"]
        self.patterns = [n for n in names if any(c in n for c in "*?[")]
        self.fixed = [n for n in names if n not in self.patterns]
        self.by_namespace: dict[str, list[ListWatch]] = {}
        self.lock = threading.Lock()
        self.follower: ListWatch | None = None
        self._stopped = False

    def start(self) -> None:
        for namespace in self.fixed:
            self.follow(namespace)
        if self.patterns:
            core = client.CoreV1Api(self.api_client)
            self.follower = ListWatch("namespaces", lambda **p: core.list_namespace(_preload_content=False, **_params(p, None)),
                                      self._namespace_event, self._namespaces_listed)
            self.follower.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self.lock:
            self._stopped = True
            watches = [w for ws in self.by_namespace.values() for w in ws]
            self.by_namespace.clear()
        if self.follower is not None:
            watches.append(self.follower)
        for w in watches:
            w.signal_stop()
        # One deadline for all: a thread blocked on an API server that went away (a connect that
        # hangs) is left to end on its own; it only feeds the controller being stopped.
        deadline = time.monotonic() + timeout
        for w in watches:
            w.stop(max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ namespaces

    def follow(self, namespace: str) -> None:
        with self.lock:
            if self._stopped or namespace in self.by_namespace:
                return
            watches = self.by_namespace[namespace] = [self._kind_watch(info, namespace) for info in self.kinds]
        for w in watches:
            w.start()

    def unfollow(self, namespace: str) -> None:
        with self.lock:
            watches = self.by_namespace.pop(namespace, [])
        for w in watches:
            w.signal_stop()  # not joined: this may be the follower's thread, which must go on

    def _matches(self, namespace: str) -> bool:
        return namespace in self.fixed or any(fnmatch.fnmatchcase(namespace, p) for p in self.patterns)

    def _namespace_event(self, kind: str | None, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if not self._matches(name):
            return
        if kind == "DELETED":
            self.unfollow(name)
        else:
            self.follow(name)

    def _namespaces_listed(self, seen: set[tuple[str, str]]) -> None:
        present = {name for _, name in seen}
        with self.lock:
            gone = [n for n in self.by_namespace if n not in present and n not in self.fixed]
        for namespace in gone:
            self.unfollow(namespace)

    # ------------------------------------------------------------------ one kind in one namespace

    def _kind_watch(self, info: KindInfo, namespace: str) -> ListWatch:
        def request(**params: Any) -> Any:
            return self.custom.list_namespaced_custom_object(info.group, info.version, namespace, info.plural,
                                                             _preload_content=False,
                                                             **_params(params, self.label_selector))

        def handle(kind: str | None, body: dict[str, Any]) -> None:
            self.observe(info.kind, kind, body)

        def relisted(seen: set[tuple[str, str]]) -> None:
            for ns, name in self.known(info.kind, namespace) - seen:
                self.observe(info.kind, "DELETED", {"metadata": {"namespace": ns, "name": name}})

        return ListWatch(f"{info.plural}-{namespace}", request, handle, relisted)
