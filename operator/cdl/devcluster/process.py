"""Start, find and stop a devcluster server: the API that `cdl up/down/status`, the embedded
platform and the tests share.

A background server is a detached child (`python -m cdl.devcluster serve`) in its own process
group, logging to `<data-dir>/devcluster.log`. The data directory holds everything about it:
`state.db` (the objects), `token`, `server.json` (pid, port; written by the server once it
listens), `port` (the last port, reused on the next start) and `kubeconfig`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cdl.devcluster.auth import load_or_create_token
from cdl.devcluster.tls import client_context
from cdl.files import make_private
from cdl.processes import alive, stop_group

LOG_NAME = "devcluster.log"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


class DevClusterError(RuntimeError):
    """The server could not be started, reached or stopped."""


@dataclass(frozen=True)
class ServerInfo:
    """Where a running server is and how to talk to it."""

    url: str
    token: str
    kubeconfig: Path
    pid: int
    port: int
    data_dir: Path
    log_file: Path | None = None
    ca_file: Path | None = None  # the CA that signed the server's certificate (None: plain HTTP)
    reused: bool = False  # start_background found it already running

    def env(self) -> dict[str, str]:
        """Environment variables that point kubectl, helm and the Python client here."""
        return {"KUBECONFIG": str(self.kubeconfig)}


# --- small HTTP helpers (stdlib only: usable before any client is configured) ----------------

def _ctx(ca_file: Path | None) -> ssl.SSLContext | None:
    return client_context(ca_file) if ca_file else None


def request(url: str, token: str, method: str = "GET", body: Any = None,
            content_type: str = "application/json", timeout: float = 10.0,
            ca_file: Path | None = None) -> tuple[int, Any]:
    """One API call; returns (status, parsed JSON body or text)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=_ctx(ca_file)) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def healthy(url: str, timeout: float = 2.0, ca_file: Path | None = None) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=timeout, context=_ctx(ca_file)) as resp:
            return resp.status == 200 and resp.read().strip() == b"ok"
    except (OSError, urllib.error.URLError):
        return False


