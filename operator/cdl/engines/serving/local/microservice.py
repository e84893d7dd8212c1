"""One seldon-core-microservice process serving one ModelVersion package with `CdlPredictor`.

The process runs from the seldon environment in a folder holding the wrapper (`CdlPredictor.py`
and a copy of `cdl.runtime`), in its own process group (gunicorn forks workers and seldon a
metrics process: stopping the group stops them all), with its log in a file. A process started by
an earlier operator is adopted by pid and start time, so a restarted operator neither loses nor
duplicates servers.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from cdl import processes

LOAD_ERROR_MARK = "CDL-LOAD-ERROR:"  # written by cdl.runtime.serving when a package fails to load
WRAPPER_MODULE = "CdlPredictor"
STOP_GRACE_S = 5.0
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*)?(?:Error|Exception|Exit|Interrupt)\b.*?:\s*\S")


def free_port(host: str = "0.0.0.0") -> int:
    """A port nothing listens on now (seldon binds every interface, so check them all)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def prepare_wrapper_dir(target: Path) -> Path:
    """The folder the microservice runs from: `CdlPredictor.py` re-exporting the wrapper class, and
    a copy of `cdl.runtime` (standard library and numpy only) so the seldon environment needs no
    cdl install. Rewritten only when a file changed (running servers keep what they imported)."""
    import cdl.runtime

    runtime_src = Path(cdl.runtime.__file__).parent
    files: dict[Path, bytes] = {
        target / f"{WRAPPER_MODULE}.py": (
            b'"""Entry module for `seldon-core-microservice CdlPredictor` (written by cdl)."""\n'
            b"from cdl.runtime.serving import CdlPredictor\n\n__all__ = [\"CdlPredictor\"]\n"
        ),
        target / "cdl" / "__init__.py": b'"""The part of cdl that runs beside user code (copied by cdl)."""\n',
    }
    for src in sorted(runtime_src.glob("*.py")):
        files[target / "cdl" / "runtime" / src.name] = src.read_bytes()
    for path, content in files.items():
        if not path.exists() or path.read_bytes() != content:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(content)
            tmp.replace(path)
    return target


@dataclass
class ServerState:
    """What is remembered about one server process (in the Deployment's state file)."""

    id: str
    model_version: str
    sha256: str
    predictor: str
    package_dir: str
    replica: int = 0
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    pid: int | None = None
    create_time: float | None = None
    log: str = ""
    restarts: int = 0
    failures: int = 0  # consecutive exits without becoming healthy
    ready: bool = False
    ever_ready: bool = False
    last_exit: str | None = None
    next_start: float = 0.0  # wall clock: when a crashed server may start again (backoff)
    extra: dict[str, Any] = field(default_factory=dict)
    server: str = "seldon"  # seldon (seldon-core-microservice) | mlserver (Open Inference Protocol)
    model_name: str = ""  # MLServer's model name (the Deployment's name)
    max_batch_size: int = 0  # MLServer adaptive batching
    max_batch_time_ms: float = 0.0

    def wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ServerState:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def predict_url(self) -> str:
        if self.server == "mlserver":
            return f"{self.url}/v2/models/{self.model_name}/infer"
        return f"{self.url}/api/v1.0/predictions"


