"""The evaluation gate: absolute floors and ceilings, and no-worse-than-the-stage rules."""

from __future__ import annotations

import math

import pytest

from cdl.api.modelversion import Gate
from cdl.quality.gates import apply_gates, smaller_is_better


def gate(**kw: object) -> Gate:
    return Gate.model_validate(kw)


def test_min_gate_passes_at_and_above_the_floor_and_fails_below() -> None:
    passed, results = apply_gates([gate(metric="accuracy", min=0.7)], {"accuracy": 7 / 10})
    assert passed and results[0].passed and results[0].threshold == 0.7 and results[0].rule == "accuracy >= 0.7"
    passed, results = apply_gates([gate(metric="accuracy", min=0.7)], {"accuracy": 0.69})
    assert not passed and results[0].value == 0.69


def test_max_gate_is_for_losses() -> None:
    passed, results = apply_gates([gate(metric="loss", max=0.5)], {"loss": 0.61})
    assert not passed and results[0].rule == "loss <= 0.5"
    assert apply_gates([gate(metric="loss", max=0.5)], {"loss": 0.4})[0]


def test_all_gates_must_pass_and_each_is_reported() -> None:
    gates = [gate(metric="accuracy", min=0.7), gate(metric="macro_f1", min=0.9)]
    passed, results = apply_gates(gates, {"accuracy": 0.8, "macro_f1": 0.85})
    assert not passed
    assert [(r.metric, r.passed) for r in results] == [("accuracy", True), ("macro_f1", False)]


def test_a_metric_the_evaluation_did_not_report_fails_and_says_what_was_reported() -> None:
    passed, results = apply_gates([gate(metric="f1", min=0.5)], {"accuracy": 0.9, "loss": 0.2})
    assert not passed
    assert results[0].value is None
    assert "f1 was not reported" in results[0].rule and "accuracy, loss" in results[0].rule


def test_nan_fails() -> None:
    passed, results = apply_gates([gate(metric="accuracy", min=0.1)], {"accuracy": math.nan})
    assert not passed and "NaN" in results[0].rule


def test_max_drop_with_no_version_in_that_stage_passes_and_says_so() -> None:
    g = gate(metric="accuracy", maxDropVsStage="production", value=0.01)
    for stage_metrics in (None, {}, {"staging": {"accuracy": 0.99}}):
        passed, results = apply_gates([g], {"accuracy": 0.5}, stage_metrics)
        assert passed
        assert results[0].rule == "no production version to compare with: passes"


def test_max_drop_compares_with_the_stage_version() -> None:
    g = gate(metric="accuracy", maxDropVsStage="production", value=0.01)
    production = {"production": {"accuracy": 0.90}}
    passed, results = apply_gates([g], {"accuracy": 0.895}, production)
    assert passed and results[0].threshold == pytest.approx(0.89)
    passed, results = apply_gates([g], {"accuracy": 0.85}, production)
    assert not passed
    assert "production version's 0.9 minus the allowed drop 0.01" in results[0].rule
    assert apply_gates([g], {"accuracy": 0.95}, production)[0]  # better is always fine


def test_max_drop_on_a_loss_means_no_higher_than_the_stage_plus_value() -> None:
    g = gate(metric="validation_loss", maxDropVsStage="production", value=0.05)
    production = {"production": {"validation_loss": 0.30}}
    assert apply_gates([g], {"validation_loss": 0.34}, production)[0]
    passed, results = apply_gates([g], {"validation_loss": 0.40}, production)
    assert not passed and "smaller is better" in results[0].rule
    assert results[0].threshold == pytest.approx(0.35)


def test_stage_version_without_the_metric_passes_with_the_reason() -> None:
    g = gate(metric="macro_f1", maxDropVsStage="staging", value=0.0)
    passed, results = apply_gates([g], {"macro_f1": 0.1}, {"staging": {"accuracy": 0.9}})
    assert passed and "recorded no macro_f1" in results[0].rule


def test_gates_may_come_as_manifest_dicts_and_no_gates_pass() -> None:
    passed, results = apply_gates([{"metric": "accuracy", "min": 0.5}], {"accuracy": 0.6})
    assert passed and results[0].rule == "accuracy >= 0.5"
    assert apply_gates([], {"accuracy": 0.0}) == (True, [])


def test_direction_by_name() -> None:
    assert smaller_is_better("validation_loss") and smaller_is_better("rmse") and smaller_is_better("error_rate")
    assert not smaller_is_better("accuracy") and not smaller_is_better("macro_f1")