def wait_healthy(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None,
                 ca_file: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        if healthy(url, timeout=1.0, ca_file=ca_file):
            return
        if proc is not None and proc.poll() is not None:
            raise DevClusterError(f"the devcluster server exited with code {proc.returncode}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    raise DevClusterError(f"the devcluster server at {url} did not become ready in {timeout:.0f} s")


# --- kubeconfig and CRDs ------------------------------------------------------------------------

def write_kubeconfig(path: Path, url: str, token: str, ca_file: Path | None = None, namespace: str = "default",
                     name: str = "cdl") -> Path:
    """A kubeconfig with one cluster, user and context named `cdl`, readable by its owner only."""
    cluster: dict[str, Any] = {"server": url}
    if ca_file is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_file.read_bytes()).decode()
    config = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": namespace}}],
        "current-context": name,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return path


def install_crds(url: str, token: str, crds_dir: Path, ca_file: Path | None = None) -> list[str]:
    """Create or update every CustomResourceDefinition in `crds_dir/*.yaml`; returns their names."""
    names: list[str] = []
    files = sorted([*crds_dir.glob("*.yaml"), *crds_dir.glob("*.yml")]) if crds_dir.is_dir() else []
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            name = doc["metadata"]["name"]
            status, body = request(f"{url}{CRD_PATH}", token, "POST", doc, ca_file=ca_file)
            if status == 409:
                status, current = request(f"{url}{CRD_PATH}/{name}", token, ca_file=ca_file)
                if status == 200:
                    doc.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
                    status, body = request(f"{url}{CRD_PATH}/{name}", token, "PUT", doc, ca_file=ca_file)
            if status not in (200, 201):
                message = body.get("message") if isinstance(body, dict) else body
                raise DevClusterError(f"installing CRD {name} from {path} failed ({status}): {message}")
            names.append(name)
    return names


# --- background process -------------------------------------------------------------------------



def _state(data_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((data_dir / "server.json").read_text())
    except (OSError, ValueError):
        return None


def read_status(data_dir: Path) -> ServerInfo | None:
    """The server running from `data_dir`, or None when there is none (or it is not healthy)."""
    data_dir = Path(data_dir).resolve()
    state = _state(data_dir)
    ca_file = Path(state["ca_file"]) if state and state.get("ca_file") else None
    if not state or not alive(int(state.get("pid", 0))) or not healthy(state["url"], ca_file=ca_file):
        return None
    token = (data_dir / "token").read_text().strip()
    kubeconfig = data_dir / "kubeconfig"
    if not kubeconfig.exists():
        write_kubeconfig(kubeconfig, state["url"], token, ca_file)
    return ServerInfo(state["url"], token, kubeconfig, int(state["pid"]), int(state["port"]), data_dir,
                      data_dir / LOG_NAME, ca_file)


def _port_free(port: int) -> bool:
    """Can the server bind `port`? Asked the way the server binds (SO_REUSEADDR): the connections
    a stopped server closed stay in TIME_WAIT for a minute, and do not stop it listening there."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def start_background(data_dir: Path, port: int | None = None, crds_dir: Path | None = None, *,
                     timeout: float = 30.0, extra_args: list[str] | None = None) -> ServerInfo:
    """Start a detached server for `data_dir` (or return the one already running), install the
    CRDs of `crds_dir`, write `<data_dir>/kubeconfig`. Raises DevClusterError on failure."""
    data_dir = Path(data_dir).resolve()
    make_private(data_dir)
    running = read_status(data_dir)
    if running is not None:
        if crds_dir is not None:
            install_crds(running.url, running.token, crds_dir, running.ca_file)
        return ServerInfo(**{**running.__dict__, "reused": True})
    state = _state(data_dir)
    if state and alive(int(state.get("pid", 0))):
        raise DevClusterError(f"a devcluster process (pid {state['pid']}) holds {data_dir} but is not healthy; "
                              "run `cdl down` first")
    (data_dir / "server.json").unlink(missing_ok=True)
    token = load_or_create_token(data_dir / "token")
    if port is None:
        try:
            previous = int((data_dir / "port").read_text())
        except (OSError, ValueError):
            previous = 0
        port = previous if previous and _port_free(previous) else 0
    log_file = data_dir / LOG_NAME
    cmd = [sys.executable, "-m", "cdl.devcluster", "serve", "--data-dir", str(data_dir), "--port", str(port),
           *(extra_args or [])]
    with os.fdopen(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    (data_dir / "server.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        state = _state(data_dir)
        if state and state.get("pid") == proc.pid:
            break
        if proc.poll() is not None:
            raise DevClusterError(f"the devcluster server exited with code {proc.returncode}; "
                                  f"see {log_file}:\n{_tail(log_file)}")
        if time.monotonic() > deadline:
            stop(data_dir)
            raise DevClusterError(f"the devcluster server did not start in {timeout:.0f} s; see {log_file}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)
    url = state["url"]
    ca_file = Path(state["ca_file"]) if state.get("ca_file") else None
    wait_healthy(url, max(1.0, deadline - time.monotonic()), proc, ca_file)
    (data_dir / "port").write_text(str(state["port"]))
    kubeconfig = write_kubeconfig(data_dir / "kubeconfig", url, token, ca_file)
    if crds_dir is not None:
        install_crds(url, token, crds_dir, ca_file)
    return ServerInfo(url, token, kubeconfig, proc.pid, int(state["port"]), data_dir, log_file, ca_file)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop(data_dir: Path, timeout: float = 10.0) -> bool:
    """Stop the server of `data_dir` (SIGTERM to its process group, SIGKILL after `timeout`).
    Returns False when nothing was running."""
    data_dir = Path(data_dir).resolve()
    pid = 0
    state = _state(data_dir)
    if state:
        pid = int(state.get("pid", 0))
    elif (data_dir / "server.pid").exists():
        with contextlib.suppress(ValueError, OSError):
            pid = int((data_dir / "server.pid").read_text())
    stopped = bool(pid) and stop_group(pid, grace=timeout)
    (data_dir / "server.json").unlink(missing_ok=True)
    (data_dir / "server.pid").unlink(missing_ok=True)
    return stopped




# --- in-process server (tests, the embedded platform) -------------------------------------------

@contextlib.contextmanager
def run_in_thread(data_dir: Path, port: int = 0, *, history_size: int = 10_000,
                  bookmark_interval: float = 20.0, crds_dir: Path | None = None,
                  tls: bool = True) -> Iterator[ServerInfo]:
    """Serve `data_dir` from a thread of this process with its own event loop; stops on exit."""
    from cdl.devcluster.server import Running, start_server

    data_dir = Path(data_dir).resolve()
    make_private(data_dir)
    token = load_or_create_token(data_dir / "token")
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    def runner() -> None:
        asyncio.set_event_loop(loop)
        try:
            holder["running"] = loop.run_until_complete(
                start_server(data_dir, token, "127.0.0.1", port, history_size, bookmark_interval, tls=tls))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            holder["error"] = e
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=runner, name="devcluster", daemon=True)
    thread.start()
    started.wait()
    if "error" in holder:
        raise DevClusterError(f"the devcluster server failed to start: {holder['error']}") from holder["error"]
    running: Running = holder["running"]
    url, ca_file = running.url, running.ca_file
    kubeconfig = write_kubeconfig(data_dir / "kubeconfig", url, token, ca_file)
    if crds_dir is not None:
        install_crds(url, token, crds_dir, ca_file)
    try:
        yield ServerInfo(url, token, kubeconfig, os.getpid(), running.port, data_dir, ca_file=ca_file)
    finally:
        asyncio.run_coroutine_threadsafe(running.stop(), loop).result(timeout=15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=15)
        loop.close()
