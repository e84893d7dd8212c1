"""The evaluation gate: does a model version meet its acceptance rules?

Pure: metrics in, verdicts out. Each gate of `spec.evaluation.gates` is one rule:

- `min`: the metric must be at least this (accuracy, F1);
- `max`: the metric must be at most this (loss, error rate);
- `maxDropVsStage` + `value`: no worse than the version currently in that stage by more than
  `value`. "Worse" is lower for most metrics and higher for losses and errors (names containing
  loss, error, mse, mae, perplexity...). With no version in that stage there is nothing to
  compare with and the gate passes, saying so in its rule text.

A metric the evaluation did not report, or a NaN, fails its gate. All gates must pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from cdl.api.modelversion import Gate, GateResult

SMALLER_IS_BETTER = ("loss", "error", "mse", "mae", "rmse", "perplexity", "wer", "cer", "latency", "nll")
EPSILON = 1e-12  # float noise: 0.7 computed as 7/10 must pass a min of 0.7


def smaller_is_better(metric: str) -> bool:
    """Whether lower values of this metric are better (losses, errors), judged by its name."""
    name = metric.lower()
    return any(word in name for word in SMALLER_IS_BETTER)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _number(metrics: Mapping[str, Any], name: str) -> float | None:
    value = metrics.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def check_gate(
    gate: Gate, metrics: Mapping[str, Any], stage_metrics: Mapping[str, Mapping[str, Any]] | None = None
) -> GateResult:
    """The verdict of one gate."""
    name = gate.metric
    value = _number(metrics, name)
    if value is None:
        reported = ", ".join(sorted(metrics)) or "none"
        return GateResult(metric=name, passed=False, value=None,
                          rule=f"{name} was not reported by the evaluation (reported: {reported})")
    if math.isnan(value):
        return GateResult(metric=name, passed=False, value=value, rule=f"{name} is NaN")
    if gate.min is not None:
        return GateResult(metric=name, passed=value >= gate.min - EPSILON, value=value, threshold=gate.min,
                          rule=f"{name} >= {_fmt(gate.min)}")
    if gate.max is not None:
        return GateResult(metric=name, passed=value <= gate.max + EPSILON, value=value, threshold=gate.max,
                          rule=f"{name} <= {_fmt(gate.max)}")
    stage, allowed = gate.max_drop_vs_stage, float(gate.value or 0.0)
    assert stage is not None  # Gate's validator guarantees exactly one rule
    current = (stage_metrics or {}).get(stage)
    if current is None:
        return GateResult(metric=name, passed=True, value=value,
                          rule=f"no {stage} version to compare with: passes")
    reference = _number(current, name)
    if reference is None or math.isnan(reference):
        return GateResult(metric=name, passed=True, value=value,
                          rule=f"the {stage} version recorded no {name}: nothing to compare with, passes")
    if smaller_is_better(name):
        threshold = reference + allowed
        return GateResult(metric=name, passed=value <= threshold + EPSILON, value=value, threshold=threshold,
                          rule=f"{name} <= {_fmt(threshold)} ({stage} version's {_fmt(reference)} plus the "
                               f"allowed rise {_fmt(allowed)}; smaller is better)")
    threshold = reference - allowed
    return GateResult(metric=name, passed=value >= threshold - EPSILON, value=value, threshold=threshold,
                      rule=f"{name} >= {_fmt(threshold)} ({stage} version's {_fmt(reference)} minus the "
                           f"allowed drop {_fmt(allowed)})")


def apply_gates(
    gates: Sequence[Gate | Mapping[str, Any]],
    metrics: Mapping[str, Any],
    stage_metrics: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[bool, list[GateResult]]:
    """(all passed, one result per gate). `stage_metrics` maps a stage to the metrics of the
    version currently in it; a stage with no version is simply absent. No gates: passed."""
    results = [check_gate(g if isinstance(g, Gate) else Gate.model_validate(g), metrics, stage_metrics)
               for g in gates]
    return all(r.passed for r in results), results
