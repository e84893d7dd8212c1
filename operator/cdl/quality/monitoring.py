"""Model Monitoring over the Scoring Data: traffic, errors, latency and prediction drift.

Pure functions over scoring rows (as `Database.scoring_window` returns them: `ScoringRow`s, or
any mappings or objects with `status_code`, `latency_ms`, `response`, `shadow`, `model_version`), so the reconciler, the CLI and
the tests compute the same figures. Drift is the Population Stability Index of the distribution
of predicted classes in the window against the distribution of training labels: a model whose
inputs have moved predicts classes in proportions it never saw in training.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Pseudo-count added to every bin of the observed distribution, and the floor of expected
# fractions: an empty bin would otherwise make ln(a/e) infinite.
SMOOTHING = 0.5
EXPECTED_FLOOR = 1e-4
NUMERIC_BINS = 10


@dataclass
class MonitoringSummary:
    requests: int = 0  # client requests in the window (shadow copies excluded)
    errors: int = 0  # requests the deployment failed (5xx, or no answer at all)
    rejected: int = 0  # requests refused as malformed (4xx)
    p50_ms: float | None = None
    p99_ms: float | None = None
    drift: float | None = None  # PSI; None when there is no expected distribution or no prediction
    predictions: int = 0
    observed: dict[str, float] = field(default_factory=dict)  # predicted class -> fraction
    by_model: dict[str, int] = field(default_factory=dict)  # model version -> requests


def _get(row: Any, name: str, default: Any = None) -> Any:
    if isinstance(row, Mapping):
        return row.get(name, default)
    return getattr(row, name, default)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def prediction_labels(response: Any) -> list[Any]:
    """The predicted class (or value) of each example in a Seldon-protocol response.

    `{"data": {"ndarray": ["sport", ...]}}` gives the labels; rows of scores give the arg max,
    named by `data.names` when they name the columns; `jsonData` with `predictions` is read too."""
    if isinstance(response, (bytes, str)):
        try:
            import orjson

            response = orjson.loads(response)
        except Exception:
            return []
    if not isinstance(response, Mapping):
        return []
    data = response.get("data")
    names: list[Any] = []
    values: Any = None
    if isinstance(data, Mapping):
        names = list(data.get("names") or [])
        values = data.get("ndarray")
        if values is None and isinstance(data.get("tensor"), Mapping):
            tensor = data["tensor"]
            flat, shape = list(tensor.get("values") or []), list(tensor.get("shape") or [])
            if len(shape) == 2 and shape[0] * shape[1] == len(flat):
                values = [flat[i * shape[1]:(i + 1) * shape[1]] for i in range(shape[0])]
            else:
                values = flat
    elif isinstance(response.get("jsonData"), Mapping):
        values = response["jsonData"].get("predictions")
    if not isinstance(values, list):
        return []
    out: list[Any] = []
    for value in values:
        if isinstance(value, list) and len(value) == 1 and not isinstance(value[0], list):
            value = value[0]
        if isinstance(value, list):
            if not value or not all(isinstance(v, (int, float)) for v in value):
                continue
            best = max(range(len(value)), key=value.__getitem__)
            out.append(names[best] if len(names) == len(value) else best)
        elif isinstance(value, (str, int, float, bool)):
            out.append(value)
    return out


def _row_predictions(row: Any) -> list[Any]:
    stored = _get(row, "prediction")
    if stored is None:
        stored = _get(row, "predictions")
    if isinstance(stored, list):
        return stored
    if stored is not None:
        return [stored]
    return prediction_labels(_get(row, "response"))


def _normalize(weights: Mapping[str, float]) -> dict[str, float]:
    total = float(sum(max(0.0, float(v)) for v in weights.values()))
    if total <= 0:
        return {}
    return {str(k): max(0.0, float(v)) / total for k, v in weights.items()}


def psi_categorical(expected: Mapping[str, float], observed: Mapping[str, int]) -> float | None:
    """PSI = sum (a - e) ln(a / e) over the union of classes, with additive smoothing.

    `expected` holds counts or fractions per class (the training labels); `observed` holds counts
    per predicted class. A class never seen in training still counts (its expected share is the
    floor), so a model that starts predicting something new shows drift."""
    exp = _normalize(expected)
    n = sum(observed.values())
    if not exp or n == 0:
        return None
    keys = sorted(set(exp) | {str(k) for k in observed})
    counts = Counter({str(k): v for k, v in observed.items()})
    k = len(keys)
    e_raw = {key: max(exp.get(key, 0.0), EXPECTED_FLOOR) for key in keys}
    e_total = sum(e_raw.values())
    psi = 0.0
    for key in keys:
        a = (counts.get(key, 0) + SMOOTHING) / (n + SMOOTHING * k)
        e = e_raw[key] / e_total
        psi += (a - e) * math.log(a / e)
    return psi


def psi_numeric(expected: Sequence[float], observed: Sequence[float], bins: int = NUMERIC_BINS) -> float | None:
    """PSI of a numeric prediction against a reference sample, over the reference's quantile bins."""
    ref = sorted(float(v) for v in expected)
    if len(ref) < 2 or not observed:
        return None
    edges = sorted({percentile(ref, 100.0 * i / bins) for i in range(1, bins)})  # type: ignore[misc]

    def histogram(values: Iterable[float]) -> Counter[str]:
        out: Counter[str] = Counter()
        for v in values:
            out[str(sum(1 for edge in edges if v > edge))] += 1
        return out

    return psi_categorical(histogram(ref), histogram(float(v) for v in observed))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def summarize(rows: Iterable[Any], expected: Mapping[str, float] | Sequence[float] | None = None) -> MonitoringSummary:
    """Figures for the window of scoring rows; drift against `expected` (training label counts or
    fractions by class name, or a sample of a numeric target) when there is one."""
    summary = MonitoringSummary()
    latencies: list[float] = []
    predictions: list[Any] = []
    by_model: Counter[str] = Counter()
    for row in rows:
        if _get(row, "shadow", False):
            continue
        summary.requests += 1
        status = _get(row, "status_code")
        status = int((_get(row, "status", 200) if status is None else status) or 0)
        version = _get(row, "model_version")
        if version:
            by_model[str(version)] += 1
        if status == 0 or status >= 500:
            summary.errors += 1
            continue
        if status >= 400:
            summary.rejected += 1
            continue
        latency = _get(row, "latency_ms")
        if latency is not None:
            latencies.append(float(latency))
        predictions.extend(_row_predictions(row))
    summary.p50_ms = _round(percentile(latencies, 50))
    summary.p99_ms = _round(percentile(latencies, 99))
    summary.predictions = len(predictions)
    summary.by_model = dict(by_model)
    if predictions:
        counts = Counter(str(p) for p in predictions)
        summary.observed = {k: v / len(predictions) for k, v in sorted(counts.items())}
        if isinstance(expected, Mapping) and expected:
            psi = psi_categorical(expected, counts)
        elif expected is not None and not isinstance(expected, Mapping) and len(expected) > 1 \
                and all(_is_number(p) for p in predictions):
            psi = psi_numeric(expected, [float(p) for p in predictions])
        else:
            psi = None
        summary.drift = _round(psi, 4)
    return summary


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)
