"""The `/scale` subresource: an autoscaling/v1 Scale view of a kind's replica counts, so that
`kubectl scale` and autoscalers work on Deployments, StatefulSets and CRDs that declare it."""

from __future__ import annotations

from typing import Any

from cdl.devcluster.registry import ResourceType, ScaleInfo


def _path(path: str) -> list[str]:
    return [p for p in path.strip().lstrip("$").split(".") if p]


def get_path(obj: Any, path: str) -> Any:
    for key in _path(path):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def set_path(obj: dict[str, Any], path: str, value: Any) -> None:
    keys = _path(path)
    for key in keys[:-1]:
        obj = obj.setdefault(key, {})
    obj[keys[-1]] = value


def selector_string(rt: ResourceType, obj: dict[str, Any], info: ScaleInfo) -> str:
    if info.label_selector:
        value = get_path(obj, info.label_selector)
        return value if isinstance(value, str) else ""
    selector = get_path(obj, ".spec.selector") or {}
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        op, key, values = expr.get("operator", ""), expr.get("key", ""), expr.get("values") or []
        if op in ("In", "NotIn"):
            parts.append(f"{key} {op.lower()} ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def to_scale(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    assert rt.scale is not None
    meta = obj.get("metadata") or {}
    status: dict[str, Any] = {"replicas": int(get_path(obj, rt.scale.status_replicas) or 0)}
    selector = selector_string(rt, obj, rt.scale)
    if selector:
        status["selector"] = selector
    return {
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                     if k in meta},
        "spec": {"replicas": int(get_path(obj, rt.scale.spec_replicas) or 0)},
        "status": status,
    }


def replicas_of(scale: Any) -> int:
    """spec.replicas of a Scale body; ValueError when missing or not a non-negative integer."""
    value = get_path(scale, ".spec.replicas") if isinstance(scale, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"spec.replicas: Invalid value: {value!r}: must be a non-negative integer")
    return value
