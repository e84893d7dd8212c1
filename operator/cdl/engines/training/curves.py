"""Learning curves of recorded trials, for the stopping rules (`cdl.runtime.stopping`): from the
local engine's trial state while it drives a search, and from the Experiment Registry when a
finished search is studied."""

from __future__ import annotations

from typing import Any

from cdl.runtime.stopping import Curve, Point

RESOURCE_KEYS = ("cpu_seconds", "wall_seconds", "peak_rss_bytes", "gpu_peak_bytes")


def point(units: float, value: float | None, resources: dict[str, Any] | None) -> Point:
    r = resources or {}
    return Point(float(units), value, **{k: (float(r[k]) if r.get(k) is not None else None) for k in RESOURCE_KEYS})


def trial_completed(state: str, stop_reason: str | None, units_done: float, target: float | None) -> bool:
    """Trained to its target without being stopped: a reference curve for the comparing rules."""
    return state == "succeeded" and not stop_reason and (target is None or units_done >= target)


def curve_of(trial: Any) -> Curve:
    """The curve of a local engine TrialState (`validations` carry their resource figures)."""
    return Curve(
        trial.id,
        [point(v.units, v.value, getattr(v, "resources", None)) for v in trial.validations],
        trial_completed(trial.state, trial.stop_reason, trial.units_done, trial.target),
    )
