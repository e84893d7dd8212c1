"""Fixtures for the stores: a real PostgreSQL (pgserver) and a real S3 endpoint (moto's server).

Session-scoped servers, started once and stopped at the end (moto by process group); their logs
are attached to the report of any test that used them and failed.

- `postgres_url`: URL of an embedded PostgreSQL (database `cdl_test`) in a temporary directory.
- `postgres_schema`: a fresh, empty schema name for one test, dropped afterwards.
- `database`: a `cdl.stores.postgres.Database` on that fresh schema, migrated.
- `s3_server`: moto's S3 server on 127.0.0.1 (`.endpoint`, `.access_key`, `.secret_key`, `.settings`).
- `s3_store`, `file_store`: an empty artifact store per test (a fresh bucket; a temporary directory).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cdl.processes import stop_group

# fixture name -> (section title, log file) for failure reports
_SERVER_LOGS: dict[str, tuple[str, Path]] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    if report.failed:
        for fixture, (title, path) in list(_SERVER_LOGS.items()):
            if fixture in getattr(item, "fixturenames", ()) and path.is_file():
                report.sections.append((f"{title} log ({path})", _tail(path)))
    return report


def _tail(path: Path, lines: int = 80) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<unreadable: {exc}>"
    return "\n".join(text[-lines:])


# ---------------------------------------------------------------------------------------------
# PostgreSQL


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """An embedded PostgreSQL 16 (database `cdl_test`), started once per session.

    Its data lives in a fresh folder directly under the system temp dir rather than under pytest's
    basetemp: as root, PostgreSQL runs as the `pgserver` user, which must traverse every parent
    folder, and each pytest session resets /tmp/pytest-of-<user> to 0700.
    """
    from cdl.stores.embedded_postgres import EmbeddedPostgres

    base = Path(tempfile.mkdtemp(prefix="cdl-test-pg-"))
    pg = EmbeddedPostgres(base / "data", database="cdl_test")
    _SERVER_LOGS["postgres_url"] = ("PostgreSQL", pg.log_path)
    try:
        yield pg.start()
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_schema(postgres_url: str) -> Iterator[str]:
    """A schema name no one has used yet; whatever a test creates in it is dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def database(postgres_url: str, postgres_schema: str):
    """A migrated `Database` on a fresh schema of the session's PostgreSQL."""
    from cdl.stores.postgres import Database

    db = Database(postgres_url, schema=postgres_schema)
    db.migrate()
    yield db
    db.close()


# ---------------------------------------------------------------------------------------------
# S3 (moto server)


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    access_key: str
    secret_key: str
    region: str
    log_path: Path
    pid: int

    @property
    def settings(self):
        from cdl.stores.artifacts import S3Settings

        return S3Settings(endpoint=self.endpoint, access_key=self.access_key, secret_key=self.secret_key,
                          secure=False, region=self.region)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_server() -> str:
    beside = Path(sys.executable).parent / "moto_server"
    found = str(beside) if beside.exists() else shutil.which("moto_server")
    if not found:
        pytest.fail("moto_server not found: install the dev extra (pip install -e '.[dev]')")
    return found


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3-compatible server on 127.0.0.1, in its own process group."""
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    port = _free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([_moto_server(), "-p", str(port), "-H", "127.0.0.1"], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    _SERVER_LOGS["s3_server"] = ("moto S3 server", log_path)
    server = S3Server(endpoint=f"http://127.0.0.1:{port}", access_key="testing", secret_key="testing",
                      region="us-east-1", log_path=log_path, pid=proc.pid)
    try:
        _wait_healthy(proc, f"{server.endpoint}/moto-api/", log_path)
        yield server
    finally:
        stop_group(proc)


def _wait_healthy(proc: subprocess.Popen, url: str, log_path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"moto_server exited with {proc.returncode} before it was ready:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    pytest.fail(f"moto_server not ready at {url} within {timeout:.0f} s:\n{_tail(log_path)}")


@pytest.fixture
def s3_store(s3_server: S3Server):
    """An empty S3 artifact store: a fresh bucket (created on first write) under prefix `artifacts`."""
    from cdl.stores.opener import open_artifact_store

    return open_artifact_store(f"s3://cdl-test-{uuid.uuid4().hex[:12]}/artifacts", s3_server.settings)


@pytest.fixture
def file_store(tmp_path: Path):
    """An empty filesystem artifact store in the test's temporary directory."""
    from cdl.stores.opener import open_artifact_store

    return open_artifact_store((tmp_path / "artifacts").as_uri())
