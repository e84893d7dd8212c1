"""Shared test configuration.

Fixture modules live in tests/plugins/, one per real component (devcluster, postgres, s3 ...);
every module there is loaded as a pytest plugin so any test can ask for those fixtures.
"""
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = [
    f"tests.plugins.{p.stem}"
    for p in sorted((Path(__file__).parent / "plugins").glob("*.py"))
    if p.stem != "__init__"
]


@pytest.fixture(autouse=True)
def _cdl_environment_restored() -> Iterator[None]:
    """Code under test that runs in this process may set CDL_* variables (the trial runtime sets
    CDL_DATA_DIR once it has copied the data); they must not leak into later tests' subprocesses,
    where an operator would read CDL_DATA_DIR as its own data directory."""
    before = {k: v for k, v in os.environ.items() if k.startswith("CDL_")}
    yield
    for key in [k for k in os.environ if k.startswith("CDL_") and k not in before]:
        del os.environ[key]
    os.environ.update(before)
