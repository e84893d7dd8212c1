"""Searchers on real trials: random and grid try what they should; ASHA stops weak trials early
and spends far fewer trial-epochs than random search with the same trials, finding a
configuration at least as good (the toy problem's best learning rate is known: the largest
one that does not diverge)."""

from __future__ import annotations

import pytest

from cdl.engines.base import JobState
from cdl.engines.local.training import compare
from cdl.engines.local.training import hparams as hp

pytestmark = pytest.mark.slow

LR = {"type": "log", "minval": -3.0, "maxval": -0.3}


def test_random_and_grid_try_the_configured_points(training_engine, training_spec, training_request) -> None:
    rand = training_spec(hyperparameters={"lr": LR, "batch_size": 64},
                         searcher={"name": "random", "maxTrials": 3, "maxConcurrentTrials": 1})
    grid = training_spec(
        hyperparameters={"lr": {"type": "log", "minval": -2, "maxval": -1, "count": 2},
                         "batch_size": {"type": "categorical", "vals": [32, 64]}},
        searcher={"name": "grid", "maxConcurrentTrials": 1},
    )
    rand_ref = training_engine.submit(training_request(rand, name="rand"))
    grid_ref = training_engine.submit(training_request(grid, name="grid"))

    status = training_engine.wait(rand_ref, 180)
    assert status.state == JobState.SUCCEEDED, status.message
    assert [t.hparams for t in status.trials] == [hp.sample(rand.hyperparameters, rand.seed, i) for i in range(3)]
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
    common = {"maxTrials": 8, "maxConcurrentTrials": 2, "maxLength": {"epochs": 16}}
    asha = training_spec(hyperparameters={"lr": LR},
                         searcher={"name": "asha", "asha": {"divisor": 4, "maxRungs": 3}, **common})
    rand = training_spec(hyperparameters={"lr": LR}, searcher={"name": "random", **common})
    asha_ref = training_engine.submit(training_request(asha, name="asha"))
    asha_status = training_engine.wait(asha_ref, 300)
    rand_ref = training_engine.submit(training_request(rand, name="random"))
    rand_status = training_engine.wait(rand_ref, 300)
    assert asha_status.state == rand_status.state == JobState.SUCCEEDED, (asha_status.message, rand_status.message)

    # The same eight configurations (same seed), trained very differently.
    assert [t.hparams for t in asha_status.trials] == [t.hparams for t in rand_status.trials]
    stopped = [t for t in asha_status.trials if t.stop_reason]
    assert stopped and all(t.stop_reason.startswith("asha: not promoted at rung ") for t in stopped)
    assert all(t.length_done < 16 for t in stopped)
    assert sum(1 for t in asha_status.trials if t.length_done == 16) >= 1
    asha_epochs = sum(t.length_done for t in asha_status.trials)
    rand_epochs = sum(t.length_done for t in rand_status.trials)
    assert rand_epochs == 8 * 16
    assert asha_epochs <= 8 * 4 + 2 * 12 + 12  # rungs at 4 and 16 epochs; async may promote one extra
    assert asha_epochs < rand_epochs / 2

    assert asha_status.best is not None and rand_status.best is not None
    asha_best = asha_status.best.metrics["validation_loss"]
    rand_best = rand_status.best.metrics["validation_loss"]
    assert asha_best <= rand_best * 1.05
    # The known optimum: the best trial has one of the two largest (non-diverging) learning rates.
    lrs = sorted((t.hparams["lr"] for t in rand_status.trials if t.hparams["lr"] < 0.8), reverse=True)
    assert asha_status.best.hparams["lr"] in lrs[:2]
    counts = asha_status.counts()
    assert counts["earlyStopped"] == len(stopped) and counts["completed"] == 8 - len(stopped)
