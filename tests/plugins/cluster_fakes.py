"""Fixtures for the cluster engines' contract tests: the protocol-level fakes of pachd, the
Determined master and Seldon's controller (cdl/simulation/), started per test and stopped after."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

DET_USER, DET_PASSWORD = "cdl-operator", "Op3rator-pass"
SELDON_CRD = Path(__file__).resolve().parents[2] / "crds" / "thirdparty" / "seldondeployment.yaml"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster_pachd(tmp_path: Path) -> Iterator[Any]:
    """A fake pachd on a free loopback port, without auth."""
    from cdl.simulation.pachd import FakePachd

    server = FakePachd(tmp_path / "pachd")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def cluster_pachd_with_auth(tmp_path: Path) -> Iterator[Any]:
    """A fake pachd with auth on: every call must carry the token `cdl-test-token`."""
    from cdl.simulation.pachd import FakePachd

    server = FakePachd(tmp_path / "pachd-auth", token="cdl-test-token")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def cluster_closed_port() -> int:
    return closed_port()


@pytest.fixture
def cluster_det_master() -> Iterator[Any]:
    """A fake Determined master with one user (DET_USER / DET_PASSWORD)."""
    from cdl.simulation.determined import FakeDeterminedMaster

    master = FakeDeterminedMaster(users={DET_USER: DET_PASSWORD})
    master.start()
    yield master
    master.stop()


@pytest.fixture(scope="session")
def cluster_seldon_crd(devcluster: Any, kubectl: Any) -> dict[str, Any]:
    """The SeldonDeployment CRD (crds/thirdparty/), applied once to the embedded control plane."""
    kubectl("apply", "-f", str(SELDON_CRD))
    kubectl("wait", "--for=condition=Established", "crd/seldondeployments.machinelearning.seldon.io",
            "--timeout=30s")
    return yaml.safe_load(SELDON_CRD.read_text())


@pytest.fixture
def cluster_seldon_controller(cluster_seldon_crd: dict[str, Any], k8s_client: Any) -> Iterator[Any]:
    """The fake Seldon controller watching the embedded control plane (stopped after the test)."""
    from cdl.simulation.seldon import FakeSeldonController

    controller = FakeSeldonController(k8s_client)
    controller.start()
    yield controller
    controller.stop()
