"""Shared test configuration.

Fixture modules live in tests/plugins/, one per real component (devcluster, postgres, s3 ...);
every module there is loaded as a pytest plugin so any test can ask for those fixtures.
"""
from pathlib import Path

pytest_plugins = [
    f"tests.plugins.{p.stem}"
    for p in sorted((Path(__file__).parent / "plugins").glob("*.py"))
    if p.stem != "__init__"
]
