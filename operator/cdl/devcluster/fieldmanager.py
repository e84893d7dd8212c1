"""Field ownership and server-side apply, as kube's structured-merge-diff does them.

Every write records which field manager set which fields in `metadata.managedFields`
(FieldsV1: `{"f:spec":{"f:replicas":{}}}`, keyed list items `k:{"name":"web"}`, set items `v:"x"`).

- An update (create, PUT, merge/JSON/strategic PATCH) gives its manager the fields whose value it
  changed; other managers lose them.
- An apply (`application/apply-patch+yaml`) merges the manager's configuration into the object
  (maps by key, keyed lists by their keys, sets by value, everything else replaced), fails with
  409 "Apply failed with N conflict(s)" when it would change a value another manager owns (unless
  `force=true`, which takes the fields over), and removes the fields the manager applied before,
  no longer applies, and nobody else owns.

Lists follow the schema: `x-kubernetes-list-type: map` + `x-kubernetes-list-map-keys` (CRDs and
built-ins), built-ins' `x-kubernetes-patch-merge-key`, `set`; other lists are atomic.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from cdl.devcluster import kube_schema
from cdl.devcluster.errors import ApiError, Cause

Path = tuple[str, ...]
ITEM = ("<item>",)  # the "value" of a keyed-list or set item: its presence
_MISSING = object()
IGNORED_META = frozenset({"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                          "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"})
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


# --- schema -----------------------------------------------------------------------------------------

def _resolve(schema: Any) -> dict[str, Any]:
    return kube_schema.resolve(schema) if isinstance(schema, dict) else {}


def _child(schema: dict[str, Any], key: str) -> Any:
    props = schema.get("properties") or {}
    if key in props:
        return props[key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def _list_semantics(schema: dict[str, Any]) -> tuple[str, list[str]]:
    """("map", keys), ("set", []) or ("atomic", []) for a list field's schema."""
    list_type = schema.get("x-kubernetes-list-type")
    keys = schema.get("x-kubernetes-list-map-keys")
    if list_type == "map" and keys:
        return "map", list(keys)
    if list_type in ("set", "atomic"):
        return list_type, []
    if "merge" in (schema.get("x-kubernetes-patch-strategy") or ""):
        key = schema.get("x-kubernetes-patch-merge-key")
        return ("map", [key]) if key else ("set", [])
    return "atomic", []


def _atomic_map(schema: dict[str, Any]) -> bool:
    return schema.get("x-kubernetes-map-type") == "atomic"


def root_schema(schema: dict[str, Any] | None) -> dict[str, Any]:
    """The schema of a whole object, with `metadata` described by ObjectMeta (CRD schemas omit it)."""
    schema = _resolve(schema) if schema else {}
    props = dict(schema.get("properties") or {})
    props["metadata"] = {"$ref": kube_schema.REF_PREFIX + OBJECT_META}
    return {**schema, "properties": props}


# --- field sets -------------------------------------------------------------------------------------

def _key_of(item: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    return {k: item[k] for k in keys if k in item}


def _elem_key(key: dict[str, Any]) -> str:
    return "k:" + json.dumps(key, separators=(",", ":"), sort_keys=True)


def _elem_value(value: Any) -> str:
    return "v:" + json.dumps(value, separators=(",", ":"), sort_keys=True)


def leaves(value: Any, schema: Any, prefix: Path = ()) -> dict[Path, Any]:
    """Every owned field of `value`: leaf path -> value (keyed and set items -> ITEM)."""
    out: dict[Path, Any] = {}
    _leaves(value, schema, prefix, out)
    return out


def _leaves(value: Any, schema: Any, prefix: Path, out: dict[Path, Any]) -> None:
    s = _resolve(schema)
    if isinstance(value, dict) and not _atomic_map(s):
        if not value:
            if prefix:
                out[prefix] = {}
            return
        for k, v in value.items():
            _leaves(v, _child(s, k), (*prefix, "f:" + k), out)
        return
    if isinstance(value, list) and value:
        semantics, keys = _list_semantics(s)
        if semantics == "map" and all(isinstance(i, dict) for i in value):
            for item in value:
                path = (*prefix, _elem_key(_key_of(item, keys)))
                out[path] = ITEM
                _leaves(item, s.get("items"), path, out)
            return
        if semantics == "set" and not any(isinstance(i, dict | list) for i in value):
            for item in value:
                out[(*prefix, _elem_value(item))] = ITEM
            return
    out[prefix] = value


def object_leaves(obj: dict[str, Any], schema: Any, subresource: str, status_subresource: bool) -> dict[Path, Any]:
    """The owned fields of a whole object for a write to `subresource` ("" or "status")."""
    if subresource == "status":
        return leaves(obj.get("status"), _child(_resolve(schema), "status"), ("f:status",)) \
            if obj.get("status") is not None else {}
    view = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")
            and not (status_subresource and k == "status")}
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in IGNORED_META}
    if meta:
        view["metadata"] = meta
    else:
        view.pop("metadata", None)
    return leaves(view, schema) if view else {}


