"""Fixtures for the serving engine: the seldon environment, small trained model packages, a
session-scoped LocalServingEngine (its servers shared by the tests) and a migrated database.

- `seldon_venv`: `.venvs/seldon`, created once (about a minute and a half the first time).
- `serving_packages`: toy model packages trained at session start (`tests/fixtures/serving/`):
  `v1` primary, `v2` canary, `v3` shadow, `broken` (its weights are missing, so loading fails).
- `serving_database`: a `Database` on a schema of its own in the session's PostgreSQL.
- `serving_engine`: a LocalServingEngine writing Scoring Data to `serving_database`; every
  Deployment it runs is deleted (processes stopped by group) at the end of the session.
- `serving_deploy`: apply a Deployment on `serving_engine` and wait until it is Available.
- `serving_post`: POST a body to an endpoint, returning (status, JSON body, headers).

The logs of the routers and model servers are attached to the report of a failed test.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cdl.engines.base import ResourceKey, ServedModel, ServingRequest, ServingStatus
from tests.fixtures.serving.build import NUMPY_PREDICTOR, BuiltPackage, build_package

_ENGINES: list[Any] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    if report.failed and "serving_engine" in getattr(item, "fixturenames", ()):
        for engine in _ENGINES:
            for dep in list(engine._deployments.values()):
                text = engine.logs(dep.key, tail=40)
                if text:
                    report.sections.append((f"serving logs of {dep.key}", text))
    return report


@pytest.fixture(scope="session")
def seldon_venv() -> Path:
    """The seldon environment (built on first use; `scripts/setup-seldon.sh` builds it up front)."""
    from cdl.engines.serving.local.venv import ensure_seldon_venv

    return ensure_seldon_venv()


@pytest.fixture(scope="session")
def serving_packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltPackage]:
    dest = tmp_path_factory.mktemp("serving-packages")
    return {
        "v1": build_package(dest, "toy", 1, seed=0),
        "v2": build_package(dest, "toy", 2, seed=1),
        "v3": build_package(dest, "toy", 3, seed=2),
        "broken": build_package(dest, "toy-broken", 1, seed=0, broken=True),
    }


@pytest.fixture(scope="session")
def serving_database(postgres_url: str) -> Iterator[Any]:
    import psycopg
    from psycopg import sql

    from cdl.stores.postgres import Database

    schema = f"serving_{uuid.uuid4().hex[:10]}"
    db = Database(postgres_url, schema=schema)
    db.migrate()
    yield db
    db.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(scope="session")
def serving_engine(tmp_path_factory: pytest.TempPathFactory, seldon_venv: Path, serving_database: Any) -> Iterator[Any]:
    from cdl.engines.serving.local import LocalServingEngine

    engine = LocalServingEngine(tmp_path_factory.mktemp("serving-engine"), database=serving_database,
                                venv_dir=seldon_venv, poll_seconds=0.2)
    _ENGINES.append(engine)
    try:
        yield engine
    finally:
        engine.close(stop_servers=True)
        _ENGINES.remove(engine)


def served(pkg: BuiltPackage, role: str = "primary", percent: int = 100,
           predictor: str = NUMPY_PREDICTOR) -> ServedModel:
    """A ServedModel of a test package (the numpy predictor unless told: it starts fastest)."""
    return ServedModel(pkg.model_version, pkg.uri, pkg.sha256, predictor, role, percent)


@pytest.fixture(scope="session")
def serving_deploy(serving_engine: Any) -> Callable[..., tuple[ResourceKey, ServingStatus]]:
    """deploy(name, models, generation=1, replicas=1, sample_rate=1.0, wait=True)."""

    def deploy(name: str, models: list[ServedModel], generation: int = 1, *, replicas: int = 1,
               sample_rate: float = 1.0, wait: bool = True, timeout: float = 120.0) -> tuple[ResourceKey, ServingStatus]:
        key = ResourceKey("serving-test", name)
        serving_engine.apply(ServingRequest(key=key, generation=generation, models=models, replicas=replicas,
                                            sample_rate=sample_rate))
        status = serving_engine.wait_available(key, timeout) if wait else serving_engine.status(key)
        if wait:
            assert status.state == "Available", f"{key}: {status}\n{serving_engine.logs(key, 60)}"
        return key, status

    return deploy


def post(url: str, body: bytes | dict[str, Any] | list[Any], timeout: float = 30.0) -> tuple[int, Any, dict[str, str]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace")
        return exc.code, parsed, dict(exc.headers)


@pytest.fixture(scope="session")
def serving_post() -> Callable[..., tuple[int, Any, dict[str, str]]]:
    return post
