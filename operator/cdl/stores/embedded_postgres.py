"""An embedded PostgreSQL server (pgserver: real PostgreSQL 16 binaries in a wheel).

The embedded platform (`cdl up`) and the tests use it instead of an external database. The data
directory persists: starting again on the same directory brings back the same data (and reuses a
server that another process already started on it). It listens on a Unix socket only, in the data
directory, so nothing is exposed on the network and no port has to be picked.

As root, pgserver runs PostgreSQL as a system user `pgserver` (created if missing) and opens read
and traverse permission (o+rx) on the data directory's parent folders so that user can reach it.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from cdl.stores.errors import StoreUnavailable

log = logging.getLogger(__name__)


def _import_pgserver() -> Any:
    # pgserver looks up a runtime folder for its lock file at import; without XDG_RUNTIME_DIR
    # (containers, CI) platformdirs warns and uses /tmp/runtime-<uid>, which is fine.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver
    return pgserver


class EmbeddedPostgres:
    """Start, reuse and stop a PostgreSQL server whose data lives in `data_dir`.

    `url` is a psycopg connection URI (Unix socket) to `database`, created on first start.
    Usable as a context manager (`with EmbeddedPostgres(dir) as pg: pg.url`) or held open by a
    long-running process (`start()` ... `stop()`); `start()` is idempotent and restarts a server
    that died. `stop()` stops the server once the last process using it lets go.
    """

    def __init__(self, data_dir: Path | str, database: str = "cdl") -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.database = database
        self._server: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedPostgres({self.data_dir}, database={self.database!r}, {state})"

    @property
    def log_path(self) -> Path:
        """PostgreSQL's own log (pgserver writes it inside the data directory)."""
        return self.data_dir / "log"

    @property
    def running(self) -> bool:
        server = self._server
        if server is None:
            return False
        try:
            return bool(server.get_postmaster_info().is_running())
        except Exception:  # noqa: BLE001 - a missing postmaster.pid means not running
            return False

    @property
    def url(self) -> str:
        if self._server is None:
            raise StoreUnavailable(f"embedded PostgreSQL in {self.data_dir} is not started")
        return str(self._server.get_uri(self.database))

    @property
    def pid(self) -> int | None:
        return self._server.get_pid() if self._server is not None else None

    def start(self) -> str:
        """Start (or attach to) the server and return the URL of `database`."""
        with self._lock:
            if self._server is not None and self.running:
                return self.url
            self._forget()
            pgserver = _import_pgserver()

            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            self._prune_dead_holders()
            try:
                self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
            except Exception as exc:  # pgserver raises CalledProcessError, TimeoutExpired, AssertionError
                raise StoreUnavailable(
                    f"embedded PostgreSQL in {self.data_dir} did not start: {exc}; see {self.log_path}") from exc
            self._ensure_database()
            log.info("embedded PostgreSQL running (pid %s) in %s", self.pid, self.data_dir)
            return self.url

    def stop(self) -> None:
        """Let go of the server; it stops when no other process holds it."""
        with self._lock:
            server, self._server = self._server, None
            if server is not None:
                server.cleanup()
                atexit.unregister(server._cleanup)
                log.info("embedded PostgreSQL in %s released", self.data_dir)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _ensure_database(self) -> None:
        admin = self._server.get_uri("postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if not exists:
                try:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
                except psycopg.errors.DuplicateDatabase:
                    pass  # another process created it at the same moment

    def _forget(self) -> None:
        """Drop pgserver's cached handle of a server that died, so get_server starts a new one."""
        if self._server is None:
            return
        import pgserver.postgres_server as ps

        with ps.PostgresServer._lock:
            ps.PostgresServer._instances.pop(self._server.pgdata, None)
            self._server.global_process_id_list.get_and_remove(os.getpid())
        atexit.unregister(self._server._cleanup)
        self._server = None

    def _prune_dead_holders(self) -> None:
        """Forget processes that held the server and died without letting go (killed, crashed);
        otherwise the server would never be stopped by the processes still alive."""
        holders_file = self.data_dir / ".handle_pids.json"
        if not holders_file.exists():
            return
        import pgserver.postgres_server as ps
        import psutil
        from pgserver.utils import DiskList

        holders = DiskList(holders_file)
        with ps.PostgresServer._lock:
            try:
                pids = holders.get()
            except ValueError:
                pids = None
            alive = [p for p in pids or [] if psutil.pid_exists(p)]
            if pids is None or alive != pids:
                holders.put(alive)
