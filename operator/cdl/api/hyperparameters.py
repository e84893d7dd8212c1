"""Hyperparameters in Determined's syntax, checked before anything is submitted.

A value is a constant (any scalar or list), a `{type: ...}` object, or a nested map of
hyperparameters. The CRD keeps the map as a pass-through (the syntax is recursive), so these
rules are applied by `cdl validate` and by the operator, each problem naming its field path.
"""

from __future__ import annotations

from typing import Any

HP_TYPES = ("const", "int", "double", "log", "categorical")


def hyperparameter_problems(hps: dict[str, Any], path: str = "spec.hyperparameters") -> list[tuple[str, str]]:
    """Every problem in a hyperparameter map as `(field path, message)`."""
    problems: list[tuple[str, str]] = []
    for name, value in hps.items():
        where = f"{path}.{name}"
        if not isinstance(value, dict):
            continue  # a constant
        if "type" not in value:
            problems.extend(hyperparameter_problems(value, where))  # nested group
            continue
        problems.extend(_typed_problems(value, where))
    return problems


def _typed_problems(hp: dict[str, Any], where: str) -> list[tuple[str, str]]:
    kind = hp.get("type")
    if kind not in HP_TYPES:
        return [(f"{where}.type", f'Unsupported value: {kind!r}: supported values: {", ".join(HP_TYPES)}')]
    allowed = {
        "const": {"type", "val"},
        "int": {"type", "minval", "maxval", "count"},
        "double": {"type", "minval", "maxval", "count"},
        "log": {"type", "minval", "maxval", "base", "count"},
        "categorical": {"type", "vals"},
    }[kind]
    problems = [(f"{where}.{k}", f"unknown field for type {kind}") for k in hp if k not in allowed]
    if kind == "const":
        if "val" not in hp:
            problems.append((f"{where}.val", "Required value: a const hyperparameter needs val"))
        return problems
    if kind == "categorical":
        vals = hp.get("vals")
        if not isinstance(vals, list) or not vals:
            problems.append((f"{where}.vals", "Required value: a non-empty list of choices"))
        return problems
    number = int if kind == "int" else (int, float)
    for bound in ("minval", "maxval"):
        v = hp.get(bound)
        if v is None:
            problems.append((f"{where}.{bound}", f"Required value: a {kind} hyperparameter needs {bound}"))
        elif isinstance(v, bool) or not isinstance(v, number):
            want = "an integer" if kind == "int" else "a number"
            problems.append((f"{where}.{bound}", f"Invalid value: {v!r}: must be {want}"))
    lo, hi = hp.get("minval"), hp.get("maxval")
    if isinstance(lo, int | float) and isinstance(hi, int | float) and lo > hi:
        problems.append((f"{where}.maxval", f"Invalid value: {hi!r}: must be >= minval ({lo!r})"))
    if kind == "log":
        base = hp.get("base", 10)
        if isinstance(base, bool) or not isinstance(base, int | float) or base <= 0 or base == 1:
            problems.append((f"{where}.base", f"Invalid value: {base!r}: must be a positive number other than 1"))
    if "count" in hp and (not isinstance(hp["count"], int) or hp["count"] < 1):
        problems.append((f"{where}.count", f"Invalid value: {hp['count']!r}: must be an integer >= 1"))
    return problems
