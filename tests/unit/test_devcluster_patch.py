"""Merge, JSON, strategic and apply patches (cdl.devcluster.patch)."""

import pytest

from cdl.devcluster import patch
from cdl.devcluster.errors import ApiError

DOC = {"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"list": [1, 2], "n": 1}}


def test_merge_patch_merges_and_removes_with_null():
    out = patch.merge_patch(DOC, {"metadata": {"labels": {"x": None, "y": "2"}}, "spec": {"list": [3]}})
    assert out == {"metadata": {"name": "a", "labels": {"y": "2"}}, "spec": {"list": [3], "n": 1}}
    assert DOC["metadata"]["labels"] == {"x": "1"}  # input untouched


def test_json_patch_all_ops():
    ops = [
        {"op": "add", "path": "/spec/list/-", "value": 9},
        {"op": "replace", "path": "/spec/n", "value": 2},
        {"op": "copy", "from": "/spec/n", "path": "/spec/m"},
        {"op": "move", "from": "/spec/m", "path": "/spec/k"},
        {"op": "remove", "path": "/metadata/labels/x"},
        {"op": "test", "path": "/spec/k", "value": 2},
        {"op": "add", "path": "/metadata/annotations", "value": {"a~b/c": "v"}},
    ]
    out = patch.json_patch(DOC, ops)
    assert out["spec"] == {"list": [1, 2, 9], "n": 2, "k": 2}
    assert out["metadata"]["labels"] == {}
    assert patch.json_patch(out, [{"op": "remove", "path": "/metadata/annotations/a~0b~1c"}])["metadata"]["annotations"] == {}


def test_json_patch_failed_test_is_422_and_missing_path_is_422():
    with pytest.raises(ApiError) as e:
        patch.json_patch(DOC, [{"op": "test", "path": "/spec/n", "value": 5}])
    assert e.value.code == 422
    with pytest.raises(ApiError) as e:
        patch.json_patch(DOC, [{"op": "remove", "path": "/spec/nope"}])
    assert e.value.code == 422
    with pytest.raises(ApiError) as e:
        patch.json_patch(DOC, {"op": "add"})
    assert e.value.code == 400


def test_strategic_merge_merges_named_lists_and_replaces_others():
    pod = {"spec": {"containers": [{"name": "a", "image": "x", "env": [{"name": "A", "value": "1"}]},
                                   {"name": "b", "image": "y"}],
                    "args": ["1"]},
           "metadata": {"finalizers": ["f1"]}}
    p = {"spec": {"containers": [{"name": "a", "env": [{"name": "B", "value": "2"}]},
                                 {"name": "b", "$patch": "delete"}],
                  "args": ["2"], "$setElementOrder/containers": [{"name": "a"}]},
         "metadata": {"finalizers": ["f2"]}}
    out = patch.strategic_merge(pod, p)
    assert out["spec"]["containers"] == [{"name": "a", "image": "x",
                                          "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}]
    assert out["spec"]["args"] == ["2"]
    assert out["metadata"]["finalizers"] == ["f1", "f2"]
    assert patch.strategic_merge({"data": {"a": "1"}}, {"data": {"$patch": "replace", "b": "2"}}) == {"data": {"b": "2"}}
    assert patch.strategic_merge({"spec": {"ports": [{"containerPort": 80, "name": "h"}]}},
                                 {"spec": {"ports": [{"containerPort": 80, "protocol": "TCP"}]}}) == {
        "spec": {"ports": [{"containerPort": 80, "name": "h", "protocol": "TCP"}]}}
    assert patch.strategic_merge({"x": [1, 2, 3]}, {"$deleteFromPrimitiveList/x": [2]}) == {"x": [1, 3]}
