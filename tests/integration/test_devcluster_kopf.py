"""A real kopf 1.45.2 operator (KopfRunner, --standalone -A) against the embedded control plane:
it reacts to create, update and delete (with its finalizer) and patches status."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kubernetes import client

OPERATOR = '''
import kopf

# kopf's pure login reads $KUBECONFIG when called (the kubernetes client read it at import time).
@kopf.on.login()
def login(**kwargs):
    return kopf.login_with_kubeconfig(**kwargs)

@kopf.on.startup()
def configure(settings, **_):
    settings.watching.connect_timeout = 5
    settings.networking.request_timeout = 10

@kopf.on.create("test.cdl.dev", "v1", "widgets")
def created(spec, patch, body, **_):
    kopf.info(body, reason="Created", message=f"widget of size {spec['size']} seen")
    patch.status["phase"] = "Created"
    return {"size": spec["size"]}

@kopf.on.update("test.cdl.dev", "v1", "widgets")
def updated(spec, patch, **_):
    patch.status["phase"] = f"Updated-{spec['size']}"

@kopf.on.delete("test.cdl.dev", "v1", "widgets")
def deleted(name, **_):
    with open(MARKER, "a") as f:
        f.write(name + "\\n")
'''


def wait_for(fn: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"condition not met in {timeout} s")


def test_kopf_operator_lifecycle(devcluster, k8s_client, widget_crd, fresh_namespace, tmp_path, monkeypatch):
    from kopf.testing import KopfRunner

    marker = tmp_path / "deleted.txt"
    op_file = tmp_path / "operator.py"
    op_file.write_text(f"MARKER = {str(marker)!r}\n" + OPERATOR)
    monkeypatch.setenv("KUBECONFIG", str(devcluster.kubeconfig))
    co = client.CustomObjectsApi(k8s_client)
    ns = fresh_namespace
    args = ["run", "--standalone", "-A", "--verbose", str(op_file)]
    with KopfRunner(args, timeout=60) as runner:
        co.create_namespaced_custom_object("test.cdl.dev", "v1", ns, "widgets", {
            "apiVersion": "test.cdl.dev/v1", "kind": "Widget", "metadata": {"name": "k1"}, "spec": {"size": 2}})

        def status() -> dict[str, Any]:
            return co.get_namespaced_custom_object("test.cdl.dev", "v1", ns, "widgets", "k1").get("status") or {}

        wait_for(lambda: status().get("phase") == "Created")
        assert status()["created"] == {"size": 2}  # the handler's return value
        obj = co.get_namespaced_custom_object("test.cdl.dev", "v1", ns, "widgets", "k1")
        assert "kopf.zalando.org/KopfFinalizerMarker" in obj["metadata"]["finalizers"]

        co.patch_namespaced_custom_object("test.cdl.dev", "v1", ns, "widgets", "k1", {"spec": {"size": 5}})
        wait_for(lambda: status().get("phase") == "Updated-5")

        co.delete_namespaced_custom_object("test.cdl.dev", "v1", ns, "widgets", "k1")

        def gone() -> bool:
            names = [i["metadata"]["name"] for i in
                     co.list_namespaced_custom_object("test.cdl.dev", "v1", ns, "widgets")["items"]]
            return "k1" not in names

        wait_for(gone)
        assert Path(marker).read_text().split() == ["k1"]
        events = wait_for(lambda: client.CoreV1Api(k8s_client).list_namespaced_event(
            ns, field_selector="involvedObject.name=k1,involvedObject.kind=Widget").items)
        assert [(e.reason, e.message) for e in events] == [("Created", "widget of size 2 seen")]
    assert runner.exit_code == 0, runner.output
    assert runner.exception is None
    assert "Traceback" not in runner.output, runner.output
