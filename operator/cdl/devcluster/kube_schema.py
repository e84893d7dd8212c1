"""The OpenAPI definitions of Kubernetes' built-in kinds, as a real API server knows them.

They come from the definitions of Kubernetes 1.35 bundled with the kubernetes-validate package
(`_definitions.json`, JSON Schema flavoured: `type: [string, null]`, `$ref: #/$defs/...`). They
drive three things for built-in kinds: decoding (unknown fields dropped, or refused with
fieldValidation=Strict; wrong JSON types refused as Go's decoder refuses them), the OpenAPI v3
documents (`kubectl explain pods.spec.containers`) and the list semantics server-side apply needs
(`x-kubernetes-list-type`, `x-kubernetes-list-map-keys`, `x-kubernetes-patch-merge-key`).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from cdl.devcluster.schema import json_type

SCHEMA_RELEASE = "v1.35.0-local"
REF_PREFIX = "#/$defs/"


@functools.cache
def definitions() -> dict[str, dict[str, Any]]:
    """The definitions of the release the server reports (1.35), else the newest one bundled."""
    import kubernetes_validate

    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    release = root / SCHEMA_RELEASE
    if not release.is_dir():
        bundled = [p for p in root.glob("v*-local") if p.is_dir()]
        release = max(bundled, key=lambda p: tuple(int(n) for n in p.name[1:-len("-local")].split(".")))
    return json.loads((release / "_definitions.json").read_text())["$defs"]


@functools.cache
def _by_gvk() -> dict[tuple[str, str, str], str]:
    out: dict[tuple[str, str, str], str] = {}
    for name, d in definitions().items():
        for gvk in d.get("x-kubernetes-group-version-kind") or []:
            out.setdefault((gvk.get("group", ""), gvk.get("version", ""), gvk.get("kind", "")), name)
    return out


def definition_name(group: str, version: str, kind: str) -> str | None:
    """`io.k8s.api.apps.v1.Deployment` for (apps, v1, Deployment); None for unknown kinds."""
    return _by_gvk().get((group, version, kind))


_RESOLVED: dict[str, dict[str, Any]] = {}


def resolve(schema: dict[str, Any] | None) -> dict[str, Any]:
    """A schema with its `$ref` followed (sibling keys other than the description are kept)."""
    if not schema:
        return {}
    ref = schema.get("$ref")
    if ref is None:
        return schema
    if len(schema) == 1 or (len(schema) == 2 and "description" in schema):
        hit = _RESOLVED.get(ref)
        if hit is None:
            hit = _RESOLVED[ref] = _resolve({"$ref": ref})
        return hit
    return _resolve(schema)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    seen = 0
    while "$ref" in schema and seen < 32:
        ref = schema["$ref"]
        target = definitions().get(ref[len(REF_PREFIX):]) if ref.startswith(REF_PREFIX) else None
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**(target or {}), **{k: v for k, v in rest.items() if k not in ("description",)}}
        seen += 1
    return schema


_TYPES: dict[int, set[str]] = {}


def _types(schema: dict[str, Any]) -> set[str]:
    """The JSON types a (resolved, built-in) schema allows; memoised: built-in schemas live as long
    as the process."""
    hit = _TYPES.get(id(schema))
    if hit is None:
        hit = _TYPES[id(schema)] = _compute_types(schema)
    return hit


def _compute_types(schema: dict[str, Any]) -> set[str]:
    typ = schema.get("type")
    if isinstance(typ, list):
        return set(typ)
    if isinstance(typ, str):
        return {typ}
    out: set[str] = set()
    for alt in schema.get("oneOf") or []:
        out |= _compute_types(resolve(alt))
    return out


_PY_TYPES: dict[type, str] = {str: "string", bool: "boolean", int: "integer", float: "number", list: "array",
                               dict: "object", type(None): "null"}


def _json_type(value: Any) -> str:
    fast = _PY_TYPES.get(type(value))
    if fast is not None:
        return fast
    return json_type(value)


def _fits(value: Any, types: set[str]) -> bool:
    if not types:
        return True
    t = _json_type(value)
    if t in types:
        return True
    if t == "integer" and "number" in types:
        return True
    return t == "number" and "integer" in types and float(value).is_integer()


_GO_TYPES = {"string": "string", "integer": "int", "number": "float64", "boolean": "bool",
             "array": "slice", "object": "map"}
_GO_VALUES = {"string": "string", "integer": "number", "number": "number", "boolean": "bool",
              "array": "array", "object": "object"}


class TypeMismatch(ValueError):
    """A value Go's JSON decoder would refuse (`cannot unmarshal string into ... of type int32`)."""


