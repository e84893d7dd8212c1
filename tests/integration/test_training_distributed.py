"""slotsPerTrial > 1: one trial as two processes under torchrun (gloo on CPU) through
Determined's DistributedContext; the chief alone writes the checkpoint, which loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cdl.engines.base import JobState

pytestmark = pytest.mark.slow


def test_two_process_trial_produces_one_loadable_checkpoint(training_engine, training_spec,
                                                            training_request) -> None:
    spec = training_spec(resources={"slotsPerTrial": 2}, hyperparameters={"lr": 0.2},
                         searcher={"maxLength": {"epochs": 3}})
    ref = training_engine.submit(training_request(spec, name="dist"))
    status = training_engine.wait(ref, 180)
    assert status.state == JobState.SUCCEEDED, status.message
    (trial,) = status.trials
    assert trial.length_done == 3 and trial.metrics["validation_loss"] < 1.0

    checkpoints = list((training_engine.run_dir(ref.id) / "trials" / "1" / "xdg" / "determined").iterdir())
    assert len(checkpoints) == 1  # best == latest; one per save, written by the chief only
    assert trial.checkpoint is not None and Path(trial.checkpoint.path) == checkpoints[0]
    state = torch.load(checkpoints[0] / "state_dict.pth", weights_only=False)["models_state_dict"][0]
    model = torch.nn.Linear(8, 1)
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    x = torch.randn(16, 8)
    expected = x @ torch.linspace(-2.0, 2.0, 8)
    assert torch.nn.functional.mse_loss(model(x).squeeze(-1), expected).item() < 1.0

    run_json = (training_engine.run_dir(ref.id) / "run.json").read_text()
    assert '"world_size": 2' in run_json
    # Each rank saw half the data: 384 training rows / 32 per batch / 2 ranks = 6 batches an epoch.
    assert '"steps": 18' in run_json
