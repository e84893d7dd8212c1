"""Server-side printing: `meta.k8s.io/v1 Table` answers for `kubectl get`.

CRDs print their additionalPrinterColumns (simple JSONPath), other kinds NAME and AGE (plus a
few well-known columns). Dates become human durations on the server, as kube's converter does.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

from cdl.devcluster.registry import ResourceType

NAME_COLUMN = {"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}
AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "description": "", "priority": 0}

# A few columns kube's built-in printers show, so `kubectl get` looks familiar.
BUILTIN_COLUMNS: dict[str, list[dict[str, Any]]] = {
    "/namespaces": [{"name": "Status", "type": "string", "jsonPath": ".status.phase"}, AGE_COLUMN],
    "/secrets": [{"name": "Type", "type": "string", "jsonPath": ".type"}, AGE_COLUMN],
    "/services": [{"name": "Type", "type": "string", "jsonPath": ".spec.type"},
                  {"name": "Cluster-IP", "type": "string", "jsonPath": ".spec.clusterIP"}, AGE_COLUMN],
    "/events": [{"name": "Type", "type": "string", "jsonPath": ".type"},
                {"name": "Reason", "type": "string", "jsonPath": ".reason"},
                {"name": "Object", "type": "string", "jsonPath": ".involvedObject.name"},
                {"name": "Message", "type": "string", "jsonPath": ".message"}, AGE_COLUMN],
    "/pods": [{"name": "Status", "type": "string", "jsonPath": ".status.phase"}, AGE_COLUMN],
    "apps/deployments": [{"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"}, AGE_COLUMN],
    "apiregistration.k8s.io/apiservices": [
        {"name": "Available", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Available")].status'},
        AGE_COLUMN],
    "apiextensions.k8s.io/customresourcedefinitions": [
        {"name": "Created At", "type": "string", "jsonPath": ".metadata.creationTimestamp"}],
}


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery duration.HumanDuration."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        rest = (hours // 24) % 365
        return f"{hours // 24 // 365}y{rest}d" if rest else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def parse_time(value: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


_STEP = re.compile(r"""\.((?:\\\.|[^.\[])+)|\[(\d+|\*)\]|\[\?\(@\.([\w.]+)\s*==\s*["']?([^"'\)]*)["']?\)\]""")


def jsonpath(obj: Any, path: str) -> list[Any]:
    """Simple JSONPath as CRD printer columns use it: `.a.b`, `.a[0]`, `.a[*].b`,
    `.a[?(@.type=="Ready")].status`; returns every match."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    if path.startswith("$"):
        path = path[1:]
    current = [obj]
    pos = 0
    while pos < len(path):
        m = _STEP.match(path, pos)
        if not m:
            return []
        pos = m.end()
        nxt: list[Any] = []
        for value in current:
            if m.group(1) is not None:
                key = m.group(1).replace("\\.", ".")
                if isinstance(value, dict) and key in value:
                    nxt.append(value[key])
            elif m.group(2) is not None:
                if isinstance(value, list):
                    if m.group(2) == "*":
                        nxt.extend(value)
                    elif int(m.group(2)) < len(value):
                        nxt.append(value[int(m.group(2))])
            else:
                field_path, expected = m.group(3).split("."), m.group(4)
                for item in value if isinstance(value, list) else []:
                    cur = item
                    for f in field_path:
                        cur = cur.get(f) if isinstance(cur, dict) else None
                    if cur is not None and str(cur) == expected:
                        nxt.append(item)
        current = nxt
    return current


def cell(column: dict[str, Any], obj: dict[str, Any], now: datetime.datetime) -> Any:
    results = jsonpath(obj, column.get("jsonPath", ""))
    if not results or results[0] is None:
        return None
    value = results[0]
    typ = column.get("type", "string")
    if typ == "date":
        when = parse_time(value) if isinstance(value, str) else None
        return human_duration((now - when).total_seconds()) if when else "<invalid>"
    if typ == "integer" and isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if typ == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if typ == "boolean" and isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def columns_for(rt: ResourceType, version: str) -> list[dict[str, Any]]:
    """Column definitions, NAME first; every other column has a jsonPath."""
    info = rt.version(version)
    if not rt.builtin and info is not None and info.printer_columns:
        extra = info.printer_columns
    elif not rt.builtin:
        extra = [AGE_COLUMN]
    else:
        extra = BUILTIN_COLUMNS.get(rt.key, [AGE_COLUMN])
    return [NAME_COLUMN, *extra]


def column_definitions(columns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{
        "name": c["name"], "type": "string" if c is NAME_COLUMN else c.get("type", "string"),
        "format": c.get("format", "name" if c is NAME_COLUMN else ""),
        "description": c.get("description", ""), "priority": int(c.get("priority", 0)),
    } for c in columns]


def partial_metadata(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta}


def row(columns: list[dict[str, Any]], obj: dict[str, Any], now: datetime.datetime) -> dict[str, Any]:
    cells = [obj.get("metadata", {}).get("name", "")]
    cells += [cell(c, obj, now) for c in columns[1:]]
    return {"cells": cells, "object": partial_metadata(obj)}


def table(rt: ResourceType, version: str, objs: list[dict[str, Any]], rv: str,
          with_definitions: bool = True) -> dict[str, Any]:
    columns = columns_for(rt, version)
    now = datetime.datetime.now(datetime.UTC)
    out: dict[str, Any] = {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
        "columnDefinitions": column_definitions(columns) if with_definitions else None,
        "rows": [row(columns, o, now) for o in objs],
    }
    return out
