"""Automatic metadata with no code changes: a PyTorchTrial that never imports cdl, trained by the
local engine on a bound data commit, gets its architecture, parameters, layer shapes, optimizer,
loss and examples per label recorded, and a report with none of them "not recorded"."""

from __future__ import annotations

import numpy as np
import pytest

from cdl.engines.base import DataRef, JobState
from tests.plugins.training import TRAINING_FIXTURES

pytestmark = pytest.mark.slow
PLAIN = TRAINING_FIXTURES / "plain"


def test_plain_pytorch_trial_gets_complete_metadata(training_engine_factory, training_spec, training_request,
                                                     file_store, database, tmp_path):
    assert not any(line.lstrip().startswith(("import cdl", "from cdl"))
                   for line in (PLAIN / "model_def.py").read_text().splitlines())
    rng = np.random.default_rng(0)
    y = np.repeat(np.array([0, 1, 2]), [30, 20, 10])
    x = (rng.normal(size=(60, 4)) + y[:, None] * 2).astype(np.float32)
    commit = tmp_path / "commit"
    commit.mkdir()
    np.savez(commit / "data.npz", x=x, y=y)

    engine = training_engine_factory(artifacts=file_store, database=database)
    spec = training_spec(model={"path": "model", "entrypoint": "model_def:BlobClassifierTrial"},
                         hyperparameters={}, searcher={"maxLength": {"epochs": 1}})
    ref = engine.submit(training_request(spec, name="plain", model_dir=PLAIN,
                                         data=DataRef(repo="blobs", commit="c1", path=str(commit), files=1, bytes=1)))
    status = engine.wait(ref, 180)
    assert status.state == JobState.SUCCEEDED, status.message

    (row,) = database.trials(ref.id)
    model = row.metadata["model"]
    assert model["model_class"] == "Sequential" and model["parameters"] == 4 * 16 + 16 + 16 * 3 + 3
    assert model["optimizer"] == "Adam" and model["optimizer_settings"]["lr"] == 0.01
    assert model["loss"] == "CrossEntropyLoss"
    assert model["input_shape"] == [16, 4] and model["output_shape"] == [16, 3]
    assert [(layer["type"], layer["output_shape"]) for layer in model["layers"]] == [
        ("Linear", [16, 16]), ("ReLU", [16, 16]), ("Linear", [16, 3])]
    samples = row.metadata["resource_series"]  # memory and CPU over time, for the dashboard's curves
    assert samples and all(p["rssBytes"] > 10 * 2**20 for p in samples)
    assert [p["at"] for p in samples] == sorted(p["at"] for p in samples)
    data = row.metadata["data"]
    assert data["commit"] == "c1" and data["type"] == "tabular"
    assert data["perLabel"] == {"0": 30, "1": 20, "2": 10} and data["examples"] == 60

    # The report of a version of this trial: architecture, parameters and labels all recorded.
    from cdl.quality.reports import NOT_RECORDED, render_report

    markdown, report = render_report({
        "model": "blobs", "version": 1, "metrics": {"accuracy": 0.9}, "passed": True,
        "lineage": {"experiment": "plain", "trial": "1", "data": {"repo": "blobs", "commit": "c1"},
                    "trainLabels": data["perLabel"]},
        "package": {"model": model, "packages": row.metadata["packages"],
                    "environment": row.metadata["environment"]}})
    for line in markdown.splitlines():
        if line.startswith(("- Architecture", "- Parameters", "- Examples per label", "- Framework")):
            assert NOT_RECORDED not in line, line
    details = report["modelCard"]["modelDetails"]
    assert details["architecture"] == "Sequential" and details["parameters"] == model["parameters"]
