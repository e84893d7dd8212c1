"""Structural OpenAPI v3 schemas of CRDs: pruning, defaulting and validation, in kube's order.

Messages copy the wording of kube's apiextensions-apiserver so that a user sees what a real
cluster would print, e.g. `spec.x: Invalid value: 2: spec.x in body should be less than 1`.
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import json
import re
import uuid
from typing import Any

from cdl.devcluster.errors import Cause

ROOT_KEEP = {"apiVersion", "kind", "metadata"}


def go_value(value: Any) -> str:
    """A value as Go's `%v`/`%q` prints it in a field error."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_ok(value: Any, typ: str) -> bool:
    if typ == "object":
        return isinstance(value, dict)
    if typ == "array":
        return isinstance(value, list)
    if typ == "string":
        return isinstance(value, str)
    if typ == "boolean":
        return isinstance(value, bool)
    if typ == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if typ == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return True


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- pruning ----------------------------------------------------------------------------------

def prune(obj: Any, schema: dict[str, Any] | None, path: str = "", root: bool = True) -> list[str]:
    """Drop fields the schema does not declare (in place); returns their paths for Strict mode."""
    if not schema or not isinstance(obj, dict | list):
        return []
    dropped: list[str] = []
    if isinstance(obj, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for n, item in enumerate(obj):
                dropped += prune(item, items, f"{path}[{n}]", False)
        return dropped
    props: dict[str, Any] = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    embedded = schema.get("x-kubernetes-embedded-resource") is True
    for key in list(obj):
        if (root or embedded) and key in ROOT_KEEP:
            if key in props and key != "metadata":
                dropped += prune(obj[key], props[key], _child(path, key), False)
            continue
        if key in props:
            dropped += prune(obj[key], props[key], _child(path, key), False)
        elif isinstance(additional, dict):
            dropped += prune(obj[key], additional, f"{path}[{key}]" if path else key, False)
        elif additional is True or preserve:
            continue
        else:
            del obj[key]
            dropped.append(_child(path, key))
    return dropped


# --- defaulting -------------------------------------------------------------------------------

def apply_defaults(obj: Any, schema: dict[str, Any] | None) -> None:
    """Fill in `default`s of missing (or null, non-nullable) properties, in place."""
    if not schema:
        return
    if isinstance(obj, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if not isinstance(sub, dict):
                continue
            if "default" in sub and (key not in obj or (obj[key] is None and not sub.get("nullable"))):
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                apply_defaults(obj[key], sub)
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            for key, value in obj.items():
                if key not in (schema.get("properties") or {}):
                    apply_defaults(value, additional)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            apply_defaults(item, schema["items"])


# --- validation -------------------------------------------------------------------------------

_FORMATS = {
    "date-time": lambda s: bool(re.match(
        r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$", s)),
    "date": lambda s: _parses(lambda: datetime.date.fromisoformat(s)) and len(s) == 10,
    "uuid": lambda s: _parses(lambda: uuid.UUID(s)),
    "ipv4": lambda s: _parses(lambda: ipaddress.IPv4Address(s)),
    "ipv6": lambda s: _parses(lambda: ipaddress.IPv6Address(s)),
    "email": lambda s: bool(re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", s)),
    "hostname": lambda s: bool(re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", s)),
    "uri": lambda s: bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", s)),
    "byte": lambda s: bool(re.match(r"^[A-Za-z0-9+/]*={0,2}$", s)) and len(s) % 4 == 0,
}


def _parses(fn: Any) -> bool:
    try:
        fn()
        return True
    except (ValueError, TypeError):
        return False


def _num(value: Any) -> str:
    return go_value(float(value)) if isinstance(value, float) else go_value(value)


def validate(value: Any, schema: dict[str, Any] | None, path: str = "", root: bool = True) -> list[Cause]:
    """Every schema violation of `value`, as kube-style causes with field paths."""
    if not schema:
        return []
    errs: list[Cause] = []
    shown = path or "<root>"

    def invalid(detail: str, reason: str = "FieldValueInvalid") -> None:
        errs.append(Cause(reason, f"Invalid value: {go_value(value)}: {detail}", shown))

    if value is None:
        if schema.get("nullable") or schema.get("x-kubernetes-preserve-unknown-fields") and "type" not in schema:
            return []
        typ = schema.get("type")
        if typ:
            errs.append(Cause("FieldValueTypeInvalid",
                              f'Invalid value: "null": {shown} in body must be of type {typ}: "null"', shown))
        return errs

    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or _type_ok(value, "integer")):
            errs.append(Cause("FieldValueTypeInvalid",
                              f'Invalid value: "{json_type(value)}": {shown} in body must be of type '
                              f'integer-or-string: "{json_type(value)}"', shown))
            return errs
    elif (typ := schema.get("type")) and not _type_ok(value, typ):
        errs.append(Cause("FieldValueTypeInvalid",
                          f'Invalid value: "{json_type(value)}": {shown} in body must be of type {typ}: '
                          f'"{json_type(value)}"', shown))
        return errs

    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(go_value(v) for v in schema["enum"])
        errs.append(Cause("FieldValueNotSupported",
                          f"Unsupported value: {go_value(value)}: supported values: {supported}", shown))

    if isinstance(value, int | float) and not isinstance(value, bool):
        if "maximum" in schema:
            mx = schema["maximum"]
            if schema.get("exclusiveMaximum") is True and value >= mx:
                invalid(f"{shown} in body should be less than {_num(mx)}")
            elif value > mx:
                invalid(f"{shown} in body should be less than or equal to {_num(mx)}")
        if "minimum" in schema:
            mn = schema["minimum"]
            if schema.get("exclusiveMinimum") is True and value <= mn:
                invalid(f"{shown} in body should be greater than {_num(mn)}")
            elif value < mn:
                invalid(f"{shown} in body should be greater than or equal to {_num(mn)}")
        if (m := schema.get("multipleOf")) and (value / m) != int(value / m):
            invalid(f"{shown} in body should be a multiple of {_num(m)}")

    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errs.append(Cause("FieldValueTooLong",
                              f"Too long: may not be more than {schema['maxLength']} bytes", shown))
        if "minLength" in schema and len(value) < schema["minLength"]:
            invalid(f"{shown} in body should be at least {schema['minLength']} chars long")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            invalid(f"{shown} in body should match '{schema['pattern']}'")
        fmt = schema.get("format")
        if fmt in _FORMATS and not _FORMATS[fmt](value):
            invalid(f'{shown} in body must be of type {fmt}: {go_value(value)}')

    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errs.append(Cause("FieldValueTooMany",
                              f"Too many: {len(value)}: must have at most {schema['maxItems']} items", shown))
        if "minItems" in schema and len(value) < schema["minItems"]:
            errs.append(Cause("FieldValueInvalid", f"Invalid value: {len(value)}: {shown} in body should have at "
                              f"least {schema['minItems']} items", shown))
        if schema.get("uniqueItems"):
            seen: list[Any] = []
            for n, item in enumerate(value):
                if item in seen:
                    errs.append(Cause("FieldValueDuplicate", f"Duplicate value: {go_value(item)}", f"{path}[{n}]"))
                seen.append(item)
        items = schema.get("items")
        if isinstance(items, dict):
            for n, item in enumerate(value):
                errs += validate(item, items, f"{path}[{n}]", False)

    if isinstance(value, dict):
        props: dict[str, Any] = schema.get("properties") or {}
        for req in schema.get("required") or []:
            if req not in value:
                errs.append(Cause("FieldValueRequired", "Required value", _child(path, req)))
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errs.append(Cause("FieldValueTooMany",
                              f"Too many: {len(value)}: must have at most {schema['maxProperties']} items", shown))
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            invalid(f"{shown} in body should have at least {schema['minProperties']} properties")
        additional = schema.get("additionalProperties")
        for key, sub in value.items():
            if root and key == "metadata":
                continue
            if key in props:
                errs += validate(sub, props[key], _child(path, key), False)
            elif isinstance(additional, dict):
                errs += validate(sub, additional, f"{path}[{key}]" if path else key, False)

    for combinator in ("allOf", "anyOf", "oneOf"):
        subs = schema.get(combinator)
        if not isinstance(subs, list):
            continue
        results = [validate(value, s, path, root) for s in subs]
        if combinator == "allOf":
            for r in results:
                errs += r
        elif combinator == "anyOf" and all(results):
            errs += results[0]
        elif combinator == "oneOf" and sum(1 for r in results if not r) != 1:
            invalid(f"{shown} in body must validate one and only one schema (oneOf)")
    if isinstance(schema.get("not"), dict) and not validate(value, schema["not"], path, root):
        invalid(f"{shown} in body must not validate the schema (not)")
    return errs


_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)


def validate_name(name: str, resource_key: str = "") -> list[Cause]:
    """metadata.name must be a DNS-1123 subdomain, as for nearly every kube kind (an APIService
    is `version.group`, `v1.` for the core group)."""
    if resource_key == "apiregistration.k8s.io/apiservices" and name.endswith("."):
        name = name[:-1]
    if len(name) > 253:
        return [Cause("FieldValueTooLong", "Too long: may not be more than 253 bytes", "metadata.name")]
    if not _SUBDOMAIN.match(name):
        return [Cause("FieldValueInvalid", f"Invalid value: {go_value(name)}: {SUBDOMAIN_MSG}", "metadata.name")]
    return []


def process(obj: dict[str, Any], schema: dict[str, Any] | None) -> tuple[list[str], list[Cause]]:
    """Prune, default, then validate `obj` in place: (pruned field paths, validation causes)."""
    if not schema:
        return [], []
    dropped = prune(obj, schema)
    apply_defaults(obj, schema)
    return dropped, validate(obj, schema)