class Microservice:
    """Start, watch, health-check and stop one seldon-core-microservice process."""

    def __init__(self, state: ServerState, venv: Path, wrapper_dir: Path, log_dir: Path, *, workers: int = 2,
                 threads: int = 2, env: dict[str, str] | None = None) -> None:
        self.state = state
        self.venv = venv.resolve()
        self.wrapper_dir = wrapper_dir.resolve()
        self.log_dir = log_dir
        self.workers = workers
        self.threads = threads
        self.extra_env = dict(env or {})
        self._popen: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ process

    def command(self) -> list[str]:
        s = self.state
        return [
            # seldon-core-microservice, bound to 127.0.0.1: the router is the only door
            str(self.venv / "bin" / "python"), "-m", "cdl.runtime.microservice_loopback", WRAPPER_MODULE,
            "--service-type", "MODEL",
            "--http-port", str(s.http_port), "--grpc-port", str(s.grpc_port), "--metrics-port", str(s.metrics_port),
            # two threads make gunicorn's gthread worker, which keeps connections alive: the
            # router's pool reuses them (a sync worker answers `Connection: close`, and the router
            # then paid a new connection per request: about twice its CPU per request, measured);
            # one gRPC process (seldon.protos.Seldon/Predict, behind the router's gRPC side)
            "--workers", str(self.workers), "--threads", str(self.threads),
            "--grpc-workers", "1", "--grpc-threads", str(self.threads),
        ]

    def environment(self) -> dict[str, str]:
        drop = ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(
            PATH=f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            VIRTUAL_ENV=str(self.venv),
            PYTHONPATH=str(self.wrapper_dir),
            PYTHONUNBUFFERED="1",
            CDL_MODEL_PACKAGE=self.state.package_dir,
            CDL_PREDICTOR=self.state.predictor,
            CDL_MODEL_VERSION=self.state.model_version,
            OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),  # one thread per worker: workers are the parallelism
            MKL_NUM_THREADS=env.get("MKL_NUM_THREADS", "1"),
            # Keras 3 predictors run on torch here: tensorflow cannot share seldon-core's environment
            KERAS_BACKEND=env.get("KERAS_BACKEND", "torch"),
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        """Start the process (new ports if none yet). Returns at once: `healthy()` says when it serves."""
        s = self.state
        if not (s.http_port and s.grpc_port and s.metrics_port):
            s.http_port, s.grpc_port, s.metrics_port = _three_ports()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{s.id}.log"
        if log_path.exists() and log_path.stat().st_size > 5_000_000:
            shutil.move(log_path, log_path.with_suffix(".log.1"))
        with open(log_path, "ab") as log:
            log.write(f"\n==== cdl: starting {s.id} ({s.model_version}) at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
                      .encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.command(), cwd=self.wrapper_dir, env=self.environment(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        s.pid = self._popen.pid
        s.log = str(log_path)
        s.ready = False
        try:
            s.create_time = psutil.Process(s.pid).create_time()
        except psutil.Error:
            s.create_time = None

    def alive(self) -> bool:
        s = self.state
        if self._popen is not None and self._popen.pid == s.pid:
            return self._popen.poll() is None
        return process_alive(s.pid, s.create_time)

    def exit_code(self) -> int | None:
        if self._popen is not None and self._popen.pid == self.state.pid:
            return self._popen.poll()
        return None

    def healthy(self, timeout: float = 1.0) -> bool:
        """REST answers, and the gRPC process listens (it loads the model before it listens, so
        a Deployment is not Available while gRPC calls would still be refused)."""
        try:
            with urllib.request.urlopen(f"{self.state.url}/health/ping", timeout=timeout) as resp:
                if resp.status != 200:
                    return False
        except (OSError, urllib.error.URLError):
            return False
        if not self.state.grpc_port:
            return True
        try:
            with socket.create_connection(("127.0.0.1", self.state.grpc_port), timeout=timeout):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        stop_group(self.state.pid, self.state.create_time)
        if self._popen is not None:
            try:
                self._popen.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        self.state.ready = False

    def load_error(self) -> str | None:
        return load_error_from_log(Path(self.state.log)) if self.state.log else None


def _three_ports() -> tuple[int, int, int]:
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    a, b, c = sorted(ports)
    return a, b, c


def process_alive(pid: int | None, create_time: float | None) -> bool:
    """Whether the process we started is still there (not a new one that reuses its pid)."""
    return processes.alive(pid, create_time)


def stop_group(pid: int | None, create_time: float | None, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the process group led by pid, then SIGKILL what is left after `grace` seconds."""
    processes.stop_groups([(pid, create_time)], grace)


def stop_groups(servers: list[tuple[int | None, float | None]], grace: float = STOP_GRACE_S) -> None:
    """Stop several servers at once (a Deployment's servers stop in the time of one)."""
    processes.stop_groups(servers, grace)


def load_error_from_log(path: Path, tail_bytes: int = 200_000) -> str | None:
    """Why the model did not load, from the server's log: the wrapper's CDL-LOAD-ERROR line, else
    the last exception line of the last start, else None."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - tail_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    last_start = text.rfind("==== cdl: starting")
    if last_start > 0:
        # the last run says nothing yet (restarting): the previous run's reason still holds
        previous = text[:last_start]
        current = text[last_start:]
        text = current if (LOAD_ERROR_MARK in current or _exception_line(current)) else previous
    marks = [line for line in text.splitlines() if LOAD_ERROR_MARK in line]
    if marks:
        return marks[-1].split(LOAD_ERROR_MARK, 1)[1].strip().split(" (package ")[0]
    return _exception_line(text)


def _exception_line(text: str) -> str | None:
    for line in reversed(text.splitlines()):
        stripped = line.strip()
        if _ERROR_LINE.match(stripped):
            return stripped[:500]
    return None
