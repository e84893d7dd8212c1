"""CRD generation: structural OpenAPI v3 schemas from the pydantic models.

A Kubernetes structural schema has no `$ref`, a `type` on every node (except int-or-string and
pass-through nodes), no `additionalProperties` beside `properties`, and OpenAPI 3.0 number
bounds. This module turns pydantic's JSON Schema into that shape, so the models stay the one
source of truth for the CRDs, `cdl validate` and the reference docs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from cdl.api.common import GROUP, VERSION
from cdl.api.kinds import KINDS, KindInfo

CATEGORY = "cdl"
_DROP = {"title", "discriminator"}


def structural(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the structural form of one pydantic JSON Schema node (recursively)."""
    defs = defs if defs is not None else schema.get("$defs", {})
    node = copy.deepcopy(schema)
    node.pop("$defs", None)
    if "$ref" in node:
        target = defs[node.pop("$ref").split("/")[-1]]
        merged = {**copy.deepcopy(target), **node}
        return structural(merged, defs)
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) == 1:
            inner = structural(branches[0], defs)
            extras = {k: v for k, v in node.items() if k not in _DROP and k != "default"}
            if node.get("default") is not None:
                extras["default"] = node["default"]
            return {**inner, **{k: v for k, v in extras.items() if k not in inner or k == "description"}}
        raise ValueError(f"cannot express a union of {len(branches)} types structurally: {branches}")
    if node.get("x-kubernetes-int-or-string"):
        node.pop("anyOf", None)
        node.pop("type", None)
    for key in _DROP:
        node.pop(key, None)
    if "default" in node and (node["default"] is None or isinstance(node["default"], dict | list)):
        node.pop("default")
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node and not isinstance(node[bound], bool):
            node[plain] = node.pop(bound)
            node[bound] = True
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    if "properties" in node:
        node["type"] = "object"
        node.pop("additionalProperties", None)
        node["properties"] = {k: structural(v, defs) for k, v in node["properties"].items()}
    elif isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = structural(node["additionalProperties"], defs)
    elif node.get("additionalProperties") is True:
        node.pop("additionalProperties")
        node["x-kubernetes-preserve-unknown-fields"] = True
    if "items" in node:
        node["items"] = structural(node["items"], defs)
    if node.get("type") == "object" and "properties" not in node and "additionalProperties" not in node:
        node["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("format") == "date-time":
        node.pop("format")  # status timestamps are written by the operator as RFC 3339 strings
    return node


def kind_schema(info: KindInfo) -> dict[str, Any]:
    """The openAPIV3Schema of one kind."""
    spec = structural(info.spec_model.model_json_schema(by_alias=True, mode="validation"))
    status = structural(info.status_model.model_json_schema(by_alias=True, mode="validation"))
    # Status keeps fields written by a newer operator instead of pruning them away.
    status["x-kubernetes-preserve-unknown-fields"] = True
    spec["description"] = info.spec_model.__doc__.strip().splitlines()[0] if info.spec_model.__doc__ else (
        f"Desired state of the {info.kind}."
    )
    status["description"] = f"Observed state of the {info.kind}, written by the cdl operator."
    return {
        "type": "object",
        "description": info.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def crd(info: KindInfo) -> dict[str, Any]:
    """The CustomResourceDefinition object for one kind."""
    columns = [
        {
            "name": c.name,
            "type": c.type,
            "jsonPath": c.json_path,
            **({"description": c.description} if c.description else {}),
            **({"priority": c.priority} if c.priority else {}),
        }
        for c in info.columns
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": info.crd_name, "labels": {"app.kubernetes.io/part-of": "cdl"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": kind_schema(info)},
                }
            ],
        },
    }


HEADER = "# Generated by `cdl crds generate` from cdl.api; do not edit by hand.\n"


def render(info: KindInfo) -> str:
    return HEADER + yaml.safe_dump(crd(info), sort_keys=False, width=120)


def generate(out_dir: Path) -> list[Path]:
    """Write one YAML file per kind into `out_dir`; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for info in KINDS:
        path = out_dir / f"{GROUP}_{info.plural}.yaml"
        path.write_text(render(info))
        written.append(path)
    return written


def stale(out_dir: Path) -> list[str]:
    """Names of files in `out_dir` that differ from what the models generate, and CRD files of
    the group there that no kind generates any more."""
    expected = {f"{GROUP}_{info.plural}.yaml": info for info in KINDS}
    differ = [name for name, info in expected.items()
              if not (out_dir / name).exists() or (out_dir / name).read_text() != render(info)]
    leftover = sorted(p.name for p in out_dir.glob(f"{GROUP}_*.yaml") if p.name not in expected)
    return differ + leftover
