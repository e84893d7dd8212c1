"""Fixtures for running the real cdl operator (kopf) in-process against the embedded API server."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cdl_crds(devcluster, kubectl):
    """The cdl CRDs installed into the session's embedded API server."""
    out = kubectl("apply", "-f", str(ROOT / "crds"))
    assert out.returncode == 0, out.stderr
    for crd in ("datapipelines", "experiments", "modelversions", "deployments"):
        kubectl("wait", "--for=condition=Established", f"crd/{crd}.cdl.dev", "--timeout=30s")
    return devcluster


@pytest.fixture
def k8s(cdl_crds):
    """kubernetes.client CustomObjectsApi and CoreV1Api for the embedded API server."""
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=str(cdl_crds.kubeconfig))
    yield client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
    api_client.close()


@pytest.fixture
def namespace(k8s, request) -> str:
    """A fresh namespace per test."""
    from kubernetes import client

    _, core = k8s
    name = f"t-{request.node.name.lower().replace('_', '-')[:40].strip('-')}-{int(time.time() * 1000) % 100000}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


@contextmanager
def running_operator(devcluster, data_dir: Path, overrides: dict[str, dict[str, Any]] | None = None,
                     **config: Any) -> Iterator[threading.Thread]:
    """The real operator (kopf + reconcilers) in a thread; stopped and joined on exit."""
    from cdl.config import OperatorConfig
    from cdl.controller.operator import run

    cfg = OperatorConfig.load(env={})
    cfg.data_dir = data_dir
    cfg.base_dir = ROOT
    cfg.poll_seconds = config.pop("poll_seconds", 0.5)
    for key, value in config.items():
        setattr(cfg, key, value)
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run(cfg, kubeconfig=str(devcluster.kubeconfig), overrides=overrides, stop_flag=stop, ready_flag=ready)
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=target, name="cdl-operator", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not ready.is_set() and not errors and time.monotonic() < deadline:
        time.sleep(0.05)
    if errors:
        raise errors[0]
    assert ready.is_set(), "operator did not start within 30 s"
    try:
        yield thread
    finally:
        stop.set()
        thread.join(timeout=30)
        from cdl.embedded import stop_model_servers

        stop_model_servers(data_dir)  # servers outlive an operator by design; not a test's
        if errors:
            raise errors[0]


@pytest.fixture
def operator_runner(cdl_crds):
    return lambda data_dir, overrides=None, **cfg: running_operator(cdl_crds, data_dir, overrides, **cfg)


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll until predicate() is truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


def kubectl_json(kubectl, *args: str) -> Any:
    import json

    out = kubectl(*args, "-o", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


__all__ = ["running_operator", "wait_for", "kubectl_json", "subprocess"]
