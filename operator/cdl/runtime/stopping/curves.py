"""Learning curves as the stopping rules see them: validations with the resources spent so far."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

RESOURCES = ("cpu_seconds", "wall_seconds", "peak_rss_bytes", "gpu_peak_bytes")
PEAK_RESOURCES = ("peak_rss_bytes", "gpu_peak_bytes")  # peaks, not totals: compared as they are


def gpu_peak_bytes() -> float | None:
    """Peak GPU memory this process allocated through torch (all its GPUs); None without a GPU or
    without torch loaded (it is not imported for this: a trial that uses a GPU has loaded it)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return None
        return float(sum(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count())))
    except Exception:  # noqa: BLE001 - a broken CUDA setup: no figure rather than a failed trial
        return None


@dataclass(frozen=True)
class Point:
    """One validation: length trained (searcher units), the searcher metric, and the trial's
    cumulative resource figures at that moment (None where unknown; GPU memory: None without a GPU)."""

    units: float
    value: float | None
    cpu_seconds: float | None = None
    wall_seconds: float | None = None
    peak_rss_bytes: float | None = None
    gpu_peak_bytes: float | None = None

    def resource(self, name: str) -> float | None:
        return getattr(self, name)


@dataclass
class Curve:
    """A trial's validations in order. `completed`: it trained to its target unstopped, so its
    curve is a reference for the others (median, prediction, resource comparison)."""

    trial_id: str
    points: list[Point] = field(default_factory=list)
    completed: bool = False

    def scored(self) -> list[Point]:
        return [p for p in self.points if p.value is not None and not math.isnan(p.value)]

    def upto(self, units: float) -> Curve:
        return Curve(self.trial_id, [p for p in self.points if p.units <= units + 1e-9], self.completed)

    def best(self, smaller_is_better: bool) -> float | None:
        values = [p.value for p in self.scored()]
        if not values:
            return None
        return min(values) if smaller_is_better else max(values)  # type: ignore[type-var]

    @property
    def units(self) -> float:
        return self.points[-1].units if self.points else 0.0


def oriented(value: float, smaller_is_better: bool) -> float:
    """Larger is better, whatever the metric's direction (the rules compare on this scale)."""
    return -value if smaller_is_better else value


def better(a: float, b: float, smaller_is_better: bool, min_delta: float = 0.0) -> bool:
    """a improves on b by more than min_delta."""
    return (b - a > min_delta) if smaller_is_better else (a - b > min_delta)


def metric_lookup(metrics: dict[str, Any], name: str) -> float | None:
    """The searcher metric among reported metrics; Keras' `val_` and Determined's `validation_`
    prefixes are matched either way so `val_accuracy` finds `accuracy` and vice versa."""
    candidates = [name]
    for prefix in ("val_", "validation_"):
        if name.startswith(prefix):
            candidates.append(name[len(prefix):])
        else:
            candidates.append(prefix + name)
    for key in candidates:
        if key in metrics:
            try:
                return float(metrics[key])
            except (TypeError, ValueError):
                return None
    return None
