"""Learning-curve prediction (Baker et al. 2017; Domhan et al. 2015): a trial's final result from
the start of its curve, with an interval calibrated on the search's completed trials.

The model: power law `c - a·x^-α`, exponential saturation `c - a·e^(-b·x)` and log-linear
`a + b·ln x` are fitted to the observed points (scipy's least squares); their median at the
target length, less the best value so far, is the gain the families expect. That gain is then
calibrated on this search's completed trials, each truncated at the same length: a factor
fitted on what the families predicted for them against what they really gained corrects the
families' systematic over- or under-shoot, and the interval is the split-conformal quantile, at
the chosen confidence, of their errors relative to the predicted gain plus the validation noise
(so a trial expected to move a lot gets a wide interval, a converged one a narrow one). The final
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
        # The local slope carried on with a 1/x decay (the log-linear family fitted to the last
        # points only): robust where three-parameter fits on few noisy points are not.
        if len(x) >= 3:
            slope = max((y[-1] - y[-3]) / max(x[-1] - x[-3], 1e-9), 0.0)
            fams = {**fams, "slope": y[-1] + slope * x[-1] * math.log(max(self.target / x[-1], 1.0))}
        if not fams:
            return best, fams
        return max(best, float(np.median(list(fams.values())))), fams

    def _final(self, curve: Curve) -> float:
        return max(self._series(curve)[1])

    # -- prediction -----------------------------------------------------------------------

    def predict(self, curve: Curve, peers: Sequence[Curve]) -> Prediction:
        """The final result of `curve` (observed so far) given completed trials `peers` (>= 2)."""
        units = curve.units
        _, y = self._series(curve)
        best_so_far = max(y)
        param, fams = self._parametric(curve)
        gain = param - best_so_far  # what the families expect this trial still to gain

        # Calibration on the completed trials, each truncated at the same length: the gain they
        # really made against the gain the families predicted from their start.
        real, predicted, noise = [], [], []
        for p in peers:
            start = p.upto(units)
            if len(start.scored()) < 2:
                continue
            y_p = self._series(start)[1]
            a, _ = self._parametric(start, key=(p.trial_id, units))
            real.append(self._final(p) - max(y_p))
            predicted.append(a - max(y_p))
            full = self._series(p)[1]
            noise.extend(abs(b - a_) for a_, b in zip(full, full[1:], strict=False))
        g = np.asarray(predicted)
        G = np.asarray(real)
        s0 = float(np.median(noise)) if noise else abs(best_so_far) * 1e-3 + 1e-12
        # Shrink (or stretch) the families' gains as they did on this search's completed trials.
        beta = float(np.clip(G @ g / (g @ g), 0.0, 2.0)) if len(g) and float(g @ g) > 1e-12 else 1.0
        if len(g):
            scores = np.sort(np.abs(G - beta * g) / (np.abs(g) + s0))
            n = len(scores)
            rank = math.ceil((n + 1) * self.confidence)
            q = float(scores[rank - 1]) if rank <= n else float(scores[-1]) * rank / n
        else:
            q = 1.0
        half = max(q, 1e-6) * (abs(gain) + s0)
        value = best_so_far + max(beta * gain, 0.0)
        low, high = max(value - half, best_so_far), value + half
        if self.smaller:
            value, low, high = -value, -high, -low
        return Prediction(value, low, high, self.confidence, len(real), units,
                          {k: oriented(v, self.smaller) for k, v in fams.items()})