def to_fields_v1(paths: set[Path]) -> dict[str, Any]:
    """A set of paths as FieldsV1: nested objects; `.` marks an item that also has children."""
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for elem in path:
            node = node.setdefault(elem, {})
    for path in paths:
        node = root
        for elem in path:
            node = node[elem]
        if node and "." not in node:
            node["."] = {}
    return root


def from_fields_v1(fields: Any, prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    if not isinstance(fields, dict):
        return out
    if not fields and prefix:
        out.add(prefix)
    for key, sub in fields.items():
        if key == ".":
            out.add(prefix)
        else:
            out |= from_fields_v1(sub, (*prefix, key))
    return out


def render(path: Path) -> str:
    """`.spec.containers[name="web"].image`, as kube prints a field in a conflict."""
    out = ""
    for elem in path:
        kind, _, rest = elem.partition(":")
        if kind == "f":
            out += "." + rest
        elif kind == "k":
            key = json.loads(rest)
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in key.items()) + "]"
        elif kind == "v":
            out += f"[={rest}]"
        else:
            out += f"[{rest}]"
    return out


# --- managed fields entries ------------------------------------------------------------------------

@dataclass
class Entry:
    manager: str
    operation: str  # Apply | Update
    api_version: str
    time: str
    subresource: str
    fields: set[Path]

    def same_owner(self, manager: str, operation: str, subresource: str) -> bool:
        return (self.manager, self.operation, self.subresource) == (manager, operation, subresource)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"manager": self.manager, "operation": self.operation, "apiVersion": self.api_version,
                               "time": self.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(self.fields)}
        if self.subresource:
            out["subresource"] = self.subresource
        return out


def read_entries(obj: dict[str, Any] | None) -> list[Entry]:
    out = []
    for e in ((obj or {}).get("metadata") or {}).get("managedFields") or []:
        if isinstance(e, dict) and e.get("manager") is not None:
            out.append(Entry(e.get("manager", ""), e.get("operation", "Update"), e.get("apiVersion", ""),
                             e.get("time", ""), e.get("subresource", ""), from_fields_v1(e.get("fieldsV1"))))
    return out


def write_entries(entries: list[Entry]) -> list[dict[str, Any]]:
    return [e.to_dict() for e in entries if e.fields]


def comparable(managed: Any) -> list[Any]:
    """managedFields without their timestamps: a write that changes nothing else is a no-op
    exactly when this is unchanged too."""
    return [{k: v for k, v in e.items() if k != "time"} for e in managed or [] if isinstance(e, dict)]


def _owner_entry(entries: list[Entry], manager: str, operation: str, subresource: str, api_version: str,
                 now: str) -> Entry:
    for e in entries:
        if e.same_owner(manager, operation, subresource):
            return e
    entry = Entry(manager, operation, api_version, now, subresource, set())
    entries.append(entry)
    return entry


def record_update(old_leaves: dict[Path, Any], new_leaves: dict[Path, Any], entries: list[Entry], manager: str,
                  subresource: str, api_version: str, now: str) -> list[Entry]:
    """An update by `manager`: it owns what it changed, others lose what changed or went away."""
    changed = {p for p, v in new_leaves.items() if old_leaves.get(p, _MISSING) != v}
    removed = old_leaves.keys() - new_leaves.keys()
    if not changed and not removed:
        return entries
    mine = _owner_entry(entries, manager, "Update", subresource, api_version, now)
    for e in entries:
        if e is mine:
            continue
        before = len(e.fields)
        e.fields -= changed
        e.fields -= removed
        if len(e.fields) != before:
            e.time = now
    mine.fields = (mine.fields - removed) | changed
    mine.fields &= new_leaves.keys()
    mine.api_version, mine.time = api_version, now
    return [e for e in entries if e.fields]


# --- apply ------------------------------------------------------------------------------------------

