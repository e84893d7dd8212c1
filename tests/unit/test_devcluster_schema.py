"""Structural schema pruning, defaulting and validation with kube's messages (cdl.devcluster.schema),
and the printer-column JSONPath of cdl.devcluster.table."""

from cdl.devcluster import schema, table

SCHEMA = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["size"],
            "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "ratio": {"type": "number", "maximum": 1, "exclusiveMaximum": True},
                "color": {"type": "string", "enum": ["a", "b"], "default": "a"},
                "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 3, "minLength": 2},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2, "minItems": 1},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "port": {"x-kubernetes-int-or-string": True},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "maybe": {"type": "string", "nullable": True},
                "when": {"type": "string", "format": "date-time"},
                "nested": {"type": "object", "properties": {"deep": {"type": "integer", "default": 7}}, "default": {}},
            },
        },
    },
}


def messages(obj):
    dropped, causes = schema.process(obj, SCHEMA)
    return dropped, [f"{c.field}: {c.message}" for c in causes]


def test_valid_object_is_defaulted_and_pruned():
    obj = {"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "n", "anything": 1},
           "spec": {"size": 2, "unknown": 1, "free": {"k": {"j": 1}}, "labels": {"a": "b"}, "port": "http",
                    "maybe": None, "when": "2024-01-01T00:00:00Z"}, "extra": True}
    dropped, errs = messages(obj)
    assert errs == []
    assert sorted(dropped) == ["extra", "spec.unknown"]
    assert obj["spec"]["color"] == "a" and obj["spec"]["nested"] == {"deep": 7}
    assert obj["metadata"] == {"name": "n", "anything": 1}  # metadata is never pruned here


def test_kube_wording_of_errors():
    _, errs = messages({"spec": {"size": 11, "ratio": 1, "color": "c", "name": "ABCD", "tags": ["a", "b", "c"],
                                 "labels": {"k": 1}, "port": 1.5, "when": "yesterday"}})
    assert errs == [
        "spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10",
        "spec.ratio: Invalid value: 1: spec.ratio in body should be less than 1",
        'spec.color: Unsupported value: "c": supported values: "a", "b"',
        "spec.name: Too long: may not be more than 3 bytes",
        "spec.name: Invalid value: \"ABCD\": spec.name in body should match '^[a-z]+$'",
        "spec.tags: Too many: 3: must have at most 2 items",
        'spec.labels[k]: Invalid value: "integer": spec.labels[k] in body must be of type string: "integer"',
        'spec.port: Invalid value: "number": spec.port in body must be of type integer-or-string: "number"',
        'spec.when: Invalid value: "yesterday": spec.when in body must be of type date-time: "yesterday"',
    ]
    _, errs = messages({"spec": {"size": "string", "name": "a", "tags": []}})
    assert errs == [
        'spec.size: Invalid value: "string": spec.size in body must be of type integer: "string"',
        'spec.name: Invalid value: "a": spec.name in body should be at least 2 chars long',
        "spec.tags: Invalid value: 0: spec.tags in body should have at least 1 items",
    ]
    _, errs = messages({"spec": {}})
    assert errs == ["spec.size: Required value"]


def test_name_validation():
    assert schema.validate_name("ok-name.x") == []
    assert schema.validate_name("Bad_Name")[0].message.startswith('Invalid value: "Bad_Name": a lowercase RFC 1123')


def test_printer_column_jsonpath_and_age():
    obj = {"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]},
           "spec": {"items": [{"n": 1}, {"n": 2}]}, "metadata": {"labels": {"a.b/c": "v"}}}
    assert table.jsonpath(obj, '.status.conditions[?(@.type=="Ready")].status') == ["True"]
    assert table.jsonpath(obj, ".spec.items[1].n") == [2]
    assert table.jsonpath(obj, ".spec.items[*].n") == [1, 2]
    assert table.jsonpath(obj, r".metadata.labels.a\.b/c") == ["v"]
    assert table.jsonpath(obj, ".spec.missing") == []
    assert [table.human_duration(s) for s in (5, 150, 700, 4 * 3600 + 60, 3 * 86400)] == ["5s", "2m30s", "11m", "4h1m", "3d"]
