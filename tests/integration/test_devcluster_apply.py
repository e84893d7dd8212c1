"""Server-side apply with field ownership against the embedded control plane: kubectl, the Python
client and helm 4 (which applies server-side) see what a real API server does."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml

from tests.plugins.devcluster import ROOT

GADGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "gadgets.test.cdl.dev"},
    "spec": {
        "group": "test.cdl.dev", "scope": "Namespaced",
        "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
            "type": "object",
            "properties": {"spec": {"type": "object", "properties": {
                "owner": {"type": "string"},
                "size": {"type": "integer"},
                "parts": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                          "items": {"type": "object", "required": ["name"], "properties": {
                              "name": {"type": "string"}, "count": {"type": "integer"}}}},
                "notes": {"type": "array", "items": {"type": "string"}},
            }}},
        }}}],
    },
}


def config_map(ns: str, data: dict[str, str]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared", "namespace": ns},
                       "data": data})


def managers(kubectl, *args: str) -> dict[str, str]:
    obj = json.loads(kubectl("get", *args, "-o", "json", "--show-managed-fields").stdout)
    return {e["manager"]: e["operation"] for e in obj["metadata"]["managedFields"]}


def test_two_field_managers_conflict_and_force_takes_over(kubectl, fresh_namespace):
    ns = fresh_namespace
    apply = ("apply", "--server-side", "-f", "-")
    assert "serverside-applied" in kubectl(*apply, "--field-manager=team-a",
                                           input=config_map(ns, {"lr": "0.1", "epochs": "3"})).stdout
    assert managers(kubectl, "cm", "shared", "-n", ns) == {"team-a": "Apply"}
    # team-b agrees on lr (shared ownership) and sets its own key: no conflict
    kubectl(*apply, "--field-manager=team-b", input=config_map(ns, {"lr": "0.1", "batch": "32"}))
    clash = kubectl(*apply, "--field-manager=team-b", input=config_map(ns, {"lr": "0.5"}), check=False)
    assert clash.returncode != 0
    assert 'Apply failed with 1 conflict: conflict with "team-a": .data.lr' in clash.stderr
    assert kubectl("get", "cm", "shared", "-n", ns, "-o", "jsonpath={.data.lr}").stdout == "0.1"

    kubectl(*apply, "--field-manager=team-b", "--force-conflicts", input=config_map(ns, {"lr": "0.5"}))
    data = json.loads(kubectl("get", "cm", "shared", "-n", ns, "-o", "json").stdout)["data"]
    # team-b dropped `batch` from its configuration and nobody else owns it: removed
    assert data == {"lr": "0.5", "epochs": "3"}
    # team-a lost lr to the force: applying its old value is now a conflict the other way
    back = kubectl(*apply, "--field-manager=team-a", input=config_map(ns, {"lr": "0.1", "epochs": "3"}),
                   check=False)
    assert 'conflict with "team-b"' in back.stderr


def test_dropped_field_is_removed_and_an_edit_takes_ownership(kubectl, fresh_namespace):
    ns = fresh_namespace
    apply = ("apply", "--server-side", "--field-manager=ci", "-f", "-")
    kubectl(*apply, input=config_map(ns, {"a": "1", "b": "2"}))
    kubectl(*apply, input=config_map(ns, {"a": "1"}))
    assert json.loads(kubectl("get", "cm", "shared", "-n", ns, "-o", "json").stdout)["data"] == {"a": "1"}
    kubectl("patch", "cm", "shared", "-n", ns, "--type=merge", "-p", '{"data":{"a":"9"}}')
    assert managers(kubectl, "cm", "shared", "-n", ns)["kubectl-patch"] == "Update"
    clash = kubectl(*apply, input=config_map(ns, {"a": "1"}), check=False)
    assert 'conflict with "kubectl-patch" using v1: .data.a' in clash.stderr


def test_keyed_lists_of_a_custom_resource_merge(kubectl, devcluster, fresh_namespace):
    from cdl.devcluster import process

    url = f"{devcluster.url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    status, body = process.request(url, devcluster.token, "POST", GADGET_CRD, ca_file=devcluster.ca_file)
    assert status in (201, 409), body
    ns = fresh_namespace

    def gadget(spec: dict) -> str:
        return json.dumps({"apiVersion": "test.cdl.dev/v1", "kind": "Gadget",
                           "metadata": {"name": "g", "namespace": ns}, "spec": spec})

    kubectl("apply", "--server-side", "--field-manager=a", "-f", "-",
            input=gadget({"owner": "a", "parts": [{"name": "wheel", "count": 4}], "notes": ["x"]}))
    kubectl("apply", "--server-side", "--field-manager=b", "-f", "-",
            input=gadget({"parts": [{"name": "seat", "count": 1}]}))
    spec = json.loads(kubectl("get", "gadget", "g", "-n", ns, "-o", "json").stdout)["spec"]
    assert spec["parts"] == [{"name": "wheel", "count": 4}, {"name": "seat", "count": 1}]
    # a list without keys is atomic: another manager replacing it conflicts
    atomic = kubectl("apply", "--server-side", "--field-manager=b", "-f", "-",
                     input=gadget({"notes": ["y"]}), check=False)
    assert 'conflict with "a": .spec.notes' in atomic.stderr
    # a drops its wheel: only a's item goes
    kubectl("apply", "--server-side", "--field-manager=a", "-f", "-", input=gadget({"owner": "a", "notes": ["x"]}))
    spec = json.loads(kubectl("get", "gadget", "g", "-n", ns, "-o", "json").stdout)["spec"]
    assert spec["parts"] == [{"name": "seat", "count": 1}]


def test_keyed_lists_of_a_builtin_merge(kubectl, fresh_namespace):
    ns = fresh_namespace
    base = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1", "ports": [{"containerPort": 80}]}]}}}}
    sidecar = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
               "spec": {"template": {"spec": {"containers": [{"name": "proxy", "image": "envoy:1"}]}}}}
    kubectl("apply", "--server-side", "--field-manager=app", "-f", "-", input=json.dumps(base))
    kubectl("apply", "--server-side", "--field-manager=mesh", "-f", "-", input=json.dumps(sidecar))
    kubectl("apply", "--server-side", "--field-manager=app", "-f", "-", input=json.dumps(base))  # idempotent
    containers = json.loads(kubectl("get", "deploy", "web", "-n", ns, "-o", "json").stdout)[
        "spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["app", "proxy"]
    assert containers[0]["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    kubectl("scale", "deploy", "web", "-n", ns, "--replicas=4")
    scaled = kubectl("apply", "--server-side", "--field-manager=app", "-f", "-",
                     input=json.dumps({**base, "spec": {**base["spec"], "replicas": 1}}), check=False)
    assert ('Apply failed with 1 conflict: conflict with "kubectl" with subresource "scale" using apps/v1: '
            '.spec.replicas') in scaled.stderr


def test_python_client_server_side_apply(k8s_client, fresh_namespace):
    from kubernetes import client

    core = client.CoreV1Api(k8s_client)
    ns = fresh_namespace

    def apply(manager: str, data: dict, force: bool = False):
        return core.patch_namespaced_config_map(
            "py", ns, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "py"}, "data": data},
            field_manager=manager, force=force, _content_type="application/apply-patch+yaml")

    apply("one", {"k": "1"})  # 201: the client maps it to None
    got = apply("one", {"k": "1", "j": "2"})
    assert got.data == {"k": "1", "j": "2"}
    [entry] = got.metadata.managed_fields
    assert (entry.manager, entry.operation, entry.fields_type) == ("one", "Apply", "FieldsV1")
    assert entry.fields_v1 == {"f:data": {"f:j": {}, "f:k": {}}}
    with pytest.raises(client.ApiException) as err:
        apply("two", {"k": "2"})
    assert err.value.status == 409
    status = json.loads(err.value.body)
    assert status["reason"] == "Conflict"
    assert status["details"]["causes"] == [{"reason": "FieldManagerConflict", "message": 'conflict with "one"',
                                            "field": ".data.k"}]
    assert apply("two", {"k": "2"}, force=True).data == {"k": "2", "j": "2"}
    # a replace without fieldManager is an update by the client's User-Agent
    cm = core.read_namespaced_config_map("py", ns)
    cm.data["j"] = "3"
    replaced = core.replace_namespaced_config_map("py", ns, cm)
    owners = {e.manager: e.operation for e in replaced.metadata.managed_fields}
    assert owners == {"two": "Apply", "OpenAPI-Generator": "Update"}  # "one" lost j, its last field


@pytest.mark.slow
def test_helm_upgrade_after_another_manager_changed_a_field(helm, kubectl):
    ns = f"helm-{uuid.uuid4().hex[:6]}"
    chart = str(Path(ROOT) / "charts" / "cdl")
    helm("install", "cdlup", chart, "-n", ns, "--create-namespace")
    try:
        deploy = json.loads(kubectl("get", "deploy", "cdlup-operator", "-n", ns, "-o", "json",
                                    "--show-managed-fields").stdout)
        assert {e["manager"] for e in deploy["metadata"]["managedFields"]} == {"helm"}
        kubectl("scale", "deploy", "cdlup-operator", "-n", ns, "--replicas=2")
        kubectl("label", "deploy", "cdlup-operator", "-n", ns, "team=ml")
        # helm's configuration still says replicas: 1, now owned by kubectl with another value
        refused = helm("upgrade", "cdlup", chart, "-n", ns, check=False)
        assert refused.returncode != 0
        assert ('Apply failed with 1 conflict: conflict with "kubectl" with subresource "scale" using apps/v1: '
                '.spec.replicas') in refused.stderr
        helm("upgrade", "cdlup", chart, "-n", ns, "--force-conflicts")
        deploy = yaml.safe_load(kubectl("get", "deploy", "cdlup-operator", "-n", ns, "-o", "yaml").stdout)
        assert deploy["spec"]["replicas"] == 1
        assert deploy["metadata"]["labels"]["team"] == "ml"  # not helm's field: kept
        # a changed chart value goes through and is helm's again
        helm("upgrade", "cdlup", chart, "-n", ns, "--set", "operator.replicas=3")
        assert kubectl("get", "deploy", "cdlup-operator", "-n", ns, "-o", "jsonpath={.spec.replicas}").stdout == "3"
    finally:
        helm("uninstall", "cdlup", "-n", ns, check=False)
        kubectl("delete", "ns", ns, "--wait=false", check=False)


def test_upgrade_from_client_side_to_server_side_apply(kubectl, fresh_namespace):
    ns = fresh_namespace
    kubectl("apply", "-f", "-", input=config_map(ns, {"lr": "0.1"}))  # client-side
    assert managers(kubectl, "cm", "shared", "-n", ns) == {"kubectl-client-side-apply": "Update"}
    # the documented path: the same manifest, changed, applied server-side takes over without a conflict
    kubectl("apply", "--server-side", "-f", "-", input=config_map(ns, {"lr": "0.2"}))
    assert kubectl("get", "cm", "shared", "-n", ns, "-o", "jsonpath={.data.lr}").stdout == "0.2"
    assert "kubectl-client-side-apply" not in managers(kubectl, "cm", "shared", "-n", ns)
    # ownership can be cleared by writing managedFields: [{}], as on a real server
    kubectl("patch", "cm", "shared", "-n", ns, "--type=json",
            "-p", '[{"op":"replace","path":"/metadata/managedFields","value":[{}]}]')
    obj = json.loads(kubectl("get", "cm", "shared", "-n", ns, "-o", "json", "--show-managed-fields").stdout)
    assert [e["manager"] for e in obj["metadata"].get("managedFields", [])] == []
