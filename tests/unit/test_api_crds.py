"""The CRDs in crds/ come from the models and are structural, as a real API server demands."""

from pathlib import Path

import pytest
import yaml

from cdl.api.crdgen import crd, stale
from cdl.api.kinds import KINDS

ROOT = Path(__file__).resolve().parents[2]


def test_checked_in_crds_are_up_to_date():
    assert stale(ROOT / "crds") == [], "run `cdl crds generate` and commit crds/"


def test_the_charts_crd_copy_is_up_to_date():
    assert stale(ROOT / "charts" / "cdl" / "crds") == [], "run `cdl crds generate` (it writes the chart's copy too)"


def test_a_crd_file_no_kind_generates_is_stale(tmp_path):
    from cdl.api.crdgen import generate

    generate(tmp_path)
    (tmp_path / "cdl.dev_widgets.yaml").write_text("kind: CustomResourceDefinition\n")
    (tmp_path / "cdl.dev_experiments.yaml").write_text("changed by hand\n")
    assert stale(tmp_path) == ["cdl.dev_experiments.yaml", "cdl.dev_widgets.yaml"]


def _walk(node, path="openAPIV3Schema"):
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("info", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(info):
    schema = crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert "$ref" not in yaml.safe_dump(schema)
    for path, node in _walk(schema):
        passthrough = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
        assert "type" in node or passthrough, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        for banned in ("anyOf", "oneOf", "allOf", "$defs", "title"):
            if banned == "anyOf" and node.get("x-kubernetes-int-or-string"):
                continue
            assert banned not in node, f"{path} uses {banned}"
        if isinstance(node.get("exclusiveMinimum"), int | float) and not isinstance(node["exclusiveMinimum"], bool):
            pytest.fail(f"{path}: OpenAPI v3.0 wants a boolean exclusiveMinimum")


@pytest.mark.parametrize("info", KINDS, ids=lambda k: k.kind)
def test_crd_metadata_makes_kubectl_useful(info):
    spec = crd(info)["spec"]
    version = spec["versions"][0]
    assert spec["names"]["categories"] == ["cdl"]
    assert spec["names"]["shortNames"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Age"} <= columns
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"phase", "conditions", "observedGeneration", "message"} <= set(status)


def test_spec_determined_is_the_only_kind_of_passthrough_in_experiment():
    spec = crd(KINDS[1])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["determined"]["x-kubernetes-preserve-unknown-fields"] is True
    assert "x-kubernetes-preserve-unknown-fields" not in spec["properties"]["searcher"]


def test_reference_docs_are_up_to_date():
    from cdl.api.reference import render

    assert (ROOT / "docs" / "reference.md").read_text() == render(), "run `cdl docs reference`"
