"""Learning-curve prediction (Baker et al. 2017; Domhan et al. 2015): a trial's final result from
the start of its curve, with an interval calibrated on the search's completed trials.

Two estimates of the final result (the best validation it will reach at the target length), on
the larger-is-better scale:
- parametric: power law `c - a·x^-α`, exponential saturation `c - a·e^(-b·x)` and a log-linear
  `a + b·ln x` fitted to the observed points (scipy's least squares), combined by their median;
- peers: what the completed trials still gained, from the same length to the end, added to this
  trial's best so far.
Both are calibrated by leave-one-out on the completed trials (each truncated at the same length,
predicted from its own start and the other trials' curves), in units of each curve's own range so
far: their weights are the inverse mean squared errors, the combined prediction is
bias-corrected by the median residual, and the interval is the split-conformal quantile of the
residuals at the chosen confidence, widened by the saturating families' disagreement, its
optimistic end reaching each of their extrapolations (stop only what no model expects to win).
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

    @staticmethod
    def _scale(y: Sequence[float]) -> float:
        """How far the curve has moved so far: residuals and gains are compared in these units,
        so a converged curve and a steep one calibrate each other."""
        span = float(max(y) - min(y))
        return span if span > 0 else max(abs(float(y[-1])) * 1e-3, 1e-12)

    def _peer_gain(self, best_so_far: float, scale: float, units: float, peers: Sequence[Curve]) -> float | None:
        ratios = []
        for p in peers:
            start = p.upto(units)
            if len(start.scored()) < 2:
                continue
            y = self._series(start)[1]
            ratios.append((self._final(p) - max(y)) / self._scale(y))
        if not ratios:
            return None
        return best_so_far + scale * float(np.median(ratios))

    # -- prediction -----------------------------------------------------------------------

    def predict(self, curve: Curve, peers: Sequence[Curve]) -> Prediction:
        """The final result of `curve` (observed so far) given completed trials `peers` (>= 2)."""
        units = curve.units
        _, y = self._series(curve)
        best_so_far, scale = max(y), self._scale(y)
        param, fams = self._parametric(curve)
        peer = self._peer_gain(best_so_far, scale, units, peers)

        # Leave-one-out calibration on the completed trials truncated at the same length, in
        # units of each curve's own scale.
        loo = []
        for i, p in enumerate(peers):
            start = p.upto(units)
            if len(start.scored()) < 2:
                continue
            y_p = self._series(start)[1]
            s_p = self._scale(y_p)
            a, _ = self._parametric(start, key=(p.trial_id, units))
            b = self._peer_gain(max(y_p), s_p, units, [q for j, q in enumerate(peers) if j != i])
            loo.append(((self._final(p) - max(y_p)) / s_p, (a - max(y_p)) / s_p,
                        None if b is None else (b - max(y_p)) / s_p))
        res_a = [actual - a for actual, a, _ in loo]
        res_b = [actual - b for actual, _, b in loo if b is not None]
        wa = 1.0 / (float(np.mean(np.square(res_a))) + 1e-9) if res_a else 1.0
        wb = 1.0 / (float(np.mean(np.square(res_b))) + 1e-9) if res_b and peer is not None else 0.0

        def combine(a: float, b: float | None) -> float:
            return a if b is None or wb == 0.0 else (wa * a + wb * b) / (wa + wb)

        residuals = [actual - combine(a, b) for actual, a, b in loo]
        gain = combine((param - best_so_far) / scale, None if peer is None else (peer - best_so_far) / scale)
        if residuals:
            bias = float(np.median(residuals))
            dev = np.sort(np.abs(np.asarray(residuals) - bias))
            n = len(dev)
            rank = math.ceil((n + 1) * self.confidence)
            half = float(dev[rank - 1]) if rank <= n else float(dev[-1]) * rank / n
        else:
            bias, half = 0.0, 0.0
        # The saturating families' disagreement is model uncertainty the peers may not show
        # (they can all have converged while this curve is still steep): added in quadrature.
        saturating = [v for k, v in fams.items() if k in ("pow3", "exp3")]
        spread = (max(saturating) - min(saturating)) / 2 / scale if len(saturating) > 1 else 0.0
        half = math.hypot(half, spread) * scale
        value = best_so_far + max(gain + bias, 0.0) * scale
        # The optimistic bound also reaches every saturating family's own extrapolation: stopping
        # needs the optimistic end to be implausible under each model, not only their combination.
        low = value - half
        high = max([value + half, *saturating])
        low, high = max(low, best_so_far), max(high, best_so_far)
        if self.smaller:
            value, low, high = -value, -high, -low
        return Prediction(value, low, high, self.confidence, len(loo), units,
                          {k: oriented(v, self.smaller) for k, v in fams.items()})
