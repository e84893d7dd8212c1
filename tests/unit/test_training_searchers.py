"""Search methods' decisions, driven without processes: a fake trainer answers each segment."""

from __future__ import annotations

import math
from typing import Any

import pytest

from cdl.api.experiment import ExperimentSpec
from cdl.engines.training.local import searchers
from cdl.engines.training.local.state import PAUSED, RUNNING, SUCCEEDED, TrialState, Validation


def spec(name: str, **searcher: Any) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "model": {"path": "m", "entrypoint": "model_def:Trial"},
            "hyperparameters": {"lr": {"type": "log", "minval": -3, "maxval": 0}, "units": 8},
            "searcher": {"name": name, "metric": "loss", "smallerIsBetter": True, **searcher},
            "seed": 3,
        }
    )


def loss_of(hparams: dict[str, Any], units: int) -> float:
    """Known optimum at lr = 0.1: the loss falls with training length at a rate set by lr."""
    return abs(math.log10(hparams["lr"]) + 1.0) + 1.0 / units


def simulate(search: searchers.SearchMethod, concurrency: int) -> list[TrialState]:
    """Run the searcher to the end; segments finish in launch order (FIFO), like equal trials."""
    trials: list[TrialState] = []
    running: list[str] = []
    while True:
        for action in search.next(trials, concurrency - len(running)):
            if isinstance(action, searchers.NewTrial):
                t = TrialState(id=str(len(trials) + 1), index=len(trials), hparams=action.hparams, seed=0,
                               state=RUNNING, target=action.target, rung=action.rung)
                trials.append(t)
            else:
                t = next(x for x in trials if x.id == action.trial_id)
                assert isinstance(search, searchers.AshaSearch)
                search.promote(t, action)
            running.append(t.id)
        if not running:
            search.finish(trials)
            return trials
        done_id = running.pop(0)
        t = next(x for x in trials if x.id == done_id)
        assert t.target is not None
        t.validations.append(Validation(t.target, t.target, loss_of(t.hparams, t.target), {}, 0.0))
        t.units_done = t.target
        t.state = search.segment_done(t)


def test_single_and_random_create_the_configured_trials() -> None:
    single = simulate(searchers.make(spec("single", maxLength={"epochs": 3})), 4)
    assert len(single) == 1 and single[0].units_done == 3
    rand = simulate(searchers.make(spec("random", maxTrials=6, maxConcurrentTrials=2, maxLength={"epochs": 3})), 2)
    assert len(rand) == 6 and all(t.units_done == 3 and t.state == SUCCEEDED for t in rand)
    assert len({t.hparams["lr"] for t in rand}) == 6 and all(t.hparams["units"] == 8 for t in rand)


def test_random_and_asha_sample_the_same_configurations() -> None:
    rand = searchers.make(spec("random", maxTrials=5))
    asha = searchers.make(spec("asha", maxTrials=5, maxLength={"epochs": 16}))
    assert [rand.hparams_for(i) for i in range(5)] == [asha.hparams_for(i) for i in range(5)]


def test_grid_runs_every_point_unless_max_trials_is_set() -> None:
    grid_spec = spec("grid", maxLength={"epochs": 2})
    grid_spec.hyperparameters["lr"] = {"type": "log", "minval": -3, "maxval": -1, "count": 3}
    search = searchers.make(grid_spec)
    assert search.planned_trials() == 3
    trials = simulate(search, 2)
    assert [t.hparams["lr"] for t in trials] == pytest.approx([1e-3, 1e-2, 1e-1])
    capped = spec("grid", maxTrials=2)
    capped.hyperparameters["lr"] = grid_spec.hyperparameters["lr"]
    assert searchers.make(capped).planned_trials() == 2


def test_asha_rungs_follow_divisor_and_max_rungs() -> None:
    search = searchers.make(spec("asha", maxTrials=16, maxLength={"epochs": 16}, asha={"divisor": 4, "maxRungs": 3}))
    assert isinstance(search, searchers.AshaSearch)
    assert search.lengths == [1, 4, 16]
    assert search.planned_units() == 16 * 1 + 4 * 3 + 1 * 12
    short = searchers.make(spec("asha", maxTrials=4, maxLength={"epochs": 2}, asha={"divisor": 4, "maxRungs": 5}))
    assert short.lengths == [1, 2]  # rungs shorter than one epoch collapse
    few = searchers.make(spec("asha", maxTrials=8, maxLength={"epochs": 16}, asha={"divisor": 4, "maxRungs": 3}))
    assert few.lengths == [4, 16]  # 8 trials cannot fill three rungs at divisor 4


def test_asha_promotes_the_top_fraction_and_spends_less_than_random() -> None:
    asha_spec = spec("asha", maxTrials=16, maxConcurrentTrials=2, maxLength={"epochs": 16},
                     asha={"divisor": 4, "maxRungs": 3})
    trials = simulate(searchers.make(asha_spec), 2)
    assert len(trials) == 16
    reached = {r: [t for t in trials if str(r) in t.rung_values] for r in range(3)}
    assert len(reached[0]) == 16 and len(reached[1]) == 4 and len(reached[2]) == 1
    stopped = [t for t in trials if t.stop_reason]
    assert {t.stop_reason for t in stopped} == {"asha: not promoted at rung 0", "asha: not promoted at rung 1"}
    assert all(t.state == SUCCEEDED for t in trials)  # none left waiting (paused) at the end
    asha_units = sum(t.units_done for t in trials)
    rand = simulate(searchers.make(spec("random", maxTrials=16, maxConcurrentTrials=2, maxLength={"epochs": 16})), 2)
    assert asha_units < sum(t.units_done for t in rand) / 3
    best_asha = min(t.validations[-1].value for t in trials)
    best_rand = min(t.validations[-1].value for t in rand)
    assert best_asha <= best_rand + 1e-9  # the same samples; the best one is trained to the end


def test_asha_promotion_is_asynchronous() -> None:
    """With a rung of two results, the better one moves up at once; it does not wait for the rung to fill."""
    search = searchers.make(spec("asha", maxTrials=8, maxLength={"epochs": 4}, asha={"divisor": 2, "maxRungs": 3}))
    assert isinstance(search, searchers.AshaSearch)
    a = TrialState("1", 0, {"lr": 0.1}, 0, state=PAUSED, rung=0, rung_values={"0": 0.5})
    b = TrialState("2", 1, {"lr": 0.001}, 0, state=PAUSED, rung=0, rung_values={"0": 0.9})
    (action,) = search.next([a, b], 1)
    assert action == searchers.Promote("1", 2, 1)
    a.state, a.rung = RUNNING, 1
    # Trial 2 is not in the top half of rung 0: a new trial starts instead.
    (action,) = search.next([a, b], 1)
    assert isinstance(action, searchers.NewTrial) and action.rung == 0 and action.target == 1


def test_asha_never_promotes_trials_without_a_metric() -> None:
    search = searchers.make(spec("asha", maxTrials=2, maxLength={"epochs": 4}, asha={"divisor": 2, "maxRungs": 2}))
    a = TrialState("1", 0, {}, 0, state=PAUSED, rung=0, rung_values={"0": float("nan")})
    b = TrialState("2", 1, {}, 0, state=PAUSED, rung=0, rung_values={"0": None})
    assert search.next([a, b], 2) == []
