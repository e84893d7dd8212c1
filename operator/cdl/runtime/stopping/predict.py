"""Learning-curve prediction (Baker et al. 2017; Domhan et al. 2015): a trial's final result from
the start of its curve, with an interval calibrated on the search's completed trials.

The point estimate comes from the completed trials' curves: at the trial's current length each
completed trial had reached some level (its best so far) and then gained some more up to its
end. The trial is expected to gain what completed trials at its level gained (interpolated between
the nearest levels, so a trial far behind is credited with the larger gains that trials far
behind really made, one ahead of all of them with the gain of the nearest).
A trial behind all of them is one they say little about: its optimistic bound is then at least
the end of the lowest of them (it may catch up), so a search stops such trials only once a trial
that started as low has completed and shown where that leads. Likewise for any trial: its
optimistic bound is at least the lowest end among the completed trials that stood at least as high
at the same length, since only one of those ending lower shows that a trial this high ends lower
(the gain interpolated between two far-apart levels misses a trial that starts slow and ends at
the top, the loss that cost the most in the benchmark's searches). The interval's
half-width is (a) the validation noise of the two levels compared (the noise estimated from the
completed curves' second differences, so steady progress is not mistaken for noise), at the
chosen confidence, plus (b) with enough completed trials, the conformal quantile of the
estimate's leave-one-out errors on them. Parametric families (power law `c - a·x^-α`,
exponential saturation `c - a·e^(-b·x)`, scipy's least squares) fitted to the trial's own
validations (from four) keep the optimistic bound at least where its own curve levels off:
a trial rising faster than the completed ones did is not stopped on their account. The final
result is the best validation the trial will reach, so the prediction is never below the best
so far.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cdl.runtime.stopping.curves import Curve, oriented


def _pow3(x: np.ndarray, c: float, a: float, alpha: float) -> np.ndarray:
    return c - a * np.power(x, -alpha)


def _exp3(x: np.ndarray, c: float, a: float, b: float) -> np.ndarray:
    return c - a * np.exp(-b * x)


def _log2(x: np.ndarray, a: float, b: float) -> np.ndarray:
    return a + b * np.log(x)


@dataclass(frozen=True)
class Family:
    name: str
    fn: Callable[..., np.ndarray]
    params: int


FAMILIES = (Family("pow3", _pow3, 3), Family("exp3", _exp3, 3), Family("log2", _log2, 2))


def fit_families(x: Sequence[float], y: Sequence[float], target: float) -> dict[str, float]:
    """Each family's value at `target`, fitted to (x, y) (larger is better); families that fail
    to fit or predict a non-finite value are left out."""
    from scipy.optimize import curve_fit

    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    scale = float(max(xs.max(), 1.0))  # fit on x in (0, 1] so the rate parameters stay O(1)
    u = xs / scale
    t = float(target) / scale
    span = float(ys.max() - ys.min()) or max(abs(float(ys[-1])), 1.0) * 1e-3
    out: dict[str, float] = {}
    for fam in FAMILIES:
        if len(xs) <= fam.params:  # an exact fit through every point says nothing about the tail
            continue
        if fam.name == "pow3":
            p0, bounds = [ys[-1] + span, span, 0.5], ([-np.inf, -np.inf, 1e-3], [np.inf, np.inf, 5.0])
        elif fam.name == "exp3":
            p0, bounds = [ys[-1] + span, span, 1.0], ([-np.inf, -np.inf, 1e-3], [np.inf, np.inf, 50.0])
        else:
            p0, bounds = [ys[-1], span], ([-np.inf, -np.inf], [np.inf, np.inf])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params, _ = curve_fit(fam.fn, u, ys, p0=p0, bounds=bounds, maxfev=2000)
            value = float(fam.fn(np.asarray([t]), *params)[0])
        except (RuntimeError, ValueError, FloatingPointError):
            continue
        if math.isfinite(value):
            # An extrapolation far beyond what the curve has shown is a failed fit, not a forecast.
            low, high = float(ys.min()) - 3 * span, float(ys.max()) + 3 * span
            out[fam.name] = min(max(value, low), high)
    return out


@dataclass(frozen=True)
class Prediction:
    """A trial's predicted final result (the metric's own scale and direction)."""

    value: float
    low: float
    high: float
    confidence: float
    peers: int  # completed trials it was calibrated on
    units: float  # length observed when predicting
    families: dict[str, float]

    def describe(self, metric: str) -> str:
        return (
            f"predicted final {metric} {self.value:.4g} "
            f"[{self.low:.4g}, {self.high:.4g}] ({self.confidence:.0%} interval, "
            f"calibrated on {self.peers} completed trials)"
        )


# Leave-one-out errors need this many completed trials before their quantile means anything;
# below it the interval is the noise term alone.
MIN_CONFORMAL = 5
# The families that level off: the ones whose extrapolation may raise the optimistic bound (the
# log-linear and slope families do not level off and only inform the recorded families).
SATURATING = ("pow3", "exp3")


def _gain_at(levels: np.ndarray, gains: np.ndarray, level: float) -> float:
    """The gain completed trials made from `level`: interpolated between the two nearest levels
    (trials level with each other are averaged), the nearest one's beyond the range."""
    uniq, inverse = np.unique(levels, return_inverse=True)
    mean = np.bincount(inverse, weights=gains) / np.bincount(inverse)
    return float(np.interp(level, uniq, mean))


