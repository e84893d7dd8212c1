"""Predictive early stopping through the local engine, and `cdl experiments study`'s replay
checked against running the rule for real on the same small search."""

from __future__ import annotations

import re

import pytest

from cdl.engines.base import JobState
from cdl.engines.training import study
from cdl.engines.training.local.state import load
from cdl.runtime.stopping import StoppingSettings

pytestmark = pytest.mark.slow

# Learning rates from good to hopeless: the last two still have a high loss after a few epochs.
LRS = [0.3, 0.1, 0.2, 0.004, 0.002]
EPOCHS = 10
PREDICT = {"minCompletedTrials": 2, "minValidations": 3, "confidence": 0.9}
REASON = re.compile(
    r"^predicted: predicted final validation_loss (?P<value>\S+) \[(?P<low>\S+), (?P<high>\S+)\] "
    r"\(90% interval, calibrated on (?P<peers>\d+) completed trials\) after (?P<at>\d+) epochs of 10 epochs; "
    r"cannot beat the best completed trial \((?P<best>\S+)\)$"
)


def _search(training_spec, early_stopping=None):
    searcher = {"name": "grid", "maxTrials": len(LRS), "maxConcurrentTrials": 1, "maxLength": {"epochs": EPOCHS}}
    if early_stopping:
        searcher["earlyStopping"] = early_stopping
    # about 0.3 s an epoch, so a stop decided after a few epochs lands well before the end
    hyperparameters = {"lr": {"type": "categorical", "vals": LRS}, "sleep_per_batch": 0.025}
    return training_spec(hyperparameters=hyperparameters, searcher=searcher)


def test_prediction_stops_with_its_interval_and_the_study_replays_it(
    training_engine_factory, training_spec, training_request, database
) -> None:
    engine = training_engine_factory(max_parallel=1, database=database)
    plain = engine.submit(training_request(_search(training_spec), name="plain"))
    predicted = engine.submit(training_request(_search(training_spec, {"predict": PREDICT}), name="predicted"))
    plain_status = engine.wait(plain, 300)
    status = engine.wait(predicted, 300)
    assert plain_status.state == JobState.SUCCEEDED and status.state == JobState.SUCCEEDED, status.message

    # A trial stopped by prediction carries the prediction and its interval in its reason.
    stopped = [t for t in status.trials if t.stop_reason and t.stop_reason.startswith("predicted:")]
    assert stopped, [t.stop_reason for t in status.trials]
    run = load(engine.run_dir(predicted.id) / "run.json")
    best_completed = min(t.best_validation(True).value for t in run.trials if not t.stop_reason)
    for t in stopped:
        m = REASON.match(t.stop_reason)
        assert m, t.stop_reason
        low, value, high = float(m["low"]), float(m["value"]), float(m["high"])
        assert float(m["best"]) < low <= value <= high  # a loss: even its optimistic end is worse
        assert int(m["peers"]) >= 2 and 3 <= int(m["at"]) < EPOCHS
        assert t.length_done < EPOCHS  # it did not train to the end
    # The first two trials cannot be stopped (too few completed trials) and the run says why.
    assert not any(t.stop_reason for t in status.trials[:2])
    assert "predict: 0 of 2 completed trials needed" in engine.logs(predicted)
    assert best_completed == pytest.approx(min(t.best_validation(True).value
                                               for t in load(engine.run_dir(plain.id) / "run.json").trials))

    # The study of the plain search (from PostgreSQL) replays the rule: the same trials stopped
    # at the same validations as the real run, and the same best metric kept.
    recorded = study.from_database(database, plain.id)
    assert [len(t.curve.points) for t in recorded.trials] == [EPOCHS] * len(LRS)
    assert all(p.cpu_seconds is not None for t in recorded.trials for p in t.curve.points)  # resource series
    kept = study.replay_rule(recorded, StoppingSettings.from_wire({"predict": PREDICT}))
    replayed = {k.trial_id: k.stopped_at for k in kept if k.stopped}
    real = {t.id: t.metadata["early_stopping"]["units"] for t in run.trials if t.stop_reason}
    assert replayed == real
    real_best = min(v.value for t in run.trials for v in t.validations
                    if v.value is not None and (t.id not in real or v.units <= real[t.id]))
    figures = {f.rule: f for f in study.study(recorded, overrides={"predict": StoppingSettings.from_wire(
        {"predict": PREDICT})})}
    assert figures["predict"].best == pytest.approx(real_best)
    assert figures["predict"].trial_units == sum(real.get(t.id, EPOCHS) for t in run.trials)
    assert figures["none"].trial_units == EPOCHS * len(LRS) and figures["none"].stopped == 0
    assert figures["predict"].winner_stopped is False
    # Reading the local state gives the same replay as the registry.
    local = study.replay_rule(study.from_run_state(load(engine.run_dir(plain.id) / "run.json")),
                              StoppingSettings.from_wire({"predict": PREDICT}))
    assert [(k.trial_id, k.stopped_at, k.best) for k in local] == [(k.trial_id, k.stopped_at, k.best) for k in kept]
    assert set(figures) == set(study.RULES)
