"""An operator restart mid-experiment: a new engine on the same root resumes the run without
re-running finished trials; the interrupted trial continues from its latest checkpoint."""

from __future__ import annotations

import os
import time

import pytest

from cdl.engines.base import JobState
from cdl.engines.training.local.state import RUNNING, SUCCEEDED, load

pytestmark = pytest.mark.slow


def test_new_engine_resumes_without_rerunning_finished_trials(training_engine_factory, training_spec,
                                                               training_request, tmp_path) -> None:
    root = tmp_path / "training"
    first = training_engine_factory(root)
    spec = training_spec(
        hyperparameters={"lr": {"type": "log", "minval": -2, "maxval": -1}, "sleep_per_batch": 0.03},
        searcher={"name": "random", "maxTrials": 3, "maxConcurrentTrials": 1, "maxLength": {"epochs": 6}},
    )
    ref = first.submit(training_request(spec, name="restart"))
    run_json = first.run_dir(ref.id) / "run.json"

    # Wait until trial 1 is done and trial 2 has saved a checkpoint, then "crash" the operator:
    # the driver stops, trial 2's process keeps running.
    deadline = time.time() + 120
    while True:
        run = load(run_json)
        if len(run.trials) == 2 and run.trials[0].state == SUCCEEDED and run.trials[1].checkpoints:
            break
        assert time.time() < deadline, first.status(ref).message
        time.sleep(0.1)
    first.close(kill_trials=False)
    run = load(run_json)
    assert run.trials[1].state == RUNNING and run.trials[1].process is not None
    orphan = run.trials[1].process.pid
    finished_log = first.logs(ref, "1")

    second = training_engine_factory(root)
    status = second.status(ref)  # resumes
    assert status.state == JobState.RUNNING
    status = second.wait(ref, 180)
    assert status.state == JobState.SUCCEEDED, status.message
    with pytest.raises(ProcessLookupError):
        os.killpg(orphan, 0)  # the old process group was stopped, not left running twice

    run = load(run_json)
    assert [t.state for t in run.trials] == [SUCCEEDED] * 3
    assert [t.segments for t in run.trials] == [1, 2, 1]  # trial 1 not re-run; trial 2 relaunched once
    assert second.logs(ref, "1") == finished_log
    log2 = second.logs(ref, "2")
    assert log2.count("===== cdl: trial 2 segment") == 2 and "segment 2: train to 6 epochs from checkpoint" in log2
    steps = [v.steps for v in run.trials[1].validations]
    assert steps == sorted(set(steps)) and run.trials[1].units_done == 6  # resumed, not restarted
    assert "resuming after a driver restart from checkpoint" in second.logs(ref)
