"""The kubernetes Python client against the embedded control plane: CRUD, status, watch,
conflicts, finalizers, cascade deletion, patches, auth."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from cdl.devcluster import process

G, V, P = "test.cdl.dev", "v1", "widgets"


def message(e: pytest.ExceptionInfo[ApiException]) -> str:
    return json.loads(e.value.body)["message"] + " " + json.loads(e.value.body).get("reason", "")


def widget(name: str, size: int = 1, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{G}/{V}", "kind": "Widget", "metadata": {"name": name}, "spec": {"size": size, **spec}}


@pytest.fixture
def co(k8s_client, widget_crd) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s_client)


def test_crud_and_status_subresource(co, fresh_namespace):
    ns = fresh_namespace
    created = co.create_namespaced_custom_object(G, V, ns, P, {**widget("a", 2), "status": {"phase": "x"}})
    assert "status" not in created  # create drops status
    assert created["metadata"]["generation"] == 1 and created["spec"]["color"] == "red"

    st = co.patch_namespaced_custom_object_status(G, V, ns, P, "a", {"status": {"phase": "Running"}})
    assert st["status"]["phase"] == "Running" and st["metadata"]["generation"] == 1

    main = co.patch_namespaced_custom_object(G, V, ns, P, "a", {"spec": {"size": 3}, "status": {"phase": "no"}})
    assert main["status"]["phase"] == "Running"  # main patch keeps status
    assert main["metadata"]["generation"] == 2
    assert int(main["metadata"]["resourceVersion"]) > int(st["metadata"]["resourceVersion"])

    got = co.get_namespaced_custom_object(G, V, ns, P, "a")
    got["spec"]["size"] = 4
    replaced = co.replace_namespaced_custom_object(G, V, ns, P, "a", got)
    assert replaced["spec"]["size"] == 4 and replaced["metadata"]["generation"] == 3

    items = co.list_namespaced_custom_object(G, V, ns, P)["items"]
    assert [i["metadata"]["name"] for i in items] == ["a"]
    co.delete_namespaced_custom_object(G, V, ns, P, "a")
    with pytest.raises(ApiException) as e:
        co.get_namespaced_custom_object(G, V, ns, P, "a")
    assert e.value.status == 404


def test_validation_conflicts_and_patch_errors(co, fresh_namespace):
    ns = fresh_namespace
    with pytest.raises(ApiException) as e:
        co.create_namespaced_custom_object(G, V, ns, P, widget("bad", "string"))
    assert e.value.status == 422
    assert 'spec.size: Invalid value: "string": spec.size in body must be of type integer: "string"' in message(e)
    with pytest.raises(ApiException) as e:
        co.create_namespaced_custom_object(G, V, ns, P, {**widget("bad"), "spec": {}})
    assert e.value.status == 422 and "spec.size: Required value" in message(e)

    co.create_namespaced_custom_object(G, V, ns, P, widget("c"))
    with pytest.raises(ApiException) as e:
        co.create_namespaced_custom_object(G, V, ns, P, widget("c"))
    assert e.value.status == 409 and "AlreadyExists" in message(e)

    # two concurrent writers read the same version; exactly one write wins, the other gets 409
    barrier = threading.Barrier(2)
    outcomes: list[int] = []

    def writer(size: int) -> None:
        mine = co.get_namespaced_custom_object(G, V, ns, P, "c")
        barrier.wait()
        mine["spec"]["size"] = size
        try:
            co.replace_namespaced_custom_object(G, V, ns, P, "c", mine)
            outcomes.append(200)
        except ApiException as exc:
            outcomes.append(exc.status)
            assert "the object has been modified" in json.loads(exc.body)["message"]

    threads = [threading.Thread(target=writer, args=(n,)) for n in (5, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [200, 409]
    assert co.get_namespaced_custom_object(G, V, ns, P, "c")["metadata"]["generation"] == 2

    rv = co.get_namespaced_custom_object(G, V, ns, P, "c")["metadata"]["resourceVersion"]
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
           {"op": "replace", "path": "/spec/size", "value": 2}]
    with pytest.raises(ApiException) as e:
        co.patch_namespaced_custom_object(G, V, ns, P, "c", ops, _content_type="application/json-patch+json")
    assert e.value.status == 422
    ops[0]["value"] = rv
    out = co.patch_namespaced_custom_object(G, V, ns, P, "c", ops, _content_type="application/json-patch+json")
    assert out["spec"]["size"] == 2
    with pytest.raises(ApiException) as e:  # strategic merge is for built-in kinds only
        co.patch_namespaced_custom_object(G, V, ns, P, "c", {"spec": {"size": 3}},
                                          _content_type="application/strategic-merge-patch+json")
    assert e.value.status == 415


def test_generate_name_dry_run_and_apply(co, fresh_namespace):
    ns = fresh_namespace
    body = widget("")
    body["metadata"] = {"generateName": "gen-"}
    made = co.create_namespaced_custom_object(G, V, ns, P, body)
    assert made["metadata"]["name"].startswith("gen-") and len(made["metadata"]["name"]) == 9
    co.create_namespaced_custom_object(G, V, ns, P, widget("dry"), dry_run="All")
    assert [i["metadata"]["name"] for i in co.list_namespaced_custom_object(G, V, ns, P)["items"]] == [
        made["metadata"]["name"]]
    applied = co.patch_namespaced_custom_object(G, V, ns, P, "ssa", widget("ssa", 7),
                                                _content_type="application/apply-patch+yaml",
                                                field_manager="test", force=True)
    assert applied is None  # 201 Created: the client maps only 200 to a body
    assert co.get_namespaced_custom_object(G, V, ns, P, "ssa")["spec"]["size"] == 7


def test_finalizers_and_deletion(co, fresh_namespace):
    ns = fresh_namespace
    co.create_namespaced_custom_object(G, V, ns, P, {**widget("f"), "metadata": {"name": "f", "finalizers": ["x/y"]}})
    deleted = co.delete_namespaced_custom_object(G, V, ns, P, "f")
    assert deleted["metadata"]["deletionTimestamp"]
    still = co.get_namespaced_custom_object(G, V, ns, P, "f")
    assert still["metadata"]["finalizers"] == ["x/y"]
    co.patch_namespaced_custom_object(G, V, ns, P, "f", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as e:
        co.get_namespaced_custom_object(G, V, ns, P, "f")
    assert e.value.status == 404


def test_cascade_deletion_by_owner_references(k8s_client, co, fresh_namespace):
    ns = fresh_namespace
    owner = co.create_namespaced_custom_object(G, V, ns, P, widget("owner"))
    ref = {"apiVersion": f"{G}/{V}", "kind": "Widget", "name": "owner", "uid": owner["metadata"]["uid"]}
    core = client.CoreV1Api(k8s_client)
    core.create_namespaced_config_map(ns, {"metadata": {"name": "child", "ownerReferences": [ref]}, "data": {"a": "b"}})
    other = co.create_namespaced_custom_object(G, V, ns, P, widget("other"))
    ref2 = {"apiVersion": f"{G}/{V}", "kind": "Widget", "name": "other", "uid": other["metadata"]["uid"]}
    core.create_namespaced_config_map(ns, {"metadata": {"name": "shared", "ownerReferences": [ref, ref2]}})
    co.delete_namespaced_custom_object(G, V, ns, P, "owner", propagation_policy="Background")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        names = [c.metadata.name for c in core.list_namespaced_config_map(ns).items]
        if "child" not in names:
            break
        time.sleep(0.05)
    assert names == ["shared"]  # one owner of "shared" is still there


def test_watch_events_and_410_recovery(tmp_path):
    """A small history window makes an old resourceVersion expire: the client sees 410 and
    recovers by listing again, as informers do."""
    with process.run_in_thread(tmp_path, history_size=5) as info:
        api = client.CoreV1Api(__import__("kubernetes").config.new_client_from_config(str(info.kubeconfig)))
        start_rv = api.list_namespaced_config_map("default").metadata.resource_version
        for i in range(10):
            api.create_namespaced_config_map("default", {"metadata": {"name": f"cm{i}"}})
        w = watch.Watch()
        with pytest.raises(ApiException) as e:
            for _ in w.stream(api.list_namespaced_config_map, "default", resource_version=start_rv,
                              timeout_seconds=2):
                pass
        assert e.value.status == 410

        listing = api.list_namespaced_config_map("default")
        assert len(listing.items) == 10
        seen: list[tuple[str, str]] = []

        def writer() -> None:
            time.sleep(0.3)
            api.patch_namespaced_config_map("cm1", "default", {"data": {"k": "v"}})
            api.delete_namespaced_config_map("cm2", "default")

        t = threading.Thread(target=writer)
        t.start()
        for ev in watch.Watch().stream(api.list_namespaced_config_map, "default",
                                       resource_version=listing.metadata.resource_version, timeout_seconds=3):
            seen.append((ev["type"], ev["object"].metadata.name))
            if len(seen) == 2:
                break
        t.join()
        assert seen == [("MODIFIED", "cm1"), ("DELETED", "cm2")]


def test_watch_initial_events_and_bookmark(devcluster, co, fresh_namespace):
    ns = fresh_namespace
    co.create_namespaced_custom_object(G, V, ns, P, widget("i1"))
    url = (f"{devcluster.url}/apis/{G}/{V}/namespaces/{ns}/{P}?watch=true&sendInitialEvents=true"
           "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1")
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {devcluster.token}"})
    import ssl
    ctx = ssl.create_default_context(cafile=str(devcluster.ca_file))
    with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
        events = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
    assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == "i1"
    assert events[1]["type"] == "BOOKMARK"
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_selectors(k8s_client, fresh_namespace):
    ns = fresh_namespace
    core = client.CoreV1Api(k8s_client)
    for name, labels in [("a", {"app": "x", "tier": "web"}), ("b", {"app": "y"}), ("c", {})]:
        core.create_namespaced_config_map(ns, {"metadata": {"name": name, "labels": labels}})

    def names(**kw: Any) -> list[str]:
        return [c.metadata.name for c in core.list_namespaced_config_map(ns, **kw).items]

    assert names(label_selector="app=x") == ["a"]
    assert names(label_selector="app!=x") == ["b", "c"]
    assert names(label_selector="app in (x,y),!tier") == ["b"]
    assert names(label_selector="app") == ["a", "b"]
    assert names(field_selector="metadata.name=c") == ["c"]
    assert names(field_selector="metadata.name!=c,metadata.namespace=" + ns) == ["a", "b"]


def test_requests_without_a_valid_token_get_401(devcluster):
    for token in ("", "wrong"):
        status, body = process.request(f"{devcluster.url}/api/v1/namespaces", token, ca_file=devcluster.ca_file)
        assert status == 401
        assert body["kind"] == "Status" and body["reason"] == "Unauthorized"


def test_namespace_and_crd_deletion_empty_them_first(devcluster, k8s_client, tmp_path):
    core = client.CoreV1Api(k8s_client)
    ext = client.ApiextensionsV1Api(k8s_client)
    co = client.CustomObjectsApi(k8s_client)
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.del.cdl.dev"},
        "spec": {"group": "del.cdl.dev", "scope": "Namespaced",
                 "names": {"plural": "things", "singular": "thing", "kind": "Thing"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
    }
    ext.create_custom_resource_definition(crd)
    core.create_namespace({"metadata": {"name": "doomed"}})
    core.create_namespaced_config_map("doomed", {"metadata": {"name": "c"}})
    co.create_namespaced_custom_object("del.cdl.dev", "v1", "doomed", "things",
                                       {"apiVersion": "del.cdl.dev/v1", "kind": "Thing", "metadata": {"name": "t"}})
    core.delete_namespace("doomed")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "doomed" in [n.metadata.name for n in core.list_namespace().items]:
        time.sleep(0.05)
    assert "doomed" not in [n.metadata.name for n in core.list_namespace().items]
    assert co.list_cluster_custom_object("del.cdl.dev", "v1", "things")["items"] == []

    co.create_namespaced_custom_object("del.cdl.dev", "v1", "default", "things",
                                       {"apiVersion": "del.cdl.dev/v1", "kind": "Thing", "metadata": {"name": "t2"}})
    ext.delete_custom_resource_definition("things.del.cdl.dev")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            co.list_cluster_custom_object("del.cdl.dev", "v1", "things")
        except ApiException as e:
            assert e.status == 404  # the type is no longer served
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the CRD's resources are still served")
