"""The stopping rules: given a trial's curve so far and the completed trials' curves, stop or not.

- patience/minDelta: no improvement larger than minDelta in `patience` validations;
- budgets: wall time and peak memory of the trial (absolute caps);
- median: the trial's best so far is worse than the median of the completed trials' bests at
  the same length (the median-stopping rule of Katib and Optuna's MedianPruner);
- predict: the learning-curve model's optimistic bound cannot beat the best completed trial (or
  a chosen quantile of them);
- resources: the trial's resource use (CPU or wall seconds, peak memory, peak GPU memory) per
  unit of metric gain is far above the completed trials' median at the same length.
Rules that compare with other trials say so, and do not stop, while too few trials completed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cdl.runtime.stopping.curves import PEAK_RESOURCES, Curve, Point, better, oriented
from cdl.runtime.stopping.settings import StoppingSettings, human_bytes


@dataclass(frozen=True)
class Decision:
    """A stop: which rule, the reason recorded on the trial, and where it was decided."""

    rule: str
    reason: str
    units: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    decision: Decision | None = None
    notes: list[str] = field(default_factory=list)  # why a comparing rule could not decide yet


def _fmt_units(units: float, unit: str) -> str:
    return f"{units:g} {unit}"


class StoppingRules:
    """All configured rules for one search (metric direction, target length, unit)."""

    def __init__(self, settings: StoppingSettings, *, metric: str, smaller_is_better: bool,
                 target: float | None, unit: str = "epochs") -> None:
        self.settings = settings
        self.metric = metric
        self.smaller = smaller_is_better
        self.target = target
        self.unit = unit
        self._predictor: Any = None

    # ------------------------------------------------------------------ rules on one trial

    def patience(self, curve: Curve) -> Decision | None:
        s = self.settings
        if not s.patience:
            return None
        best: float | None = None
        since = 0
        for p in curve.scored():
            if best is None or better(p.value, best, self.smaller, s.min_delta):  # type: ignore[arg-type]
                best, since = p.value, 0
            else:
                since += 1
        if since >= s.patience:
            return Decision("patience", f"early-stopped: no improvement > {s.min_delta:g} in {s.patience} validations",
                            curve.units)
        return None

    def wall_budget(self, wall_seconds: float) -> str | None:
        s = self.settings
        if s.max_trial_seconds is not None and wall_seconds > s.max_trial_seconds:
            return f"budget: wall time {s.max_trial_seconds:g} s exceeded"
        return None

    def memory_budget(self, peak_rss_bytes: float) -> str | None:
        s = self.settings
        if s.max_trial_memory is not None and peak_rss_bytes > s.max_trial_memory:
            return f"budget: peak memory {human_bytes(peak_rss_bytes)} > {human_bytes(s.max_trial_memory)}"
        return None

    def budgets(self, point: Point) -> Decision | None:
        """Budgets checked at a validation (the engine also checks them between validations)."""
        if point.peak_rss_bytes is not None and (reason := self.memory_budget(point.peak_rss_bytes)):
            return Decision("budget", reason, point.units, {"killed": True})
        if point.wall_seconds is not None and (reason := self.wall_budget(point.wall_seconds)):
            return Decision("budget", reason, point.units)
        return None

    # ------------------------------------------------------------------ comparing rules

    def median(self, curve: Curve, peers: Sequence[Curve], notes: list[str]) -> Decision | None:
        m = self.settings.median
        if m is None or len(curve.scored()) < m.warmup_validations:
            return None
        if len(peers) < m.min_completed_trials:
            notes.append(f"median: {len(peers)} of {m.min_completed_trials} completed trials needed; not stopping")
            return None
        units = curve.units
        bests = [b for p in peers if (b := p.upto(units).best(self.smaller)) is not None]
        mine = curve.best(self.smaller)
        if len(bests) < m.min_completed_trials or mine is None:
            return None
        median = float(np.median(bests))
        if better(median, mine, self.smaller):
            return Decision(
                "median",
                f"median: best {self.metric} {mine:.4g} after {_fmt_units(units, self.unit)} is worse than the "
                f"median {median:.4g} of {len(bests)} completed trials at that length",
                units, {"best": mine, "median": median, "peers": len(bests)},
            )
        return None

    def predict(self, curve: Curve, peers: Sequence[Curve], notes: list[str]) -> Decision | None:
        p = self.settings.predict
        if p is None or self.target is None or len(curve.scored()) < p.min_validations:
            return None
        if curve.units >= self.target:
            return None
        if len(peers) < p.min_completed_trials:
            notes.append(f"predict: {len(peers)} of {p.min_completed_trials} completed trials needed to calibrate "
                         "the learning-curve model; not stopping")
            return None
        from cdl.runtime.stopping.predict import CurvePredictor

        finals = [oriented(b, self.smaller) for q in peers if (b := q.best(self.smaller)) is not None]
        threshold = float(np.quantile(finals, p.quantile))
        if oriented(curve.best(self.smaller), self.smaller) >= threshold:  # type: ignore[arg-type]
            return None  # already as good as the bar: no prediction can stop it (and none is paid for)
        if self._predictor is None:
            self._predictor = CurvePredictor(self.target, self.smaller, p.confidence)
        prediction = self._predictor.predict(curve, peers, bar=oriented(threshold, self.smaller))
        optimistic = prediction.low if self.smaller else prediction.high
        if oriented(optimistic, self.smaller) < threshold:
            bar = oriented(threshold, self.smaller)
            what = "the best completed trial" if p.quantile >= 1.0 else f"the {p.quantile:.0%} quantile of completed trials"
            return Decision(
                "predict",
                f"predicted: {prediction.describe(self.metric)} after {_fmt_units(curve.units, self.unit)} of "
                f"{_fmt_units(self.target, self.unit)}; cannot beat {what} ({bar:.4g})",
                curve.units,
                {"prediction": prediction.value, "low": prediction.low, "high": prediction.high,
                 "confidence": prediction.confidence, "threshold": bar, "peers": prediction.peers},
            )
        return None

    def _rate(self, curve: Curve, resource: str) -> float | None:
        """Resource spent per unit of metric gain since the first validation (inf: no gain)."""
        pts = curve.scored()
        if len(pts) < 2:
            return None
        first, last = pts[0], pts[-1]
        r0, r1 = first.resource(resource), last.resource(resource)
        if r1 is None:
            return None
        spent = r1 if resource in PEAK_RESOURCES else r1 - (r0 or 0.0)
        gain = oriented(curve.best(self.smaller), self.smaller) - oriented(first.value, self.smaller)  # type: ignore[arg-type]
        if gain <= 0:
            return math.inf
        return spent / gain

    def resources(self, curve: Curve, peers: Sequence[Curve], notes: list[str]) -> Decision | None:
        r = self.settings.resources
        if r is None or len(curve.scored()) < max(2, r.warmup_validations):
            return None
        if len(peers) < r.min_completed_trials:
            notes.append(f"resources: {len(peers)} of {r.min_completed_trials} completed trials needed; not stopping")
            return None
        units = curve.units
        rates = [x for p in peers if (x := self._rate(p.upto(units), r.resource)) is not None]
        mine = self._rate(curve, r.resource)
        if mine is None and curve.scored()[-1].resource(r.resource) is None:
            notes.append(f"resources: no {r.wire_name} recorded for this trial"
                         + (" (no GPU)" if r.resource == "gpu_peak_bytes" else "") + "; not stopping")
            return None
        if mine is None or len(rates) < r.min_completed_trials:
            return None
        median = float(np.median(rates))
        if math.isfinite(median) and mine > r.factor * median:
            shown = "no gain" if math.isinf(mine) else f"{mine:.4g}"
            return Decision(
                "resources",
                f"resources: {r.wire_name} per unit of {self.metric} gain after {_fmt_units(units, self.unit)} "
                f"is {shown}, more than {r.factor:g}x the median {median:.4g} of {len(rates)} completed trials",
                units, {"rate": mine, "median": median, "factor": r.factor},
            )
        return None

    # ------------------------------------------------------------------ all together

    def check(self, curve: Curve, peers: Sequence[Curve]) -> Outcome:
        """Decide at the trial's latest validation; `peers` are completed trials only."""
        out = Outcome()
        peers = [p for p in peers if p.completed and p.trial_id != curve.trial_id]
        if curve.points:
            out.decision = self.budgets(curve.points[-1])
        for rule in (self.patience,):
            out.decision = out.decision or rule(curve)
        for comparing in (self.median, self.predict, self.resources):
            if out.decision is None:
                out.decision = comparing(curve, peers, out.notes)
        return out
