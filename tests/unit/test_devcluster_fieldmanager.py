"""Field ownership and server-side apply (cdl.devcluster.fieldmanager) on plain dicts."""

from __future__ import annotations

import pytest

from cdl.devcluster import fieldmanager as fm
from cdl.devcluster.errors import ApiError

SCHEMA = fm.root_schema({
    "type": "object",
    "properties": {"spec": {"type": "object", "properties": {
        "size": {"type": "integer"},
        "color": {"type": "string"},
        "ports": {"type": "array", "x-kubernetes-list-type": "map",
                  "x-kubernetes-list-map-keys": ["port", "protocol"],
                  "items": {"type": "object", "properties": {
                      "port": {"type": "integer"}, "protocol": {"type": "string", "default": "TCP"},
                      "name": {"type": "string"}}}},
        "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
        "args": {"type": "array", "items": {"type": "string"}},
    }}},
})


def apply(live, config, manager, force=False):
    return fm.apply(live, config, SCHEMA, manager, "", False, force, "test/v1", "2026-01-01T00:00:00Z")


def stored(obj, entries):
    return {**obj, "metadata": {**obj.get("metadata", {}), "managedFields": fm.write_entries(entries)}}


def test_apply_creates_and_records_ownership_as_fields_v1():
    obj, entries = apply(None, {"metadata": {"name": "w", "labels": {"a": "1"}}, "spec": {"size": 1}}, "m1")
    assert obj["spec"] == {"size": 1}
    [entry] = fm.write_entries(entries)
    assert entry["manager"] == "m1" and entry["operation"] == "Apply"
    assert entry["fieldsV1"] == {"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {"f:size": {}}}


def test_conflict_names_the_owner_and_field_and_force_takes_it_over():
    obj, entries = apply(None, {"spec": {"size": 1, "color": "red"}}, "m1")
    obj = stored(obj, entries)
    with pytest.raises(ApiError) as err:
        apply(obj, {"spec": {"size": 2}}, "m2")
    assert err.value.code == 409
    assert err.value.message == 'Apply failed with 1 conflict: conflict with "m1": .spec.size'
    # the same value is shared ownership, not a conflict
    shared, entries = apply(obj, {"spec": {"size": 1}}, "m2")
    assert {e.manager for e in entries if ("f:spec", "f:size") in e.fields} == {"m1", "m2"}
    forced, entries = apply(obj, {"spec": {"size": 2}}, "m2", force=True)
    assert forced["spec"]["size"] == 2
    owners = {e.manager: e.fields for e in entries}
    assert ("f:spec", "f:size") not in owners["m1"] and ("f:spec", "f:size") in owners["m2"]


def test_a_dropped_field_is_removed_unless_another_manager_owns_it():
    obj, entries = apply(None, {"spec": {"size": 1, "color": "red", "tags": ["a"]}}, "m1")
    obj = stored(obj, entries)
    obj2, entries = apply(obj, {"spec": {"size": 1}}, "m1")
    assert obj2["spec"] == {"size": 1}
    assert obj["spec"]["tags"] == ["a"]  # the input is left alone
    # co-owned by m2: m1 dropping it leaves it in place
    obj, entries = apply(obj, {"spec": {"color": "red"}}, "m2")
    obj = stored(obj, entries)
    obj3, _ = apply(obj, {"spec": {"size": 1}}, "m1")
    assert obj3["spec"] == {"size": 1, "color": "red"}


def test_keyed_lists_merge_by_key_and_sets_by_value():
    obj, entries = apply(None, {"spec": {"ports": [{"port": 80, "name": "http"}], "tags": ["a"], "args": ["x"]}},
                         "m1")
    assert obj["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "name": "http"}]  # key defaulted
    obj = stored(obj, entries)
    with pytest.raises(ApiError, match=r"\.spec\.args"):  # a list without keys is atomic: one owner
        apply(obj, {"spec": {"args": ["y"]}}, "m2")
    obj, entries = apply(obj, {"spec": {"ports": [{"port": 443, "name": "https"}], "tags": ["b"]}}, "m2")
    assert [p["name"] for p in obj["spec"]["ports"]] == ["http", "https"]
    assert sorted(obj["spec"]["tags"]) == ["a", "b"]
    obj = stored(obj, entries)
    # m1 drops its port: only that item goes; m2's stays
    obj, entries = apply(obj, {"spec": {"tags": ["a"]}}, "m1", force=True)
    assert [p["name"] for p in obj["spec"]["ports"]] == ["https"]
    paths = {fm.render(p) for e in entries for p in e.fields}
    assert '.spec.ports[port=443,protocol="TCP"].name' in paths


def test_an_update_takes_ownership_of_what_it_changed():
    obj, entries = apply(None, {"spec": {"size": 1, "color": "red"}}, "m1")
    old = stored(obj, entries)
    new = {**old, "spec": {"size": 5, "color": "red"}}
    entries = fm.record_update(fm.object_leaves(old, SCHEMA, "", False), fm.object_leaves(new, SCHEMA, "", False),
                               fm.read_entries(old), "kubectl-edit", "", "test/v1", "now")
    owners = {e.manager: e.fields for e in entries}
    assert owners["kubectl-edit"] == {("f:spec", "f:size")}
    assert owners["m1"] == {("f:spec", "f:color")}
    with pytest.raises(ApiError, match='conflict with "kubectl-edit" using test/v1: .spec.size'):
        apply(stored(new, entries), {"spec": {"size": 1, "color": "red"}}, "m1")


def test_fields_v1_round_trip():
    paths = {("f:spec", "f:ports", 'k:{"port":80}'), ("f:spec", "f:ports", 'k:{"port":80}', "f:name"),
             ("f:metadata", "f:labels", "f:a")}
    encoded = fm.to_fields_v1(paths)
    assert encoded["f:spec"]["f:ports"]['k:{"port":80}'] == {".": {}, "f:name": {}}
    assert fm.from_fields_v1(encoded) == paths
