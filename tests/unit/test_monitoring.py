"""Model Monitoring figures over scoring rows: counts, latency percentiles, PSI drift."""

from __future__ import annotations

import math

import pytest

from cdl.quality.monitoring import percentile, prediction_labels, psi_categorical, psi_numeric, summarize
from cdl.stores.records import ScoringRow


def row(label: str | None = "a", *, status: int = 200, latency: float = 5.0, shadow: bool = False,
        version: str = "m-1") -> ScoringRow:
    response = {"data": {"names": [], "ndarray": [label]}} if label is not None else None
    return ScoringRow(namespace="ns", deployment="d", model_version=version, status_code=status,
                      latency_ms=latency, request={"data": {"ndarray": [[1, 2]]}}, response=response, shadow=shadow)


def test_percentiles_interpolate_like_numpy() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_psi_is_near_zero_for_the_training_distribution_and_large_for_a_collapse() -> None:
    expected = {"a": 100, "b": 100, "c": 100}
    assert psi_categorical(expected, {"a": 333, "b": 334, "c": 333}) < 0.01
    assert psi_categorical(expected, {"a": 300, "b": 10, "c": 0}) > 1.0


def test_psi_stays_finite_with_empty_bins_and_counts_new_classes() -> None:
    psi = psi_categorical({"a": 0.5, "b": 0.5, "c": 0.0}, {"a": 10})
    assert math.isfinite(psi) and psi > 0.2
    unseen = psi_categorical({"a": 1, "b": 1}, {"a": 50, "b": 50, "z": 50})
    assert math.isfinite(unseen) and unseen > 0.2
    assert psi_categorical({}, {"a": 1}) is None
    assert psi_categorical({"a": 1}, {}) is None


def test_psi_of_numeric_predictions_over_reference_quantiles() -> None:
    reference = [i / 100 for i in range(1000)]
    assert psi_numeric(reference, [i / 100 + 0.005 for i in range(0, 1000, 3)]) < 0.05
    assert psi_numeric(reference, [9.0 + i / 1000 for i in range(300)]) > 1.0


def test_prediction_labels_from_the_seldon_protocol() -> None:
    assert prediction_labels({"data": {"ndarray": ["sport", "tech"]}}) == ["sport", "tech"]
    assert prediction_labels({"data": {"ndarray": [["sport"], ["tech"]]}}) == ["sport", "tech"]
    scores = {"data": {"names": ["a", "b", "c"], "ndarray": [[0.1, 0.7, 0.2], [0.9, 0.05, 0.05]]}}
    assert prediction_labels(scores) == ["b", "a"]
    assert prediction_labels({"data": {"ndarray": [[0.1, 0.9]]}}) == [1]  # unnamed columns: the index
    tensor = {"data": {"tensor": {"shape": [2, 2], "values": [0.2, 0.8, 0.6, 0.4]}}}
    assert prediction_labels(tensor) == [1, 0]
    assert prediction_labels({"jsonData": {"predictions": ["x"]}}) == ["x"]
    assert prediction_labels(b'{"data": {"ndarray": ["x"]}}') == ["x"]
    assert prediction_labels(None) == [] and prediction_labels("not json") == []


def test_summarize_counts_client_traffic_and_separates_errors_from_rejections() -> None:
    rows = [row("a", latency=float(i)) for i in range(1, 11)]
    rows += [row(None, status=400), row(None, status=503), row(None, status=0)]
    rows += [row("b", shadow=True, latency=1000.0)]  # shadow copies are not client traffic
    summary = summarize(rows)
    assert summary.requests == 13
    assert summary.errors == 2 and summary.rejected == 1
    assert summary.p50_ms == pytest.approx(5.5) and summary.p99_ms == pytest.approx(9.91)
    assert summary.predictions == 10 and summary.observed == {"a": 1.0}
    assert summary.drift is None  # nothing to compare against
    assert summary.by_model == {"m-1": 13}


def test_summarize_finds_drift_only_when_the_predictions_moved() -> None:
    expected = {"a": 200, "b": 200, "c": 200}
    steady = [row(label) for label in ["a", "b", "c"] * 100]
    moved = [row("a") for _ in range(250)] + [row("b") for _ in range(30)] + [row("c") for _ in range(20)]
    assert summarize(steady, expected).drift < 0.05
    drifted = summarize(moved, expected)
    assert drifted.drift > 0.2
    assert drifted.observed["a"] == pytest.approx(250 / 300)


def test_summarize_reads_plain_mappings_too() -> None:
    rows = [{"status_code": 200, "latency_ms": 2.0, "response": {"data": {"ndarray": [1.5]}}},
            {"status": 500, "latency_ms": 9.0}]
    summary = summarize(rows, [1.0, 1.4, 1.6, 2.0])
    assert summary.requests == 2 and summary.errors == 1
    assert summary.drift is not None
