"""Fixtures for the embedded control plane (cdl.devcluster), shared by every test suite.

- `devcluster`: one server per session, a real background process (as `cdl up` starts it) with a
  temporary data directory; `.url`, `.token`, `.kubeconfig`, `.ca_file`, `.log_file`.
- `kubectl`, `helm`: run the pinned tools from `.tools/bin` against it; they fail with a clear
  message when the tools are missing (`make tools` / `bash scripts/install-tools.sh`).
- `k8s_client`: a `kubernetes.client.ApiClient` for it.
- `fresh_namespace`: a new namespace per test, deleted afterwards.
- `widget_crd`: a small test CRD (test.cdl.dev/v1 Widget) installed once.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".tools" / "bin"

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.cdl.dev"},
    "spec": {
        "group": "test.cdl.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"],
                  "categories": ["cdltest"]},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "subresources": {"status": {}},
            "additionalPrinterColumns": [
                {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            ],
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["size"],
                        "properties": {
                            "size": {"type": "integer", "minimum": 1, "maximum": 10},
                            "ratio": {"type": "number", "maximum": 1, "exclusiveMaximum": True},
                            "color": {"type": "string", "enum": ["red", "green", "blue"], "default": "red"},
                            "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 8},
                            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "port": {"x-kubernetes-int-or-string": True},
                            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            "enabled": {"type": "boolean"},
                        },
                    },
                    "status": {
                        "type": "object",
                        "properties": {
                            "phase": {"type": "string"},
                            "created": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            "observedGeneration": {"type": "integer"},
                            "conditions": {"type": "array", "items": {
                                "type": "object",
                                "properties": {k: {"type": "string"} for k in
                                               ("type", "status", "reason", "message", "lastTransitionTime")},
                            }},
                        },
                    },
                },
            }},
        }],
    },
}


def _tool(name: str) -> Path:
    path = TOOLS_BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make tools` (bash scripts/install-tools.sh) first", pytrace=False)
    return path


@pytest.fixture(scope="session")
def devcluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A devcluster server process for the whole session (stopped by process group at the end)."""
    from cdl.devcluster import process

    data_dir = tmp_path_factory.mktemp("devcluster")
    info = process.start_background(data_dir)
    try:
        yield info
    finally:
        process.stop(data_dir)
        if request.session.testsfailed and info.log_file and info.log_file.exists():
            tail = "\n".join(info.log_file.read_text(errors="replace").splitlines()[-40:])
            print(f"\n--- devcluster log ({info.log_file}) ---\n{tail}")


Runner = Callable[..., subprocess.CompletedProcess[str]]


def _runner(binary: Path, base_args: list[str], env: dict[str, str]) -> Runner:
    import os

    def run(*args: str, input: str | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(binary), *base_args, *args], input=input, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **env})
        if check and proc.returncode != 0:
            raise AssertionError(f"{binary.name} {' '.join(args)} exited {proc.returncode}:\n"
                                 f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    return run


@pytest.fixture(scope="session")
def kubectl(devcluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """`kubectl(*args, input=None, check=True)` -> CompletedProcess (text), against `devcluster`."""
    cache = tmp_path_factory.mktemp("kubecache")
    return _runner(_tool("kubectl"), ["--kubeconfig", str(devcluster.kubeconfig), "--cache-dir", str(cache)],
                   {"KUBECONFIG": str(devcluster.kubeconfig)})


@pytest.fixture(scope="session")
def helm(devcluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """`helm(*args)` against `devcluster`, with its caches and config in a temp dir."""
    home = tmp_path_factory.mktemp("helmhome")
    env = {"KUBECONFIG": str(devcluster.kubeconfig), "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}
    return _runner(_tool("helm"), ["--kubeconfig", str(devcluster.kubeconfig)], env)


@pytest.fixture(scope="session")
def k8s_client(devcluster: Any) -> Iterator[Any]:
    """A kubernetes.client.ApiClient configured from the devcluster's kubeconfig."""
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(devcluster.kubeconfig))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def fresh_namespace(devcluster: Any) -> Iterator[str]:
    """A new, empty namespace for one test; deleted (with its content) afterwards."""
    from cdl.devcluster import process

    name = f"t-{uuid.uuid4().hex[:8]}"
    status, body = process.request(f"{devcluster.url}/api/v1/namespaces", devcluster.token, "POST",
                                   {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
                                   ca_file=devcluster.ca_file)
    assert status == 201, body
    yield name
    process.request(f"{devcluster.url}/api/v1/namespaces/{name}", devcluster.token, "DELETE",
                    ca_file=devcluster.ca_file)


@pytest.fixture(scope="session")
def widget_crd(devcluster: Any) -> dict[str, Any]:
    """The test Widget CRD (group test.cdl.dev), installed once per session."""
    from cdl.devcluster import process

    url = f"{devcluster.url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    status, body = process.request(url, devcluster.token, "POST", WIDGET_CRD, ca_file=devcluster.ca_file)
    assert status in (201, 409), body
    return WIDGET_CRD
