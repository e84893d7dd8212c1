"""Three PATCH flavours: JSON merge (RFC 7386), JSON patch (RFC 6902) and strategic merge (an
approximation of kube's, for built-in kinds). Server-side apply, the fourth, is fieldmanager.py.

All functions are pure: they return a new document and never change their inputs.
"""

from __future__ import annotations

import copy
from typing import Any

from cdl.devcluster import kube_schema
from cdl.devcluster.errors import ApiError, bad_request
from cdl.merge_patch import merge_patch as merge_patch  # RFC 7386, the one copy; re-exported

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
APPLY_PATCH_CBOR = "application/apply-patch+cbor"


class PatchError(ApiError):
    """A patch that parsed but cannot be applied: kube answers 422."""

    def __init__(self, message: str) -> None:
        super().__init__(422, message)


# --- JSON patch -------------------------------------------------------------------------------

def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            raise PatchError(f"doc is missing path: {path!r}")
    return cur


def _get(doc: Any, path: str) -> Any:
    cur = doc
    for p in _pointer(path):
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            raise PatchError(f"doc is missing path: {path!r}")
    return cur


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise PatchError(f"add operation: index out of range: {path!r}")
    else:
        raise PatchError(f"doc is missing path: {path!r}")
    return doc


def _remove(doc: Any, path: str) -> tuple[Any, Any]:
    parts = _pointer(path)
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return doc, parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return doc, parent.pop(int(last))
    raise PatchError(f"Unable to remove nonexistent key: {last}: missing value")


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902, all six operations; a failed `test` raises PatchError (422)."""
    if not isinstance(ops, list):
        raise bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op:
            raise bad_request(f"invalid json patch operation: {op!r}")
        kind, path = op["op"], op.get("path", "")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc, _ = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)
            if _pointer(path):
                doc, _ = _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "move":
            doc, value = _remove(doc, op.get("from", ""))
            doc = _add(doc, path, value)
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, op.get("from", ""))))
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise PatchError(f"testing value {path} failed: test failed")
        else:
            raise bad_request(f"Unexpected kind: {kind}")
    return doc


# --- strategic merge --------------------------------------------------------------------------

# Merge keys of kube's built-in list fields; a list of objects that all carry `name` is merged by
# name too. Other lists are replaced, as kube does for lists without a patch strategy.
MERGE_KEYS: dict[str, str] = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name", "env": "name",
    "volumes": "name", "imagePullSecrets": "name", "volumeMounts": "mountPath",
    "volumeDevices": "devicePath", "ownerReferences": "uid", "conditions": "type",
    "hostAliases": "ip", "topologySpreadConstraints": "topologyKey",
}
PRIMITIVE_MERGE = {"finalizers"}


def _merge_key(field_name: str, items: list[Any]) -> str | None:
    if field_name == "ports":
        objs = [i for i in items if isinstance(i, dict)]
        if objs and all("containerPort" in i for i in objs):
            return "containerPort"
        if objs and all("port" in i for i in objs):
            return "port"
        return None
    key = MERGE_KEYS.get(field_name)
    if key:
        return key
    objs = [i for i in items if isinstance(i, dict)]
    if objs and len(objs) == len(items) and all("name" in i for i in objs):
        return "name"
    return None


def _child_schema(schema: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    """The schema of field `key`, or None (unknown: the name-based rules apply)."""
    if schema is None:
        return None
    s = kube_schema.resolve(schema)
    props = s.get("properties") or {}
    if key in props:
        return props[key]
    extra = s.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def _merge_list(field_name: str, original: list[Any], patch: list[Any],
                schema: dict[str, Any] | None = None) -> list[Any]:
    items_schema = None
    if schema is not None:  # the kind's own patch strategy and merge key
        s = kube_schema.resolve(schema)
        merge = "merge" in (s.get("x-kubernetes-patch-strategy") or "")
        key = s.get("x-kubernetes-patch-merge-key") if merge else None
        items_schema = s.get("items") if isinstance(s.get("items"), dict) else None
        primitive = merge and not key
    else:
        primitive = field_name in PRIMITIVE_MERGE
        key = None if primitive else _merge_key(field_name, original + patch)
    if primitive:
        out = list(original)
        out.extend(v for v in patch if v not in out)
        return out
    if key is None:
        if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
            return [i for i in patch if not (isinstance(i, dict) and "$patch" in i)]
        return copy.deepcopy(patch)
    out = [copy.deepcopy(i) for i in original]
    for item in patch:
        if not isinstance(item, dict):
            continue
        if item.get("$patch") == "replace":
            return [i for i in patch if not (isinstance(i, dict) and "$patch" in i)]
        idx = next((n for n, o in enumerate(out) if isinstance(o, dict) and o.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append(strategic_merge({}, item, items_schema))
        else:
            out[idx] = strategic_merge(out[idx], item, items_schema)
    return out


def strategic_merge(original: Any, patch: Any, schema: dict[str, Any] | None = None) -> Any:
    """kube's strategic merge: maps merge, `null` deletes, lists merge by their patch merge key
    (the kind's schema: `x-kubernetes-patch-strategy`/`-merge-key`; without one, by well-known
    field names), other lists are replaced; `$patch`, `$retainKeys`, `$setElementOrder/` and
    `$deleteFromPrimitiveList/` directives are understood."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = dict(original) if isinstance(original, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            if isinstance(result.get(name), list):
                result[name] = [v for v in result[name] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = strategic_merge(result.get(key), value, _child_schema(schema, key))
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(key, result[key], value, _child_schema(schema, key))
        elif isinstance(value, list):
            result[key] = _merge_list(key, [], value, _child_schema(schema, key))
        else:
            result[key] = copy.deepcopy(value)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    for key, order in patch.items():
        if key.startswith("$setElementOrder/") and isinstance(order, list):
            _reorder(result, key.split("/", 1)[1], order)
    return result


def _reorder(result: dict[str, Any], name: str, order: list[Any]) -> None:
    items = result.get(name)
    if not isinstance(items, list) or not order:
        return
    if isinstance(order[0], dict):
        key = next(iter(order[0]))
        rank = {o.get(key): n for n, o in enumerate(order) if isinstance(o, dict)}
        items.sort(key=lambda i: rank.get(i.get(key) if isinstance(i, dict) else None, len(rank)))
    else:
        rank = {v: n for n, v in enumerate(order)}
        items.sort(key=lambda v: rank.get(v, len(rank)))
