"""Learning-curve prediction (Baker et al. 2017; Domhan et al. 2015): a trial's final result from
the start of its curve, with an interval calibrated on the search's completed trials.

Two estimates of the final result (the best validation it will reach at the target length), on
the larger-is-better scale:
- parametric: power law `c - a·x^-α`, exponential saturation `c - a·e^(-b·x)` and a log-linear
  `a + b·ln x` fitted to the observed points (scipy's least squares), combined by their median;
- peers: what the completed trials still gained, from the same length to the end, added to this
  trial's best so far.
Both are calibrated by leave-one-out on the completed trials (each truncated at the same length,
predicted from its own start and the other trials' curves): their weights are the inverse mean
squared errors, the combined prediction is bias-corrected by the median residual, and the
interval is the split-conformal quantile of the residuals at the chosen confidence.
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
        if len(xs) < fam.params:
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
            # An extrapolation far outside what the curve has shown is a failed fit, not a forecast.
            low, high = float(ys.min()) - 10 * span, float(ys.max()) + 10 * span
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


class CurvePredictor:
    """Predicts final results for one search; remembers the fits of completed trials' prefixes."""

    def __init__(self, target: float, smaller_is_better: bool, confidence: float = 0.9) -> None:
        self.target = float(target)
        self.smaller = smaller_is_better
        self.confidence = confidence
        self._cache: dict[tuple[str, float], dict[str, float]] = {}

    # -- the two estimates, larger-is-better ------------------------------------------------

    def _series(self, curve: Curve) -> tuple[list[float], list[float]]:
        pts = curve.scored()
        return [max(p.units, 1e-9) for p in pts], [oriented(p.value, self.smaller) for p in pts]  # type: ignore[arg-type]

    def _parametric(self, curve: Curve, key: tuple[str, float] | None = None) -> tuple[float, dict[str, float]]:
        x, y = self._series(curve)
        if key is not None and key in self._cache:
            fams = self._cache[key]
        else:
            fams = fit_families(x, y, self.target)
            if key is not None:
                self._cache[key] = fams
        best = max(y)
        if not fams:
            return best, fams
        return max(best, float(np.median(list(fams.values())))), fams

    def _final(self, curve: Curve) -> float:
        return max(self._series(curve)[1])

    def _peer_gain(self, best_so_far: float, units: float, peers: Sequence[Curve]) -> float | None:
        gains = []
        for p in peers:
            start = p.upto(units)
            if not start.scored():
                continue
            gains.append(self._final(p) - max(self._series(start)[1]))
        if not gains:
            return None
        return best_so_far + float(np.median(gains))

    # -- prediction -----------------------------------------------------------------------

    def predict(self, curve: Curve, peers: Sequence[Curve]) -> Prediction:
        """The final result of `curve` (observed so far) given completed trials `peers` (>= 2)."""
        units = curve.units
        x, y = self._series(curve)
        best_so_far = max(y)
        param, fams = self._parametric(curve)
        peer = self._peer_gain(best_so_far, units, peers)

        # Leave-one-out calibration on the completed trials, truncated at the same length.
        res_a, res_b, loo = [], [], []
        for i, p in enumerate(peers):
            start = p.upto(units)
            if len(start.scored()) < 2:
                continue
            actual = self._final(p)
            a, _ = self._parametric(start, key=(p.trial_id, units))
            others = [q for j, q in enumerate(peers) if j != i]
            b = self._peer_gain(max(self._series(start)[1]), units, others)
            res_a.append(actual - a)
            res_b.append(actual - b if b is not None else math.nan)
            loo.append((actual, a, b))
        wa = 1.0 / (float(np.mean(np.square(res_a))) + 1e-12) if res_a else 1.0
        finite_b = [r for r in res_b if math.isfinite(r)]
        wb = 1.0 / (float(np.mean(np.square(finite_b))) + 1e-12) if finite_b and peer is not None else 0.0

        def combine(a: float, b: float | None) -> float:
            if b is None or wb == 0.0:
                return a
            return (wa * a + wb * b) / (wa + wb)

        residuals = [actual - combine(a, b) for actual, a, b in loo]
        center = combine(param, peer)
        if residuals:
            bias = float(np.median(residuals))
            dev = np.sort(np.abs(np.asarray(residuals) - bias))
            n = len(dev)
            rank = math.ceil((n + 1) * self.confidence)
            half = float(dev[rank - 1]) if rank <= n else float(dev[-1]) * rank / n
        else:  # nothing to calibrate on: the families' disagreement is the only uncertainty
            bias = 0.0
            half = (max(fams.values()) - min(fams.values())) / 2 if len(fams) > 1 else 0.0
        half = max(half, 1e-12)
        value = max(center + bias, best_so_far)
        low, high = max(value - half, best_so_far), value + half
        if self.smaller:
            value, low, high = -value, -high, -low
        return Prediction(value, low, high, self.confidence, len(loo), units,
                          {k: oriented(v, self.smaller) for k, v in fams.items()})
