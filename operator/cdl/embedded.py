"""The embedded platform's other components, started by `cdl up` after the API server:
an embedded PostgreSQL (pgserver) and the operator with the local engines, each a background
process in its own process group with a log file and a pidfile under the data dir."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from cdl.config import DEFAULT_ENGINES
from cdl.processes import alive, stop_group

KB_SERVICE = "cdl-system/cdl-kb"


@dataclass
class Component:
    name: str
    pid: int | None
    running: bool
    log: Path
    detail: str = ""


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _stop_group(pidfile: Path, timeout: float = 15) -> bool:
    pid = _pid(pidfile)
    stopped = bool(pid) and stop_group(pid, grace=timeout)
    pidfile.unlink(missing_ok=True)
    return stopped


# --------------------------------------------------------------------------- PostgreSQL


def start_postgres(data_dir: Path) -> str:
    """Start (or find) the embedded PostgreSQL; return its URL, also written to DIR/postgres.url."""
    url_file = data_dir / "postgres.url"
    pidfile = data_dir / "postgres.pid"
    if url_file.exists() and alive(_pid(pidfile)):
        return url_file.read_text().strip()
    log = data_dir / "logs" / "postgres.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cdl.embedded", "postgres", str(data_dir)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    pidfile.write_text(str(proc.pid))
    deadline = time.monotonic() + 60
    url_file.unlink(missing_ok=True)
    while time.monotonic() < deadline:
        if url_file.exists():
            return url_file.read_text().strip()
        if proc.poll() is not None:
            raise RuntimeError(f"embedded PostgreSQL exited; see {log}")
        time.sleep(0.1)
    raise RuntimeError(f"embedded PostgreSQL did not start in 60 s; see {log}")


def _serve_postgres(data_dir: Path) -> None:
    """The postgres keeper process: start pgserver, publish the URL, hold it until signalled."""
    from cdl.stores.embedded_postgres import EmbeddedPostgres

    stop = False

    def handle(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    with EmbeddedPostgres(data_dir / "postgres") as pg:
        (data_dir / "postgres.url").write_text(pg.url)
        while not stop:
            time.sleep(0.5)


# --------------------------------------------------------------------------- operator


def write_operator_config(data_dir: Path, base_dir: Path, database_url: str | None) -> Path:
    config = {
        "data_dir": str(data_dir),
        "base_dir": str(base_dir),
        "database_url": database_url,
        "artifact_url": (data_dir / "artifacts").as_uri(),
        "engines": dict(DEFAULT_ENGINES),
        "poll_seconds": 2.0,
        # The knowledge base on a free loopback port, reached through the devcluster's service
        # proxy at /api/v1/namespaces/cdl-system/services/cdl-kb:http/proxy/.
        "kb_port": 0,
        "kb_service": KB_SERVICE,
    }
    path = data_dir / "operator.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_operator(data_dir: Path, kubeconfig: Path, base_dir: Path, database_url: str | None) -> Component:
    pidfile = data_dir / "operator.pid"
    log = data_dir / "logs" / "operator.log"
    if alive(_pid(pidfile)):
        return Component("operator", _pid(pidfile), True, log, "already running")
    config = write_operator_config(data_dir, base_dir, database_url)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cdl.cli.main", "operator", "run", "--config", str(config),
             "--kubeconfig", str(kubeconfig), "-A"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=base_dir,
        )
    pidfile.write_text(str(proc.pid))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the operator exited with {proc.returncode}; see {log}")
        if "cdl operator starting" in log.read_text(errors="replace"):
            break
        time.sleep(0.2)
    return Component("operator", proc.pid, True, log)


def status(data_dir: Path) -> list[Component]:
    out = []
    for name in ("postgres", "operator"):
        pid = _pid(data_dir / f"{name}.pid")
        out.append(Component(name, pid, alive(pid), data_dir / "logs" / f"{name}.log"))
    return out


def stop_model_servers(data_dir: Path) -> bool:
    """Model servers run in their own process groups so they outlive an operator restart (the
    next operator adopts them); `cdl down` and test teardown stop them here."""
    root = data_dir / "serving"
    if not (root / "deployments").is_dir() or not any((root / "deployments").iterdir()):
        return False
    from cdl.engines.serving.local import LocalServingEngine

    LocalServingEngine(root, supervise=False).close(stop_servers=True)
    return True


STOPPED_MESSAGE = "the platform is stopped (cdl down): serving again at the same URL after cdl up"


def mark_deployments_stopped(data_dir: Path) -> int:
    """Write "Deploying" into the status of every Deployment that says otherwise (its servers are
    stopped with the platform), so no client trusts a stale "Available" after the next `cdl up`:
    the operator writes Available again once the URL answers. Returns how many were marked."""
    from cdl.devcluster import process
    from cdl.reconcile.base import set_condition

    info = process.read_status(data_dir)
    if info is None:
        return 0
    code, listing = process.request(f"{info.url}/apis/cdl.dev/v1alpha1/deployments", info.token,
                                    ca_file=info.ca_file)
    if code != 200 or not isinstance(listing, dict):
        return 0
    marked = 0
    for item in listing.get("items") or []:
        current = item.get("status") or {}
        if current.get("phase") in (None, "Deploying", "Failed"):
            continue
        meta = item["metadata"]
        patch: dict[str, object] = {"phase": "Deploying", "message": STOPPED_MESSAGE}
        set_condition(patch, current, "Ready", False, "PlatformStopped", STOPPED_MESSAGE,
                      int(meta.get("generation") or 0))
        code, _ = process.request(
            f"{info.url}/apis/cdl.dev/v1alpha1/namespaces/{meta['namespace']}/deployments/{meta['name']}/status",
            info.token, "PATCH", {"status": patch}, content_type="application/merge-patch+json", ca_file=info.ca_file)
        marked += code == 200
    return marked


def stop_component(data_dir: Path, name: str) -> bool:
    """Stop one component (operator or postgres) by process group; True if it was running."""
    return _stop_group(data_dir / f"{name}.pid")


def stop(data_dir: Path) -> list[str]:
    """Stop the operator, then PostgreSQL; return the names of what was stopped."""
    stopped = []
    for name in ("operator", "postgres"):
        if _stop_group(data_dir / f"{name}.pid"):
            stopped.append(name)
    return stopped


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "postgres":
        _serve_postgres(Path(sys.argv[2]))
    else:
        sys.exit("usage: python -m cdl.embedded postgres DATA_DIR")
