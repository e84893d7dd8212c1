"""Searchers on real trials: random and grid try what they should; ASHA stops weak trials early
and spends far fewer trial-epochs than random search with the same trials, finding a
configuration at least as good (the toy problem's best learning rate is known: the largest
one that does not diverge)."""

from __future__ import annotations

import pytest

from cdl.engines.base import JobState
from cdl.engines.training.local import compare
from cdl.engines.training.local import hparams as hp

pytestmark = pytest.mark.slow

LR = {"type": "log", "minval": -3.0, "maxval": -0.3}


def test_random_and_grid_try_the_configured_points(training_engine, training_spec, training_request) -> None:
    rand = training_spec(hyperparameters={"lr": LR, "batch_size": 64},
                         searcher={"name": "random", "maxTrials": 2, "maxConcurrentTrials": 1})
    grid = training_spec(
        hyperparameters={"lr": {"type": "log", "minval": -2, "maxval": -1, "count": 2},
                         "batch_size": {"type": "categorical", "vals": [32, 64]}},
        searcher={"name": "grid", "maxConcurrentTrials": 1},
    )
    rand_ref = training_engine.submit(training_request(rand, name="rand"))
    grid_ref = training_engine.submit(training_request(grid, name="grid"))

    status = training_engine.wait(rand_ref, 180)
    assert status.state == JobState.SUCCEEDED, status.message
    assert [t.hparams for t in status.trials] == [hp.sample(rand.hyperparameters, rand.seed, i) for i in range(2)]
    assert all(t.length_done == 2 and t.state == JobState.SUCCEEDED for t in status.trials)
    best = min(status.trials, key=lambda t: t.metrics["validation_loss"])
    assert status.best is not None and status.best.id == best.id
    rows = compare(training_engine.root, rand_ref)
    assert rows[0]["trial"] == best.id and rows[0]["validation_loss"] <= rows[-1]["validation_loss"]

    status = training_engine.wait(grid_ref, 180)
    assert status.state == JobState.SUCCEEDED, status.message
    points = {(round(t.hparams["lr"], 6), t.hparams["batch_size"]) for t in status.trials}
    assert points == {(0.01, 32), (0.01, 64), (0.1, 32), (0.1, 64)}


def test_asha_stops_weak_trials_and_spends_less_than_random(
    training_engine, training_spec, training_request
) -> None:
    common = {"maxTrials": 4, "maxConcurrentTrials": 2, "maxLength": {"epochs": 16}}
    asha = training_spec(hyperparameters={"lr": LR},
                         searcher={"name": "asha", "asha": {"divisor": 2, "maxRungs": 3}, **common})
    rand = training_spec(hyperparameters={"lr": LR}, searcher={"name": "random", **common})
    asha_ref = training_engine.submit(training_request(asha, name="asha"))
    asha_status = training_engine.wait(asha_ref, 300)
    rand_ref = training_engine.submit(training_request(rand, name="random"))
    rand_status = training_engine.wait(rand_ref, 300)
    assert asha_status.state == rand_status.state == JobState.SUCCEEDED, (asha_status.message, rand_status.message)

    # The same four configurations (same seed), trained very differently: rungs at 4, 8, 16 epochs.
    assert [t.hparams for t in asha_status.trials] == [t.hparams for t in rand_status.trials]
    by_length = sorted(t.length_done for t in asha_status.trials)
    assert by_length == [4, 4, 8, 16]
    stopped = {t.stop_reason for t in asha_status.trials if t.stop_reason}
    assert stopped == {"asha: not promoted at rung 0", "asha: not promoted at rung 1"}
    asha_epochs = sum(by_length)
    rand_epochs = sum(t.length_done for t in rand_status.trials)
    assert rand_epochs == 4 * 16 and asha_epochs == 32

    assert asha_status.best is not None and rand_status.best is not None
    assert asha_status.best.length_done == 16 and asha_status.best.stop_reason is None
    asha_best = asha_status.best.metrics["validation_loss"]
    rand_best = rand_status.best.metrics["validation_loss"]
    assert asha_best <= rand_best * 1.05
    # The known optimum: the best trial has the largest learning rate that does not diverge.
    stable = max(t.hparams["lr"] for t in rand_status.trials if t.hparams["lr"] < 0.8)
    assert asha_status.best.hparams["lr"] == stable
    counts = asha_status.counts()
    assert counts == {"total": 4, "running": 0, "completed": 1, "earlyStopped": 3, "failed": 0}