class CurvePredictor:
    """Predicts final results for one search from its completed trials and the trial's own curve."""

    def __init__(self, target: float, smaller_is_better: bool, confidence: float = 0.5) -> None:
        self.target = float(target)
        self.smaller = smaller_is_better
        self.confidence = confidence

    def _series(self, curve: Curve) -> tuple[list[float], list[float]]:
        pts = curve.scored()
        return [max(p.units, 1e-9) for p in pts], [oriented(p.value, self.smaller) for p in pts]  # type: ignore[arg-type]

    def _families(self, curve: Curve) -> dict[str, float]:
        """The parametric families' values at the target, fitted to the trial's own validations."""
        x, y = self._series(curve)
        fams = fit_families(x, y, self.target)
        # The local slope carried on with a 1/x decay: robust where three-parameter fits on few
        # noisy points are not.
        if len(x) >= 3:
            slope = max((y[-1] - y[-3]) / max(x[-1] - x[-3], 1e-9), 0.0)
            fams["slope"] = y[-1] + slope * x[-1] * math.log(max(self.target / x[-1], 1.0))
        return fams

    def noise(self, peers: Sequence[Curve]) -> float:
        """The validation noise (a standard deviation): second differences of the completed curves
        (a straight trend cancels; each has the standard deviation sqrt(6)·σ), their median over
        the median of a standard normal's absolute value."""
        diffs = []
        for p in peers:
            y = self._series(p)[1]
            diffs.extend(abs(a - 2 * b + c) / math.sqrt(6) for a, b, c in zip(y, y[1:], y[2:], strict=False))
        return float(np.median(diffs)) / 0.6745 if diffs else 0.0

    def predict(self, curve: Curve, peers: Sequence[Curve], bar: float | None = None) -> Prediction:
        """The final result of `curve` (observed so far) given completed trials `peers` (>= 1).
        With `bar` (the metric's scale), the curve fits are only paid for when the optimistic end
        is short of it (they can only raise it)."""
        from scipy.stats import norm

        units = curve.units
        _, y = self._series(curve)
        best_so_far = max(y)
        levels, finals = [], []
        for p in peers:
            start = self._series(p.upto(units))[1]
            if start:
                levels.append(max(start))
                finals.append(max(self._series(p)[1]))
        lv, fv = np.asarray(levels), np.asarray(finals)
        value = best_so_far + max(_gain_at(lv, fv - lv, best_so_far), 0.0) if len(lv) else best_so_far

        # (a) the noise of comparing two levels, each one noisy validation
        sigma = self.noise(peers) or abs(best_so_far) * 1e-3 + 1e-12
        z = float(norm.ppf((1 + self.confidence) / 2))
        half = z * math.sqrt(2) * sigma
        # (b) the estimate's own errors on the completed trials, each left out in turn
        if len(lv) >= MIN_CONFORMAL:
            errors = []
            for i in range(len(lv)):
                rest = np.arange(len(lv)) != i
                if lv[i] < lv[rest].min():
                    continue  # behind all the others: bounded, not predicted (below)
                guess = lv[i] + max(_gain_at(lv[rest], fv[rest] - lv[rest], lv[i]), 0.0)
                errors.append(abs(fv[i] - guess))
            n = len(errors)  # >= MIN_CONFORMAL - 1
            rank = math.ceil((n + 1) * self.confidence)  # beyond n: the largest error, stretched
            half += float(np.sort(errors)[rank - 1]) if rank <= n else max(errors) * rank / n
        low, high = max(value - half, best_so_far), value + half
        if len(lv) and best_so_far < lv.min() - half:
            # Behind every completed trial at this length: how much more such a trial gains they
            # do not show, so its optimistic end is as good as the lowest of them ended.
            high = max(high, float(fv[np.argmin(lv)]) + half)
        if (above := fv[lv >= best_so_far]).size:
            # Only a completed trial that stood at least as high at this length and still ended
            # lower shows that this trial cannot end higher: until one did, it may end as well as
            # the lowest of those (gains interpolated between far-apart levels miss slow starters).
            high = max(high, float(above.min()))
        short = bar is None or high < oriented(bar, self.smaller)
        fams = self._families(curve) if len(y) > 3 and short else {}
        saturating = [v for k, v in fams.items() if k in SATURATING]
        if saturating:  # the trial's own curve may point higher than the completed trials' gains
            high = max(high, float(np.median(saturating)))
        if self.smaller:
            value, low, high = -value, -high, -low
        return Prediction(value, low, high, self.confidence, len(lv), units,
                          {k: oriented(v, self.smaller) for k, v in fams.items()})
