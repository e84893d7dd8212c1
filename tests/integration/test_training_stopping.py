"""Early stopping on application metrics (patience/minDelta) and on resource metrics (wall time,
peak memory of the trial's process tree), as in the performance-tuning thesis."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cdl.engines.base import JobState
from cdl.engines.training.local.state import load

pytestmark = pytest.mark.slow


def test_patience_wall_time_and_memory_budgets_stop_trials(training_engine_factory, training_spec,
                                                           training_request) -> None:
    engine = training_engine_factory(max_parallel=3)
    slow = {"lr": 0.1, "sleep_per_batch": 0.02}  # about 0.25 s an epoch, so stops land mid-run
    patience = training_spec(
        hyperparameters=slow,
        searcher={"maxLength": {"epochs": 40}, "earlyStopping": {"patience": 2, "minDelta": 100.0}},
    )
    wall = training_spec(
        hyperparameters=slow, searcher={"maxLength": {"epochs": 200}, "earlyStopping": {"maxTrialSeconds": 6}},
    )
    memory = training_spec(
        model={"path": "m", "entrypoint": "model_def:MemoryHogTrial"},
        searcher={"maxLength": {"epochs": 20}, "earlyStopping": {"maxTrialMemory": "700Mi"}},
    )
    refs = {name: engine.submit(training_request(spec, name=name))
            for name, spec in (("patience", patience), ("wall", wall), ("memory", memory))}

    status = engine.wait(refs["patience"], 180)
    (trial,) = status.trials
    assert status.state == JobState.SUCCEEDED, status.message
    assert trial.stop_reason == "early-stopped: no improvement > 100 in 2 validations"
    assert 3 <= trial.length_done < 40  # the first validation sets the best; two more without improvement
    assert trial.checkpoint is not None and Path(trial.checkpoint.path, "state_dict.pth").is_file()
    assert status.counts()["earlyStopped"] == 1

    status = engine.wait(refs["wall"], 180)
    (trial,) = status.trials
    assert status.state == JobState.SUCCEEDED, status.message
    assert trial.stop_reason == "budget: wall time 6 s exceeded"
    assert 0 < trial.length_done < 200 and trial.checkpoint is not None  # stopped cleanly, with a checkpoint

    status = engine.wait(refs["memory"], 180)
    (trial,) = status.trials
    assert status.state == JobState.FAILED  # killed before its first validation: no result at all
    assert trial.stop_reason is not None and trial.stop_reason.startswith("budget: peak memory ")
    assert trial.stop_reason.endswith(" > 700 MiB")
    assert trial.peak_rss_bytes is not None and trial.peak_rss_bytes > 700 * 2**20
    assert status.message.startswith("all 1 trial(s) failed; trial 1: budget: peak memory")
    pid = None
    for line in engine.logs(refs["memory"]).splitlines():
        if "segment 1 started (pid " in line:
            pid = int(line.split("(pid ")[1].split(",")[0])
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the whole process group is gone
    assert load(engine.run_dir(refs["memory"].id) / "run.json").trials[0].process is None