def _matches(item: Any, key: dict[str, Any]) -> bool:
    return isinstance(item, dict) and all(item.get(k) == v for k, v in key.items())


# Defaults of list-map key fields (kube's OpenAPI v3 declares them; the bundled v2-style
# definitions do not): a container or service port named without `protocol` is the TCP one.
KEY_DEFAULTS = {"protocol": "TCP"}


def _key_defaults(schema: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    props = _resolve(schema.get("items")).get("properties") or {}
    out = {}
    for k in keys:
        sub = props.get(k)
        if isinstance(sub, dict) and "default" in sub:
            out[k] = sub["default"]
        elif k in KEY_DEFAULTS and k in props:
            out[k] = KEY_DEFAULTS[k]
    return out


def align_keys(config: Any, live: Any, schema: Any) -> Any:
    """Fill in key fields a configuration item left out and the server defaults (a port's
    `protocol`): from the matching live item, else from the key's default, so the configuration
    and the object name the same item."""
    s = _resolve(schema)
    if isinstance(config, dict):
        live_map = live if isinstance(live, dict) else {}
        return {k: align_keys(v, live_map.get(k), _child(s, k)) for k, v in config.items()}
    if isinstance(config, list):
        semantics, keys = _list_semantics(s)
        if semantics != "map":
            return config
        live_items = live if isinstance(live, list) else []
        defaults = _key_defaults(s, keys)
        out = []
        for item in config:
            if isinstance(item, dict):
                key = _key_of(item, keys)
                match = next((li for li in live_items if _matches(li, key)), None)
                fill = {k: match[k] for k in keys if k in match} if match is not None else defaults
                item = {**{k: v for k, v in fill.items() if k not in item}, **item}
                item = align_keys(item, match, s.get("items"))
            out.append(item)
        return out
    return config


def merge(live: Any, config: Any, schema: Any) -> Any:
    """`config` merged into `live` following the schema's map, list and set semantics."""
    s = _resolve(schema)
    if isinstance(config, dict) and isinstance(live, dict) and not _atomic_map(s):
        out = dict(live)
        for k, v in config.items():
            out[k] = merge(live[k], v, _child(s, k)) if k in live else copy.deepcopy(v)
        return out
    if isinstance(config, list) and isinstance(live, list):
        semantics, keys = _list_semantics(s)
        if semantics == "map" and all(isinstance(i, dict) for i in config + live):
            merged = [copy.deepcopy(i) for i in live]
            for item in config:
                key = _key_of(item, keys)
                idx = next((n for n, li in enumerate(merged) if _matches(li, key)), None)
                if idx is None:
                    merged.append(copy.deepcopy(item))
                else:
                    merged[idx] = merge(merged[idx], item, s.get("items"))
            return merged
        if semantics == "set":
            return copy.deepcopy(config) + [i for i in live if i not in config]
    return copy.deepcopy(config)


def _remove(obj: Any, path: Path) -> bool:
    """Remove the field or item at `path`; False when it is not there."""
    cur = obj
    for elem in path[:-1]:
        cur = _step(cur, elem)
        if cur is _MISSING:
            return False
    kind, _, rest = path[-1].partition(":")
    if kind == "f" and isinstance(cur, dict) and rest in cur:
        del cur[rest]
        return True
    if kind == "k" and isinstance(cur, list):
        key = json.loads(rest)
        before = len(cur)
        cur[:] = [i for i in cur if not _matches(i, key)]
        return len(cur) != before
    if kind == "v" and isinstance(cur, list):
        value = json.loads(rest)
        if value in cur:
            cur.remove(value)
            return True
    return False


def _step(cur: Any, elem: str) -> Any:
    kind, _, rest = elem.partition(":")
    if kind == "f" and isinstance(cur, dict):
        return cur.get(rest, _MISSING)
    if kind == "k" and isinstance(cur, list):
        key = json.loads(rest)
        return next((i for i in cur if _matches(i, key)), _MISSING)
    return _MISSING


def _value_at(obj: Any, path: Path) -> Any:
    cur = obj
    for elem in path:
        cur = _step(cur, elem)
        if cur is _MISSING:
            return _MISSING
    return cur


def describe(e: Entry) -> str:
    """A manager as kube names it in a conflict: `"m"` for an applier, `"kubectl" with subresource
    "scale" using apps/v1` for an update."""
    out = f'"{e.manager}"'
    if e.subresource:
        out += f' with subresource "{e.subresource}"'
    if e.operation == "Update":
        out += f" using {e.api_version}"
    return out


def conflict_error(conflicts: list[tuple[Entry, Path]]) -> ApiError:
    """409 with kube's wording: `Apply failed with 1 conflict: conflict with "kubectl-edit" using
    v1: .a.b`."""
    n = len(conflicts)
    causes = [Cause("FieldManagerConflict", "conflict with " + describe(e), render(p)) for e, p in conflicts]
    if n == 1:
        message = f"Apply failed with 1 conflict: {causes[0].message}: {causes[0].field}"
    else:
        by_manager: dict[str, list[str]] = {}
        for c in causes:
            by_manager.setdefault(c.message, []).append(c.field)
        parts = [f"{m.replace('conflict with', 'conflicts with', 1)}:\n" + "\n".join(f"- {f}" for f in fs)
                 for m, fs in by_manager.items()]
        message = f"Apply failed with {n} conflicts: " + "\n".join(parts)
    return ApiError(409, message, reason="Conflict", causes=causes)


def apply(live: dict[str, Any] | None, config: dict[str, Any], schema: Any, manager: str, subresource: str,
          status_subresource: bool, force: bool, api_version: str, now: str) -> tuple[dict[str, Any], list[Entry]]:
    """The object after `manager` applies `config` to `live` (None: not there yet) and the new
    ownership; raises the 409 conflict error unless `force`."""
    entries = read_entries(live)
    base = live if live is not None else {}
    config = align_keys(config, base, schema)
    wanted = object_leaves(config, schema, subresource, status_subresource)
    current = object_leaves(base, schema, subresource, status_subresource) if live is not None else {}
    mine = next((e for e in entries if e.same_owner(manager, "Apply", subresource)), None)
    conflicts: list[tuple[Entry, Path]] = []
    for e in entries:
        if e is mine:
            continue
        for p in sorted(e.fields & wanted.keys()):
            if wanted[p] is not ITEM and current.get(p, _MISSING) != wanted[p]:
                conflicts.append((e, p))
    if conflicts and not force and not _client_side_apply_upgrade(live, conflicts, manager, schema):
        raise conflict_error(conflicts)
    for e, p in conflicts:
        e.fields.discard(p)
    merged = merge(copy.deepcopy(base), {k: v for k, v in config.items() if k not in ("apiVersion", "kind")}, schema)
    if mine is not None:
        others: set[Path] = set().union(*(e.fields for e in entries if e is not mine))
        gone: list[Path] = []
        for p in sorted(mine.fields - wanted.keys(), key=len):
            if any(p[:len(g)] == g for g in gone):
                continue  # inside an item already removed
            if p in others or any(o[:len(p)] == p for o in others if len(o) > len(p)):
                continue
            if _remove(merged, p):
                gone.append(p)
                _drop_empty_parents(merged, p, others | set(wanted))
    if mine is None:
        mine = Entry(manager, "Apply", api_version, now, subresource, set())
        entries.append(mine)
    mine.fields, mine.api_version, mine.time = set(wanted), api_version, now
    return merged, [e for e in entries if e.fields]


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _client_side_apply_upgrade(live: dict[str, Any] | None, conflicts: list[tuple[Entry, Path]], manager: str,
                               schema: Any) -> bool:
    """kube lets `kubectl apply --server-side` take over, without conflicts, the fields a client-side
    `kubectl apply` applied (those in its last-applied-configuration annotation): the documented
    upgrade path from client-side to server-side apply. Only for the field manager `kubectl`, and
    only where the object still holds the client-side applied value."""
    if manager != "kubectl" or live is None:
        return False
    text = ((live.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    try:
        last = json.loads(text) if text else None
    except ValueError:
        return False
    if not isinstance(last, dict):
        return False
    applied = object_leaves(align_keys(last, live, schema), schema, "", False)
    current = object_leaves(live, schema, "", False)
    # only fields that still hold what client-side apply set: a later change by someone else
    # (kubectl scale, an edit) is a real conflict
    return all(p in applied and current.get(p, _MISSING) == applied[p] for _, p in conflicts)


def _drop_empty_parents(obj: dict[str, Any], path: Path, owned: set[Path]) -> None:
    for n in range(len(path) - 1, 1, -1):
        parent = path[:n]
        value = _value_at(obj, parent)
        if value in ({}, []) and parent not in owned and parent[-1].startswith("f:"):
            _remove(obj, parent)
        else:
            return
