"""The local training engine end to end: real trial processes running Determined code.

Each test trains the toy linear-regression trial for a few epochs (a few seconds a trial)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cdl.engines.base import DataRef, EngineRef, JobState, ResourceKey
from cdl.engines.training.local import compare
from cdl.errors import InvalidSpec

pytestmark = pytest.mark.slow


def _data_commit(root: Path, rows: int) -> Path:
    """A data commit directory like a DataPipeline output: data.npz with `rows` examples."""
    rng = np.random.default_rng(rows)
    x = rng.normal(size=(rows, 8)).astype("float32")
    y = (x @ np.linspace(-2.0, 2.0, 8) + 0.05 * rng.normal(size=rows)).astype("float32")
    root.mkdir(parents=True)
    np.savez(root / "data.npz", x=x, y=y)
    return root


def test_single_trial_trains_on_the_bound_commit_and_records_everything(
    training_engine_factory, training_spec, training_request, training_linreg_dir, file_store, database, tmp_path,
    monkeypatch,
) -> None:
    monkeypatch.setenv("CDL_TEST_SECRET", "s3cr3t")  # e.g. the operator's S3 key: never passed to trials
    engine = training_engine_factory(artifacts=file_store, database=database)
    _data_commit(tmp_path / "commit-a", 200)
    data_b = _data_commit(tmp_path / "commit-b", 320)
    data = DataRef(repo="toy-train", commit="b0b", path=str(data_b), files=1, bytes=1)
    spec = training_spec(hyperparameters={"lr": 0.2}, searcher={"maxLength": {"epochs": 3}})
    ref = engine.submit(training_request(spec, data=data))
    # The function entrypoint (Core API) runs beside it, on no data.
    fn_spec = training_spec(model={"path": "m", "entrypoint": "model_def:core_train"})
    fn_ref = engine.submit(training_request(fn_spec, name="core-fn"))
    script_spec = training_spec(model={"path": "m", "entrypoint": "core_script.py"}, searcher={"maxLength": {"epochs": 1}})
    script_ref = engine.submit(training_request(script_spec, name="core-script"))

    status = engine.wait(ref, 180)
    assert status.state == JobState.SUCCEEDED, status.message
    (trial,) = status.trials
    assert trial.metrics["data_rows"] == 320  # commit b, not a: the exact commit passed in
    assert trial.metrics["env_secret_visible"] == 0.0
    assert trial.length_done == 3 and status.progress == 1.0
    assert trial.wall_seconds and trial.cpu_seconds and trial.peak_rss_bytes and trial.peak_rss_bytes > 50 * 2**20
    assert status.best is not None and status.best.id == trial.id
    assert status.counts() == {"total": 1, "running": 0, "completed": 1, "earlyStopped": 0, "failed": 0}

    # The checkpoint went to the artifact store, and it loads.
    ckpt = trial.checkpoint
    assert ckpt is not None and ckpt.uri.startswith(file_store.base_uri)
    local = file_store.get_dir(file_store.key_for(ckpt.uri), tmp_path / "download")
    state = torch.load(local / "state_dict.pth", weights_only=False)["models_state_dict"][0]
    model = torch.nn.Linear(8, 1)
    model.load_state_dict(state)
    assert np.allclose(model.weight.detach().numpy()[0], np.linspace(-2.0, 2.0, 8), atol=0.3)

    # Experiment Registry rows with ModelKB-style automatic metadata.
    (row,) = database.trials(ref.id)
    assert row.state == "succeeded" and row.checkpoint_uri == ckpt.uri and row.best_metric == pytest.approx(
        trial.metrics["validation_loss"])
    meta = row.metadata
    assert meta["model"]["framework"] == "pytorch" and meta["model"]["parameters"] == 9
    assert meta["model"]["layers"] == [{"name": "Linear", "type": "Linear", "params": 9, "output_shape": [32, 1]}]
    assert meta["model"]["optimizer"] == "SGD" and meta["model"]["input_shape"] == [32, 8]
    assert meta["packages"]["torch"].startswith(torch.__version__.split("+")[0])
    assert meta["packages"]["determined"] == "0.38.1" and meta["environment"]["python"]
    assert meta["seed"] == 7 and meta["data"]["commit"] == "b0b"
    assert [m.epoch for m in database.trial_metrics(ref.id, "1", kind="validation")] == [1.0, 2.0, 3.0]
    run_row = database.get_run(ref.id)
    assert run_row.state == "succeeded" and run_row.data_commit == "b0b" and run_row.finished_at is not None
    upstream = database.lineage_chain("checkpoint", ckpt.uuid)
    assert ("data-commit", "toy-train@b0b") in {(e.from_kind, e.from_id) for e in upstream}

    # Side by side, from the engine's root and from the database.
    (from_root,) = compare(engine.root, ref)
    (from_db,) = compare(database, ref)
    assert from_root["hp.lr"] == from_db["hp.lr"] == 0.2
    assert from_root["validation_loss"] == pytest.approx(from_db["validation_loss"])
    assert from_root["checkpoint"] == from_db["checkpoint"] == ckpt.uuid

    fn_status = engine.wait(fn_ref, 120)
    assert fn_status.state == JobState.SUCCEEDED, fn_status.message
    fn_trial = fn_status.trials[0]
    assert fn_trial.length_done == 2 and fn_trial.checkpoint is not None
    assert (Path(fn_trial.checkpoint.path) / "model.pt").is_file()
    assert database.trials(fn_ref.id)[0].metadata["model"]["parameters"] == 9  # record_model() from a function
    script_status = engine.wait(script_ref, 120)
    assert script_status.state == JobState.SUCCEEDED, script_status.message
    assert script_status.trials[0].length_done == 1 and script_status.best is not None


def test_failing_trials_show_tracebacks_and_fail_the_run(training_engine, training_spec, training_request) -> None:
    broken = training_spec(
        model={"path": "m", "entrypoint": "model_def:BrokenTrial"},
        hyperparameters={"lr": {"type": "log", "minval": -2, "maxval": -1}},
        searcher={"name": "random", "maxTrials": 2, "maxConcurrentTrials": 2},
    )
    ref = training_engine.submit(training_request(broken, name="broken"))
    # An entrypoint that exists but is no trial fails the whole run at once.
    bad = training_spec(
        model={"path": "m", "entrypoint": "model_def:NOT_A_TRIAL"},
        searcher={"name": "random", "maxTrials": 6, "maxConcurrentTrials": 1},
    )
    bad_ref = training_engine.submit(training_request(bad, name="bad-entry"))

    status = training_engine.wait(ref, 120)
    assert status.state == JobState.FAILED
    assert status.message.startswith("all 2 trial(s) failed; trial 1: ValueError: synthetic failure at batch 2")
    assert all(t.state == JobState.FAILED for t in status.trials)
    log = training_engine.logs(ref, "1")
    assert "Traceback (most recent call last)" in log and "ValueError: synthetic failure at batch 2" in log
    assert "trial 2: segment 1 ended (exit 1); trial failed" in training_engine.logs(ref)

    bad_status = training_engine.wait(bad_ref, 120)
    assert bad_status.state == JobState.FAILED
    assert "spec.model.entrypoint 'model_def:NOT_A_TRIAL'" in bad_status.message
    assert "neither a PyTorchTrial class nor a function" in bad_status.message
    assert len(bad_status.trials) == 1  # failed fast: no second trial was started


def test_the_engine_reports_a_runs_changes_and_its_end(training_engine, training_spec, training_request) -> None:
    """Change reports (what the operator follows instead of polling): the run's saved states,
    the last one once it has ended."""
    from cdl.engines.base import ReportsChanges
    from tests.plugins.operator import wait_for

    assert isinstance(training_engine, ReportsChanges)
    seen: list[tuple[ResourceKey, str]] = []
    refs: dict[str, EngineRef] = {}

    def listener(key: ResourceKey) -> None:  # what the operator would read when it looks now
        ref = refs.get("ref")
        seen.append((key, training_engine.status(ref).state.value if ref else "starting"))

    training_engine.subscribe(listener)
    broken = training_spec(model={"path": "m", "entrypoint": "model_def:BrokenTrial"})
    refs["ref"] = training_engine.submit(training_request(broken, name="reported"))
    assert training_engine.wait(refs["ref"], 120).state == JobState.FAILED
    wait_for(lambda: seen and seen[-1][1] == "failed", timeout=10, what="the end reported")
    assert {(k.namespace, k.name) for k, _ in seen} == {("ml", "reported")}


def test_missing_entrypoint_is_refused_before_anything_runs(training_engine, training_spec, training_request) -> None:
    spec = training_spec(model={"path": "m", "entrypoint": "model_def:NoSuchTrial"})
    with pytest.raises(InvalidSpec) as err:
        training_engine.submit(training_request(spec, name="missing"))
    assert str(err.value) == (
        "Experiment ml/missing: spec.model.entrypoint: 'model_def:NoSuchTrial': module model_def has no attribute "
        "'NoSuchTrial'"
    )
    assert not list((training_engine.root / "runs").iterdir())


def test_submit_is_idempotent_and_kill_stops_the_process_group(training_engine, training_spec, training_request) -> None:
    spec = training_spec(hyperparameters={"lr": 0.1, "sleep_per_batch": 0.05}, searcher={"maxLength": {"epochs": 50}})
    request = training_request(spec, name="long")
    ref = training_engine.submit(request)
    assert training_engine.submit(request) == ref
    deadline = time.time() + 60
    while True:
        status = training_engine.status(ref)
        run = (training_engine.run_dir(ref.id) / "run.json").read_text()
        if status.trials and status.trials[0].state == JobState.RUNNING and '"pid"' in run:
            break
        assert time.time() < deadline, status.message
        time.sleep(0.1)
    assert len(status.trials) == 1
    from cdl.engines.training.local.state import load

    pid = load(training_engine.run_dir(ref.id) / "run.json").trials[0].process.pid
    training_engine.kill(ref)
    status = training_engine.status(ref)
    assert status.state == JobState.CANCELED and status.trials[0].state == JobState.CANCELED
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert training_engine.submit(request) == ref  # a finished run is not started again
    assert training_engine.status(ref).state == JobState.CANCELED
    training_engine.delete(ref)
    assert not training_engine.run_dir(ref.id).exists()
