"""Fixtures for the cluster engines' contract tests: the protocol-level fakes of pachd, the
Determined master and Seldon's controller (tests/fakes/), started per test and stopped after."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.pachd import FakePachd


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster_pachd(tmp_path: Path) -> Iterator[FakePachd]:
    """A fake pachd on a free loopback port, without auth."""
    server = FakePachd(tmp_path / "pachd")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def cluster_pachd_with_auth(tmp_path: Path) -> Iterator[FakePachd]:
    """A fake pachd with auth on: every call must carry the token `cdl-test-token`."""
    server = FakePachd(tmp_path / "pachd-auth", token="cdl-test-token")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def cluster_closed_port() -> int:
    return closed_port()
