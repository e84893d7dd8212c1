"""Early stopping inside the trial on Determined: the guard reads CDL_EARLY_STOPPING, takes in
the trial's validation reports and answers Determined's preemption check once a rule decides."""

from __future__ import annotations

import json

import pytest
from determined.core import _preempt, _train

from cdl.runtime.stopping import Curve, Point, guard


@pytest.fixture
def cluster_env(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.delenv("CDL_TRIAL_STOP", raising=False)
    monkeypatch.setenv("CDL_METRIC", "validation_loss")
    monkeypatch.setenv("CDL_SMALLER_IS_BETTER", "true")
    monkeypatch.setenv("CDL_MAX_LENGTH", "epochs:10")
    monkeypatch.setenv("CDL_TRIAL_EVENTS", str(tmp_path / "events.jsonl"))
    for name, value in (("_GUARD", None), ("_RECORDED", False), ("_TRAIN", None), ("_LAST_STEPS", 0)):
        monkeypatch.setattr(guard, name, value)
    # Restored after the test: install_from_env patches these classes for the whole process.
    monkeypatch.setattr(_train.TrainContext, "_report_trial_metrics", lambda *a, **k: None)
    monkeypatch.setattr(_preempt.PreemptContext, "should_preempt", lambda self, auto_ack=True: False)
    return tmp_path


class _Dist:
    rank, size = 0, 1


def _preempt_context() -> _preempt.PreemptContext:
    """A chief's preemption context whose master has not asked for preemption."""
    context = object.__new__(_preempt.PreemptContext)
    context._dist, context._preempt_mode = _Dist(), _preempt.PreemptMode.WorkersAskChief
    return context


def test_patience_inside_the_trial_makes_determined_preempt_it(cluster_env, monkeypatch) -> None:
    monkeypatch.setenv("CDL_EARLY_STOPPING", json.dumps({"patience": 2, "minDelta": 0.1}))
    installed = guard.install_from_env()
    assert installed is not None
    context, preempt = object.__new__(_train.TrainContext), _preempt_context()
    context.set_status = lambda status: None
    for epoch, loss in enumerate([1.0, 0.5, 0.48, 0.47], start=1):
        assert not preempt.should_preempt()
        context._report_trial_metrics("validation", epoch * 12, {"validation_loss": loss, "epochs": epoch})
    assert preempt.should_preempt()
    assert installed.stop_reason() == "early-stopped: no improvement > 0.1 in 2 validations"
    (event,) = [json.loads(line) for line in (cluster_env / "events.jsonl").read_text().splitlines()]
    assert event["event"] == "early_stop" and event["rule"] == "patience" and event["units"] == 4


def test_prediction_inside_the_trial_uses_the_other_trials_curves(cluster_env, monkeypatch) -> None:
    monkeypatch.setenv("CDL_EARLY_STOPPING", json.dumps({"predict": {"minCompletedTrials": 2, "minValidations": 3}}))
    peers = [Curve(str(i), [Point(x, end + 1.0 / x) for x in range(1, 11)], True) for i, end in enumerate([0.1, 0.2])]
    g = guard.TrialGuard.from_env(peers=lambda: peers)
    assert g is not None
    for epoch in (1, 2, 3):
        decision = g.observe({"validation_loss": 5.0 + 3.0 / epoch}, epoch * 12, epoch)
    assert decision is not None and decision.rule == "predict"
    assert decision.reason.startswith("predicted: predicted final validation_loss ")
    assert "% interval, calibrated on 2 completed trials) after 3 epochs of 10 epochs" in decision.reason


def test_nothing_is_installed_under_the_local_engine(cluster_env, monkeypatch) -> None:
    monkeypatch.setenv("CDL_EARLY_STOPPING", json.dumps({"patience": 2}))
    monkeypatch.setenv("CDL_TRIAL_STOP", "/tmp/stop")  # the local driver applies the rules itself
    assert guard.install_from_env() is None
    monkeypatch.delenv("CDL_TRIAL_STOP")
    monkeypatch.delenv("CDL_EARLY_STOPPING")
    assert guard.install_from_env() is None
