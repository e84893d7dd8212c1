"""kubectl 1.35 against the embedded control plane: what a user types, what a user sees."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import yaml

from tests.plugins.devcluster import TOOLS_BIN

WIDGET = """
apiVersion: test.cdl.dev/v1
kind: Widget
metadata:
  name: {name}
  namespace: {ns}
spec:
  size: {size}
  tags: [a, b]
"""


def test_apply_get_columns_yaml_describe_delete(kubectl, widget_crd, fresh_namespace):
    ns = fresh_namespace
    out = kubectl("apply", "-f", "-", input=WIDGET.format(name="w1", ns=ns, size=3)).stdout
    assert "widget.test.cdl.dev/w1 created" in out
    assert "unchanged" in kubectl("apply", "-f", "-", input=WIDGET.format(name="w1", ns=ns, size=3)).stdout

    table = kubectl("get", "widgets", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "SIZE", "PHASE", "READY", "AGE"]
    assert table[1].split()[:2] == ["w1", "3"]
    assert "w1" in kubectl("get", "wd", "-A").stdout  # short name, all namespaces
    assert "w1" in kubectl("get", "cdltest", "-n", ns).stdout  # category

    obj = yaml.safe_load(kubectl("get", "widget", "w1", "-n", ns, "-o", "yaml").stdout)
    assert obj["spec"] == {"size": 3, "tags": ["a", "b"], "color": "red"}  # defaulted
    assert obj["metadata"]["generation"] == 1

    kubectl("apply", "-f", "-", input=WIDGET.format(name="w1", ns=ns, size=4))
    obj = json.loads(kubectl("get", "widget", "w1", "-n", ns, "-o", "json").stdout)
    assert obj["spec"]["size"] == 4 and obj["metadata"]["generation"] == 2

    described = kubectl("describe", "widget", "w1", "-n", ns).stdout
    assert "Name:         w1" in described and "Size:   4" in described

    assert 'widget.test.cdl.dev "w1" deleted' in kubectl("delete", "widget", "w1", "-n", ns).stdout
    assert "No resources found" in kubectl("get", "widgets", "-n", ns).stderr


def test_invalid_widget_is_rejected_with_field_paths(kubectl, widget_crd, fresh_namespace):
    bad = WIDGET.format(name="bad", ns=fresh_namespace, size=30).replace("tags: [a, b]", "color: pink")
    proc = kubectl("apply", "-f", "-", input=bad, check=False)
    assert proc.returncode != 0
    assert 'The Widget "bad" is invalid' in proc.stderr
    assert "spec.size: Invalid value: 30: spec.size in body should be less than or equal to 10" in proc.stderr
    assert 'spec.color: Unsupported value: "pink": supported values: "red", "green", "blue"' in proc.stderr


def test_wait_for_condition_set_through_status(kubectl, widget_crd, fresh_namespace):
    ns = fresh_namespace
    kubectl("apply", "-f", "-", input=WIDGET.format(name="w2", ns=ns, size=2))
    status = {"status": {"phase": "Ready", "conditions": [{"type": "Ready", "status": "True", "reason": "Done"}]}}

    def mark_ready() -> None:
        time.sleep(0.5)
        kubectl("patch", "widget", "w2", "-n", ns, "--subresource=status", "--type=merge", "-p", json.dumps(status))

    t = threading.Thread(target=mark_ready)
    t.start()
    out = kubectl("wait", "--for=condition=Ready", "widget/w2", "-n", ns, "--timeout=20s").stdout
    t.join()
    assert "condition met" in out
    row = kubectl("get", "widget", "w2", "-n", ns, "--no-headers").stdout.split()
    assert row[:4] == ["w2", "2", "Ready", "True"]


def test_server_side_apply_and_diff(kubectl, widget_crd, fresh_namespace):
    ns = fresh_namespace
    manifest = WIDGET.format(name="w3", ns=ns, size=5)
    assert "serverside-applied" in kubectl("apply", "--server-side", "-f", "-", input=manifest).stdout
    assert kubectl("diff", "-f", "-", input=manifest, check=False).returncode == 0
    changed = kubectl("diff", "-f", "-", input=manifest.replace("size: 5", "size: 6"), check=False)
    assert changed.returncode == 1 and "+  size: 6" in changed.stdout
    # diff is a dry run: nothing changed
    assert kubectl("get", "widget", "w3", "-n", ns, "-o", "jsonpath={.spec.size}").stdout == "5"


def test_builtin_kinds_and_protobuf_create(kubectl, fresh_namespace):
    ns = fresh_namespace
    kubectl("create", "configmap", "cfg", "--from-literal=a=1", "-n", ns)  # protobuf body
    cm = json.loads(kubectl("get", "configmap", "cfg", "-n", ns, "-o", "json").stdout)
    assert cm["data"] == {"a": "1"}
    deploy = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "nginx", "env": [{"name": "A", "value": "1"}]}]}}},
    }
    kubectl("apply", "-f", "-", input=json.dumps(deploy))
    deploy["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "B", "value": "2"})
    kubectl("apply", "-f", "-", input=json.dumps(deploy))  # strategic merge patch
    got = json.loads(kubectl("get", "deploy", "web", "-n", ns, "-o", "json").stdout)
    assert [e["name"] for e in got["spec"]["template"]["spec"]["containers"][0]["env"]] == ["A", "B"]
    kubectl("scale", "deploy", "web", "-n", ns, "--replicas=3")  # the /scale subresource
    assert kubectl("get", "deploy", "web", "-n", ns, "-o", "jsonpath={.spec.replicas}").stdout == "3"
    assert kubectl("auth", "can-i", "delete", "pods", "-n", ns).stdout.strip() == "yes"


def test_watch_prints_table_rows(kubectl, devcluster, widget_crd, fresh_namespace):
    ns = fresh_namespace
    kubectl("apply", "-f", "-", input=WIDGET.format(name="w4", ns=ns, size=1))
    proc = subprocess.Popen(
        [str(TOOLS_BIN / "kubectl"), "--kubeconfig", str(devcluster.kubeconfig),
         "get", "widgets", "-n", ns, "-w", "--request-timeout=4s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    kubectl("label", "widget", "w4", "-n", ns, "x=y")
    out, _ = proc.communicate(timeout=15)
    lines = [line.split() for line in out.splitlines() if line.strip()]
    assert lines[0][:2] == ["NAME", "SIZE"]
    assert sum(1 for line in lines if line[0] == "w4") >= 2


def test_unknown_fields_are_rejected_strictly_and_explain_reads_the_schema(kubectl, widget_crd, fresh_namespace):
    manifest = WIDGET.format(name="u1", ns=fresh_namespace, size=1).replace("tags: [a, b]", "bogus: 2")
    proc = kubectl("apply", "-f", "-", input=manifest, check=False)
    assert proc.returncode != 0
    assert 'strict decoding error: unknown field "spec.bogus"' in proc.stderr
    explained = kubectl("explain", "widgets.spec").stdout
    assert "KIND:       Widget" in explained and "enum: red, green, blue" in explained
