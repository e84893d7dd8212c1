"""The local training engine's small pieces: quantities, metric names, entrypoint checks,
persisted state and the trial event channel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdl.engines.base import ResourceKey
from cdl.engines.training.local.engine import check_entrypoint, run_id_for
from cdl.engines.training.local.runner import human_bytes, metric_lookup, parse_quantity
from cdl.engines.training.local.state import (
    Checkpoint,
    RunState,
    TrialState,
    Validation,
    load,
    save,
)
from cdl.engines.training.local.trial_process import read_events
from cdl.errors import InvalidSpec


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1Gi", 2**30), ("512Mi", 512 * 2**20), ("1G", 10**9), ("1e9", 10**9), ("2048", 2048), (1024, 1024)],
)
def test_parse_quantity(text: str, expected: int) -> None:
    assert parse_quantity(text) == expected


def test_human_bytes_reads_like_the_stop_reasons() -> None:
    assert human_bytes(2**30) == "1 GiB"
    assert human_bytes(1.1 * 2**30) == "1.1 GiB"
    assert human_bytes(612 * 2**20) == "612 MiB"


def test_metric_lookup_matches_keras_and_determined_prefixes() -> None:
    assert metric_lookup({"val_accuracy": 0.9}, "val_accuracy") == 0.9
    assert metric_lookup({"accuracy": 0.8}, "val_accuracy") == 0.8
    assert metric_lookup({"validation_loss": 0.1}, "loss") == 0.1
    assert metric_lookup({"loss": 0.1}, "accuracy") is None


def test_run_ids_are_unique_per_generation_and_run() -> None:
    key = ResourceKey("ml", "bbc-asha")
    assert run_id_for(key, 3, 1) == "ml--bbc-asha-g3-r1"
    assert run_id_for(key, 3, 2) != run_id_for(key, 3, 1)


def test_check_entrypoint_refuses_missing_module_class_and_file(tmp_path: Path) -> None:
    (tmp_path / "model_def.py").write_text("import torch\nclass MyTrial:\n    pass\nVALUE = 1\n")
    check_entrypoint(tmp_path, "model_def:MyTrial", "Experiment ml/x")
    check_entrypoint(tmp_path, "model_def", "Experiment ml/x")
    for entrypoint, words in [
        ("model_def:Missing", "module model_def has no attribute 'Missing'"),
        ("nowhere:MyTrial", "module 'nowhere' not found"),
        ("train.py", "no such file"),
    ]:
        with pytest.raises(InvalidSpec) as err:
            check_entrypoint(tmp_path, entrypoint, "Experiment ml/x")
        assert err.value.problems[0][0] == "spec.model.entrypoint"
        assert words in str(err.value) and str(err.value).startswith("Experiment ml/x: spec.model.entrypoint")


def test_check_entrypoint_wants_a_length_for_pytorch_trials(tmp_path: Path) -> None:
    (tmp_path / "model_def.py").write_text("from determined import pytorch\nclass T(pytorch.PyTorchTrial):\n    pass\n")
    check_entrypoint(tmp_path, "model_def:T", "Experiment ml/x", has_max_length=True)
    with pytest.raises(InvalidSpec) as err:
        check_entrypoint(tmp_path, "model_def:T", "Experiment ml/x", has_max_length=False)
    assert err.value.problems[0][0] == "spec.searcher.maxLength"


def test_check_entrypoint_leaves_dynamic_modules_to_the_trial(tmp_path: Path) -> None:
    (tmp_path / "dyn.py").write_text("from helpers import *\n")
    check_entrypoint(tmp_path, "dyn:Anything", "Experiment ml/x")


def test_state_round_trips_through_json(tmp_path: Path) -> None:
    trial = TrialState("1", 0, {"lr": 0.1, "net": {"units": 8}}, 42, validations=[
        Validation(12, 1, 0.5, {"loss": 0.5}, 1.0), Validation(24, 2, float("nan"), {"loss": float("nan")}, 2.0),
    ], checkpoints=[Checkpoint("abc", 1, 12, 1.0)])
    run = RunState("r", "ml", "x", "uid", 1, 1, {"searcher": {}}, "/m", None, trials=[trial])
    save(run, tmp_path / "run.json")
    back = load(tmp_path / "run.json")
    assert back.trials[0].hparams == trial.hparams
    assert back.trials[0].best_validation(smaller_is_better=True).steps == 12  # NaN never wins
    assert back.trials[0].best_checkpoint(True).uuid == "abc"


def test_read_events_leaves_a_half_written_line_for_later(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({"event": "start"}) + "\n" + '{"event": "metr')
    events, offset = read_events(path, 0)
    assert [e["event"] for e in events] == ["start"]
    with path.open("a") as fh:
        fh.write('ics"}\n')
    events, offset = read_events(path, offset)
    assert [e["event"] for e in events] == ["metrics"]
    assert read_events(path, offset) == ([], offset)


def test_status_maps_paused_asha_trials_and_progress(tmp_path: Path) -> None:
    from cdl.api.experiment import ExperimentSpec
    from cdl.engines.base import JobState
    from cdl.engines.training.local import searchers
    from cdl.engines.training.local.status import build_status

    spec = ExperimentSpec.model_validate({
        "model": {"path": "m", "entrypoint": "model_def:T"}, "hyperparameters": {"lr": 0.1},
        "searcher": {"name": "asha", "metric": "loss", "smallerIsBetter": True, "maxTrials": 4,
                     "maxLength": {"epochs": 4}, "asha": {"divisor": 2, "maxRungs": 2}},
    })
    search = searchers.make(spec)  # rungs at 2 and 4 epochs: planned 4*2 + 2*2 = 12 epochs
    done = TrialState("1", 0, {"lr": 0.1}, 1, state="succeeded", target=4, rung=1, units_done=4,
                      validations=[Validation(8, 4, 0.2, {"loss": 0.2}, 1.0)])
    paused = TrialState("2", 1, {"lr": 0.2}, 2, state="paused", target=2, rung=0, units_done=2,
                        stop_reason="asha: not promoted at rung 0", validations=[Validation(4, 2, 0.5, {"loss": 0.5}, 1.0)])
    running = TrialState("3", 2, {"lr": 0.3}, 3, state="running", target=2, rung=0, units_done=1)
    run = RunState("r", "ml", "x", "", 1, 1, spec.model_dump(by_alias=True), "/m", None, state="running",
                   trials=[done, paused, running])
    status = build_status(run, search, tmp_path)
    assert [t.state for t in status.trials] == [JobState.SUCCEEDED, JobState.PENDING, JobState.RUNNING]
    assert status.trials[1].stop_reason == "asha: not promoted at rung 0"
    assert status.counts() == {"total": 3, "running": 1, "completed": 1, "earlyStopped": 1, "failed": 0}
    assert status.progress == round((4 + 2 + 1) / 12, 4)
    assert status.best is not None and status.best.id == "1" and status.best.metrics == {"loss": 0.2}
    assert "1 waiting for promotion" in status.message