def decode(obj: dict[str, Any], def_name: str) -> list[str]:
    """Drop fields the definition does not declare (in place) and return their paths; raise
    TypeMismatch for a value of the wrong JSON type."""
    dropped: list[str] = []
    _walk(obj, definitions()[def_name], "", dropped, def_name.rsplit(".", 1)[-1])
    return dropped


def _walk(value: Any, schema: dict[str, Any], path: str, dropped: list[str], kind: str) -> None:
    schema = resolve(schema)
    if value is None:
        return
    types = _types(schema)
    if types and _PY_TYPES.get(type(value)) not in types and not _fits(value, types):
        want = sorted(types - {"null"})
        go = _GO_TYPES.get(want[0], want[0]) if want else "value"
        raise TypeMismatch(f"json: cannot unmarshal {_GO_VALUES[_json_type(value)]} into Go struct field "
                           f"{kind}.{path or kind} of type {go}")
    if isinstance(value, dict):
        props = schema.get("properties")
        additional = schema.get("additionalProperties")
        if props is None and additional is None:
            return  # free-form (RawExtension, FieldsV1, JSON)
        for key in list(value):
            child = f"{path}.{key}" if path else key
            if props and key in props:
                _walk(value[key], props[key], child, dropped, kind)
            elif isinstance(additional, dict):
                _walk(value[key], additional, child, dropped, kind)
            elif additional is True:
                continue
            else:
                del value[key]
                dropped.append(child)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for n, item in enumerate(value):
            _walk(item, schema["items"], f"{path}[{n}]", dropped, kind)


# --- OpenAPI documents ----------------------------------------------------------------------------

def _to_openapi(schema: Any, ref_prefix: str) -> Any:
    """JSON Schema flavour -> OpenAPI flavour: single `type`, refs into `ref_prefix`,
    int-or-string as kube marks it."""
    if isinstance(schema, list):
        return [_to_openapi(s, ref_prefix) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and value.startswith(REF_PREFIX):
            target = value[len(REF_PREFIX):]
            if schema.get("description"):
                return {"allOf": [{"$ref": ref_prefix + target}],
                        **{k: _to_openapi(v, ref_prefix) for k, v in schema.items() if k != "$ref"}}
            out["$ref"] = ref_prefix + target
        elif key == "type" and isinstance(value, list):
            real = [t for t in value if t != "null"]
            if real:
                out["type"] = real[0]
        elif key in ("properties", "patternProperties"):
            out[key] = {k: _to_openapi(v, ref_prefix) for k, v in value.items()}
        else:
            out[key] = _to_openapi(value, ref_prefix)
    alts = out.get("oneOf")
    if isinstance(alts, list) and {a.get("type") for a in alts if isinstance(a, dict)} in (
            {"string", "integer"}, {"string", "number"}):
        out.pop("oneOf")
        out["x-kubernetes-int-or-string"] = True
    return out


def _refs(schema: Any, found: set[str]) -> None:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            name = ref[len(REF_PREFIX):]
            if name not in found and name in definitions():
                found.add(name)
                _refs(definitions()[name], found)
        for v in schema.values():
            _refs(v, found)
    elif isinstance(schema, list):
        for v in schema:
            _refs(v, found)


def closure(names: list[str]) -> list[str]:
    """The definitions `names` need, themselves included."""
    found: set[str] = set()
    for name in names:
        if name in definitions():
            found.add(name)
            _refs(definitions()[name], found)
    return sorted(found)


def openapi_schemas(names: list[str], ref_prefix: str = "#/components/schemas/") -> dict[str, Any]:
    """OpenAPI schemas of `names` and everything they reference, refs rewritten to `ref_prefix`."""
    return {name: _to_openapi(definitions()[name], ref_prefix) for name in closure(names)}
