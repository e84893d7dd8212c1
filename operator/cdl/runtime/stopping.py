"""Early-stopping rules, and their enforcement inside a trial on a Determined cluster.

The same rules run in two places: the local training engine applies them from outside, to the
validations a trial reports (`patience_reason`); on Determined nothing outside the trial knows
them, so the trial bootstrap enforces them itself (`TrialStopper` + `install`): every
validation the trial reports is fed to the stopper, and Determined's own preemption check
(`should_preempt()`, which PyTorchTrial's Trainer, the Keras callback and Core API loops call
after each validation) answers True once a rule fired. The trial then stops cleanly, with a
checkpoint, like a preempted trial; the reason is printed to the trial log
(`cdl: early stop: ...`), shown as the trial's status and reported as metrics of the group
`cdl_early_stopping` (`stopped: 1`, `reason: "..."`), where the engine reads it back.

Rules are objects with `check(history, elapsed_seconds) -> reason | None`; `history` holds the
searcher metric's value at each validation, oldest first. Further rules (median, predictive
termination) plug in by appending to `TrialStopper.rules`.

Configuration: `CDL_EARLY_STOPPING` (JSON: patience, minDelta, maxTrialSeconds, maxTrialMemory),
`CDL_METRIC`, `CDL_SMALLER_IS_BETTER`. Standard library only at import time.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from cdl.runtime.env import ENV_EARLY_STOPPING, ENV_METRIC, ENV_SMALLER_IS_BETTER

METRICS_GROUP = "cdl_early_stopping"


def improved(value: float, best: float, smaller_is_better: bool, min_delta: float = 0.0) -> bool:
    """Whether `value` beats `best` by more than `min_delta` in the searcher's direction."""
    return (best - value > min_delta) if smaller_is_better else (value - best > min_delta)


def patience_reason(values: list[float | None], patience: int | None, min_delta: float,
                    smaller_is_better: bool) -> str | None:
    """The stop reason when the last `patience` validations brought no improvement, else None."""
    if not patience:
        return None
    best: float | None = None
    since = 0
    for value in values:
        if value is None or math.isnan(value):
            continue
        if best is None or improved(value, best, smaller_is_better, min_delta):
            best, since = value, 0
        else:
            since += 1
    if since >= patience:
        return f"early-stopped: no improvement > {min_delta:g} in {patience} validations"
    return None


class Rule(Protocol):
    def check(self, history: list[float | None], elapsed_seconds: float) -> str | None: ...


@dataclass
class Patience:
    patience: int
    min_delta: float = 0.0
    smaller_is_better: bool = False

    def check(self, history: list[float | None], elapsed_seconds: float) -> str | None:
        return patience_reason(history, self.patience, self.min_delta, self.smaller_is_better)


@dataclass
class WallClockBudget:
    max_seconds: float

    def check(self, history: list[float | None], elapsed_seconds: float) -> str | None:
        if elapsed_seconds > self.max_seconds:
            return f"budget: wall time {self.max_seconds:g} s exceeded"
        return None


@dataclass
class TrialStopper:
    """The rules of one trial and what it reported; `reason()` says whether to stop now."""

    metric: str
    rules: list[Rule] = field(default_factory=list)
    history: list[float | None] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    stopped: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> TrialStopper | None:
        """The stopper `CDL_EARLY_STOPPING` asks for, or None when it sets no rule."""
        env = dict(os.environ if env is None else env)
        raw = env.get(ENV_EARLY_STOPPING)
        if not raw:
            return None
        spec = json.loads(raw)
        smaller = env.get(ENV_SMALLER_IS_BETTER, "false").lower() in ("1", "true", "yes")
        rules: list[Rule] = []
        if spec.get("patience"):
            rules.append(Patience(int(spec["patience"]), float(spec.get("minDelta") or 0.0), smaller))
        if spec.get("maxTrialSeconds"):
            rules.append(WallClockBudget(float(spec["maxTrialSeconds"])))
        if not rules:
            return None
        return cls(metric=env.get(ENV_METRIC, ""), rules=rules)

    def observe(self, metrics: dict[str, Any]) -> None:
        """One reported validation (all its metrics; the searcher metric is picked out)."""
        value = metrics.get(self.metric)
        self.history.append(float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None)

    def reason(self) -> str | None:
        if self.stopped is None:
            elapsed = time.monotonic() - self.started
            for rule in self.rules:
                found = rule.check(self.history, elapsed)
                if found:
                    self.stopped = found
                    break
        return self.stopped


_STOPPER: TrialStopper | None = None
_LAST_STEPS = 0
_RECORDED = False
_TRAIN: Any = None  # the trial's TrainContext, seen at its first report


def install(stopper: TrialStopper) -> None:
    """Enforce `stopper` in this trial process on a Determined cluster (idempotent).

    Wraps the on-cluster core contexts: validation reports feed the stopper; `should_preempt()`
    also answers True once a rule fired (the chief decides; with WorkersAskChief every rank gets
    the chief's answer, as Determined does for its own preemption)."""
    global _STOPPER
    if _STOPPER is not None:
        _STOPPER = stopper
        return
    _STOPPER = stopper
    from determined.core import _preempt, _train
    from determined.core._preempt import PreemptMode

    train_cls = _train.TrainContext
    original_report = train_cls._report_trial_metrics

    def report_trial_metrics(self: Any, group: str, steps_completed: int, metrics: dict[str, Any],
                             batch_metrics: Any = None) -> None:
        global _LAST_STEPS, _TRAIN
        original_report(self, group, steps_completed, metrics, batch_metrics)
        _TRAIN = self
        if group == "validation" and _STOPPER is not None:
            _LAST_STEPS = max(_LAST_STEPS, int(steps_completed))
            _STOPPER.observe(metrics)

    train_cls._report_trial_metrics = report_trial_metrics  # type: ignore[method-assign]
    original_preempt = _preempt.PreemptContext.should_preempt

    def should_preempt(self: Any, auto_ack: bool = True) -> bool:
        if original_preempt(self, auto_ack):
            return True
        dist, mode = self._dist, self._preempt_mode
        chief = dist.rank == 0
        fired = chief and _STOPPER is not None and _STOPPER.reason() is not None
        if mode == PreemptMode.WorkersAskChief and dist.size > 1:
            fired = bool(dist.broadcast(fired if chief else None))
        if fired and chief:
            _record()
        return fired

    _preempt.PreemptContext.should_preempt = should_preempt  # type: ignore[method-assign]


def _record() -> None:
    """Say once why the trial stops: the log, the trial's status, a metrics group."""
    global _RECORDED
    if _RECORDED or _STOPPER is None or _STOPPER.stopped is None:
        return
    _RECORDED = True
    reason = _STOPPER.stopped
    print(f"cdl: early stop: {reason}", file=sys.stderr, flush=True)
    if _TRAIN is None:
        return
    try:
        _TRAIN.set_status(reason)
        _TRAIN._report_trial_metrics(METRICS_GROUP, _LAST_STEPS, {"stopped": 1, "reason": reason})
    except Exception as exc:  # noqa: BLE001 - the stop itself must not fail on a reporting error
        print(f"cdl: could not report the early stop to the master: {exc}", file=sys.stderr, flush=True)
