"""Label and field selector parsing and matching (cdl.devcluster.selectors)."""

import pytest

from cdl.devcluster.errors import ApiError
from cdl.devcluster.selectors import Selector, parse_label_selector

OBJ = {"metadata": {"name": "a", "namespace": "ns", "labels": {"app": "x", "tier": "web"}},
       "involvedObject": {"kind": "Widget"}, "spec": {"on": True}}


@pytest.mark.parametrize("text,expected", [
    ("app=x", True), ("app==x", True), ("app!=x", False), ("app=y", False),
    ("app in (x, y)", True), ("app notin (x)", False), ("app", True), ("!app", False),
    ("missing", False), ("!missing", True), ("missing!=z", True), ("app=x,tier=web", True),
    ("app=x,tier in (db)", False), ("", True),
])
def test_label_selector(text, expected):
    assert Selector.parse(text, None).matches(OBJ) is expected


@pytest.mark.parametrize("text,expected", [
    ("metadata.name=a", True), ("metadata.name!=a", False), ("metadata.namespace=ns,metadata.name=a", True),
    ("involvedObject.kind=Widget", True), ("spec.on=true", True), ("spec.missing=", True),
    ("metadata.name==b", False),
])
def test_field_selector(text, expected):
    assert Selector.parse(None, text).matches(OBJ) is expected


def test_bad_selector_is_400():
    with pytest.raises(ApiError) as e:
        parse_label_selector("app in x")
    assert e.value.code == 400
