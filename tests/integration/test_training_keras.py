"""A Keras model function trained with Determined's callback inside det.core.init(): metrics,
checkpoints and an ASHA promotion that resumes from the Keras checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdl.engines.base import JobState
from cdl.engines.training.local.state import load

pytestmark = pytest.mark.slow


def test_keras_trials_report_checkpoint_and_resume(training_engine, training_spec, training_request,
                                                   training_keras_dir) -> None:
    spec = training_spec(
        model={"path": "m", "entrypoint": "model_def:train"},
        hyperparameters={"lr": {"type": "categorical", "vals": [0.001, 0.5]}, "units": 8},
        searcher={"name": "asha", "metric": "val_accuracy", "smallerIsBetter": False, "maxTrials": 2,
                  "maxConcurrentTrials": 2, "maxLength": {"epochs": 2}, "asha": {"divisor": 2, "maxRungs": 2}},
    )
    ref = training_engine.submit(training_request(spec, name="keras", model_dir=training_keras_dir))
    status = training_engine.wait(ref, 300)
    assert status.state == JobState.SUCCEEDED, status.message
    assert status.best is not None and status.best.length_done == 2
    assert 0.0 <= status.best.metrics["val_accuracy"] <= 1.0
    assert Path(status.best.checkpoint.path, "model_checkpoint.weights.h5").is_file()

    run = load(training_engine.run_dir(ref.id) / "run.json")
    promoted = next(t for t in run.trials if t.id == status.best.id)
    assert promoted.segments == 2
    assert [v.units for v in promoted.validations] == [1, 2]  # resumed at epoch 2, not retrained from 1
    assert promoted.metadata["model"]["framework"] == "keras" and promoted.metadata["model"]["parameters"] == 49
    # optimizer, loss and shapes straight from the compiled Keras model, with no call in the trial
    assert promoted.metadata["model"]["optimizer"] and promoted.metadata["model"]["loss"]
    assert promoted.metadata["model"]["input_shape"][1:] and promoted.metadata["model"]["output_shape"][-1] >= 1
    other = next(t for t in run.trials if t.id != status.best.id)
    assert other.stop_reason == "asha: not promoted at rung 0"
    assert "from checkpoint" in training_engine.logs(ref, promoted.id)
