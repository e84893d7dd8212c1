"""Hyperparameter spaces in Determined's syntax: random samples and grids.

A space maps names to a constant (any scalar or list), a `{type: const|int|double|log|
categorical, ...}` object, or a nested map of the same. Samples are a pure function of the
experiment seed and the trial's index, so random search and ASHA with the same seed try the same
configurations in the same order, and a resumed experiment draws exactly what it drew before.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

Space = dict[str, Any]
Path = tuple[str, ...]


def _is_typed(value: Any) -> bool:
    return isinstance(value, dict) and "type" in value


def _leaves(space: Space, prefix: Path = ()) -> list[tuple[Path, Any]]:
    """(path, definition) for every hyperparameter, nested groups flattened, in spec order."""
    out: list[tuple[Path, Any]] = []
    for name, value in space.items():
        path = (*prefix, str(name))
        if isinstance(value, dict) and not _is_typed(value):
            out.extend(_leaves(value, path))
        else:
            out.append((path, value))
    return out


def _nest(pairs: list[tuple[Path, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in pairs:
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def _sample_one(hp: Any, rng: random.Random) -> Any:
    if not _is_typed(hp):
        return hp
    kind = hp["type"]
    if kind == "const":
        return hp["val"]
    if kind == "categorical":
        return rng.choice(hp["vals"])
    if kind == "int":
        return rng.randint(int(hp["minval"]), int(hp["maxval"]))
    if kind == "double":
        return rng.uniform(float(hp["minval"]), float(hp["maxval"]))
    if kind == "log":
        return float(hp.get("base", 10)) ** rng.uniform(float(hp["minval"]), float(hp["maxval"]))
    raise ValueError(f"unsupported hyperparameter type {kind!r}")


def sample(space: Space, seed: int, index: int) -> dict[str, Any]:
    """The hyperparameters of the trial created `index`-th (0-based) in an experiment seeded `seed`."""
    rng = random.Random(f"cdl-hparams/{seed}/{index}")
    return _nest([(path, _sample_one(hp, rng)) for path, hp in _leaves(space)])


def _grid_values(hp: Any, where: str) -> list[Any]:
    if not _is_typed(hp):
        return [hp]
    kind = hp["type"]
    if kind == "const":
        return [hp["val"]]
    if kind == "categorical":
        return list(hp["vals"])
    count = hp.get("count")
    if count is None:
        raise GridError(where, f"Required value: grid search needs count for a {kind} hyperparameter")
    lo, hi = float(hp["minval"]), float(hp["maxval"])
    points = [lo + (hi - lo) / 2] if count == 1 else [lo + (hi - lo) * i / (count - 1) for i in range(count)]
    if kind == "int":
        return list(dict.fromkeys(int(round(p)) for p in points))
    if kind == "log":
        base = float(hp.get("base", 10))
        return [base**p for p in points]
    return points


class GridError(ValueError):
    """A hyperparameter that grid search cannot enumerate; `field` is its spec path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def grid(space: Space, where: str = "spec.hyperparameters") -> list[dict[str, Any]]:
    """Every point of the grid (cartesian product, first hyperparameter varying slowest)."""
    leaves = _leaves(space)
    axes = [_grid_values(hp, ".".join((where, *path)) + ".count") for path, hp in leaves]
    return [_nest(list(zip([p for p, _ in leaves], combo, strict=True))) for combo in itertools.product(*axes)]


def grid_size(space: Space) -> int:
    return math.prod(len(_grid_values(hp, "")) for _, hp in _leaves(space))


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested hyperparameter values as dotted names (for tables and comparisons)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
