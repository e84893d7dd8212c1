"""The Determined engines against a protocol-level fake master (cdl/simulation/determined.py):
the real Determined 0.38.1 SDK over HTTP, responses built from its own generated bindings."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdl.api.experiment import ExperimentSpec
from cdl.engines.base import (
    DataRef,
    EngineRef,
    JobState,
    RegistrationRequest,
    RegistryEngine,
    ResourceKey,
    TrainingEngine,
    TrainingRequest,
)
from cdl.engines.registry.determined import DeterminedRegistryEngine
from cdl.engines.settings import DeterminedSettings
from cdl.engines.training.determined import DeterminedTrainingEngine
from cdl.errors import PermanentEngineError, TransientEngineError
from cdl.simulation.determined import FakeDeterminedMaster, MasterError
from tests.plugins.cluster_fakes import DET_PASSWORD, DET_USER

KEY = ResourceKey("ml", "bbc-asha", "uid-42")
DATA = DataRef("news-train", "c0ffee", uri="pfs://ml/news-train@master=c0ffee")
ASHA = {
    "model": {"path": "model", "image": "registry.example.com/cdl/bbc-train:0.1.0", "entrypoint": "model_def:NewsTrial"},
    "hyperparameters": {
        "learning_rate": {"type": "log", "minval": -3.5, "maxval": -2, "base": 10},
        "dropout": {"type": "double", "minval": 0.1, "maxval": 0.5},
        "batch_size": 32,
    },
    "searcher": {"name": "asha", "metric": "validation_accuracy", "smallerIsBetter": False, "maxTrials": 4,
                 "maxConcurrentTrials": 2, "maxLength": {"epochs": 4}, "asha": {"divisor": 2, "maxRungs": 2}},
    "resources": {"slotsPerTrial": 1},
    "seed": 7,
}


def accuracy(hparams: dict[str, Any], epochs: int) -> float:
    return round(0.5 + 0.05 * epochs + hparams["dropout"] / 10, 6)


def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "model"
    path.mkdir(exist_ok=True)
    (path / "model_def.py").write_text("class NewsTrial:\n    pass\n")
    (path / "evaluate.py").write_text("def evaluate(model_dir, data_dir):\n    return {'accuracy': 1.0}\n")
    (path / "big.bin").write_bytes(b"\0" * 1024)
    (path / ".detignore").write_text("big.bin\n")
    return path


def settings_for(master: FakeDeterminedMaster, tmp_path: Path, **extra: Any) -> DeterminedSettings:
    values: dict[str, Any] = {"master": master.url, "user": DET_USER, "password": DET_PASSWORD,
                              "checkpoint_storage": (tmp_path / "checkpoints").as_uri(), "request_retries": 0}
    values.update(extra)
    return DeterminedSettings.from_env({}, **values)


def request_for(tmp_path: Path, spec: dict[str, Any] | None = None, generation: int = 1,
                secrets: dict[str, str] | None = None) -> TrainingRequest:
    return TrainingRequest(KEY, ExperimentSpec.model_validate(spec or ASHA), generation, 1, model_dir(tmp_path), DATA,
                           secrets or {})


def test_submit_creates_one_experiment_per_generation_with_the_generated_config(
        cluster_det_master: FakeDeterminedMaster, tmp_path: Path) -> None:
    engine = DeterminedTrainingEngine(settings_for(cluster_det_master, tmp_path, ui_url="https://det.example.com"))
    assert isinstance(engine, TrainingEngine)

    ref = engine.submit(request_for(tmp_path))

    assert ref.engine == "determined" and ref.url == f"https://det.example.com/det/experiments/{ref.id}"
    exp = cluster_det_master.experiments[int(ref.id)]
    assert exp.user == DET_USER
    assert sorted(exp.files) == ["evaluate.py", "model_def.py"]  # the model dir, as .detignore filters it
    config = yaml.safe_load(exp.text)
    assert config["entrypoint"] == "python3 -m cdl.runtime.launch"
    assert config["searcher"] == {
        "name": "adaptive_asha", "metric": "validation_accuracy", "smaller_is_better": False, "max_trials": 4,
        "max_concurrent_trials": 2, "time_metric": "epochs", "max_time": 4, "mode": "standard", "divisor": 2,
        "max_rungs": 2, "max_length": {"epochs": 4},
    }
    env = dict(item.split("=", 1) for item in config["environment"]["environment_variables"])
    assert env["CDL_DATA_URI"] == DATA.uri and env["CDL_DATA_COMMIT"] == "c0ffee" and env["CDL_DATA_REPO"] == "news-train"
    assert config["checkpoint_storage"] == {"type": "shared_fs", "host_path": str(tmp_path / "checkpoints")}
    assert len(exp.trials) == 4

    # Same key, generation and run: the same experiment, found again (an operator restart).
    again = DeterminedTrainingEngine(settings_for(cluster_det_master, tmp_path))
    assert again.submit(request_for(tmp_path)).id == ref.id
    assert len(cluster_det_master.experiments) == 1
    assert again.submit(request_for(tmp_path, generation=2)).id != ref.id


def test_status_follows_trials_to_the_best_checkpoint(cluster_det_master: FakeDeterminedMaster,
                                                       tmp_path: Path) -> None:
    engine = DeterminedTrainingEngine(settings_for(cluster_det_master, tmp_path))
    ref = engine.submit(request_for(tmp_path))
    queued = engine.status(ref)
    assert queued.state == JobState.RUNNING and queued.counts()["total"] == 4 and queued.best is None

    cluster_det_master.run_trials(int(ref.id), progress=0.4)
    running = engine.status(ref)
    assert running.progress == pytest.approx(0.4) and running.counts()["running"] == 4

    cluster_det_master.complete(int(ref.id), accuracy)
    done = engine.status(ref)

    assert done.state == JobState.SUCCEEDED and done.progress == 1.0
    assert done.counts() == {"total": 4, "running": 0, "completed": 2, "earlyStopped": 2, "failed": 0}
    stopped = [t for t in done.trials if t.stop_reason]
    assert all(t.stop_reason == "asha: not promoted" and t.length_done == 2 for t in stopped)
    best = max(done.trials, key=lambda t: t.metrics["validation_accuracy"])
    assert done.best is not None and done.best.id == best.id and done.best.length_done == 4
    assert done.best.metrics["validation_accuracy"] == accuracy(best.hparams, 4)
    ck = done.best.checkpoint
    assert ck is not None and ck.uri == (tmp_path / "checkpoints" / ck.uuid).as_uri()
    assert (tmp_path / "checkpoints" / ck.uuid / "state_dict.pth").is_file()
    assert "validation_accuracy=" in engine.logs(ref, done.best.id)


def test_kill_cancels_and_a_failed_experiment_reports_its_trial(cluster_det_master: FakeDeterminedMaster,
                                                                tmp_path: Path) -> None:
    engine = DeterminedTrainingEngine(settings_for(cluster_det_master, tmp_path))
    first = engine.submit(request_for(tmp_path))
    cluster_det_master.run_trials(int(first.id))
    engine.kill(first)
    assert engine.status(first).state == JobState.CANCELED
    engine.kill(first)  # killing twice is fine
    engine.kill(EngineRef("9999", "", "determined"))  # and an experiment that is gone

    second = engine.submit(request_for(tmp_path, generation=2))
    cluster_det_master.fail(int(second.id), "RuntimeError: CUDA out of memory")
    failed = engine.status(second)
    trial = cluster_det_master.experiments[int(second.id)].trials[0]
    assert failed.state == JobState.FAILED and f"trial {trial.id} failed" in failed.message
    assert "CUDA out of memory" in engine.logs(second, str(trial.id))


def test_an_expired_session_logs_in_again(cluster_det_master: FakeDeterminedMaster, tmp_path: Path) -> None:
    engine = DeterminedTrainingEngine(settings_for(cluster_det_master, tmp_path))
    ref = engine.submit(request_for(tmp_path))
    cluster_det_master.expire_sessions()
    assert engine.status(ref).counts()["total"] == 4
    logins = [p for m, p in cluster_det_master.requests if p == "/api/v1/auth/login"]
    assert len(logins) == 2


def test_unreachable_master_is_transient(cluster_closed_port: int, tmp_path: Path) -> None:
    settings = DeterminedSettings.from_env({}, master=f"http://127.0.0.1:{cluster_closed_port}", user="u",
                                           password="p", checkpoint_storage="s3://bucket/ck", request_retries=0)
    engine = DeterminedTrainingEngine(settings)
    started = time.monotonic()
    with pytest.raises(TransientEngineError, match="unreachable"):
        engine.submit(request_for(tmp_path))
    with pytest.raises(TransientEngineError):
        engine.status(EngineRef("1"))
    assert time.monotonic() - started < 10


def test_a_master_answering_503_is_transient(cluster_det_master: FakeDeterminedMaster, tmp_path: Path) -> None:
    engine = DeterminedTrainingEngine(settings_for(cluster_det_master, tmp_path))
    ref = engine.submit(request_for(tmp_path))
    cluster_det_master.fail_next = MasterError(14, "the master is restarting")
    with pytest.raises(TransientEngineError, match="the master is restarting"):
        engine.status(ref)
    assert engine.status(ref).counts()["total"] == 4


def test_master_rejections_are_permanent_with_its_message(cluster_det_master: FakeDeterminedMaster,
                                                          tmp_path: Path) -> None:
    wrong = DeterminedTrainingEngine(settings_for(cluster_det_master, tmp_path, password="not-it"))
    with pytest.raises(PermanentEngineError, match="invalid credentials") as info:
        wrong.submit(request_for(tmp_path))
    assert "not-it" not in str(info.value)

    engine = DeterminedTrainingEngine(settings_for(cluster_det_master, tmp_path))
    overridden = {**ASHA, "determined": {"searcher": {"max_time": None}, "scheduling_unit": 10}}
    with pytest.raises(PermanentEngineError,
                       match="adaptive_asha` searcher requires `max_time` and `time_metric`"):
        engine.submit(request_for(tmp_path, overridden))
    unknown = {**ASHA, "determined": {"bogus_section": {"x": 1}}}
    with pytest.raises(PermanentEngineError, match="additional properties are not allowed.*bogus_section"):
        engine.submit(request_for(tmp_path, unknown))
    assert cluster_det_master.experiments == {}


def test_s3_checkpoint_credentials_come_from_the_secret(cluster_det_master: FakeDeterminedMaster,
                                                        tmp_path: Path) -> None:
    spec = {**ASHA, "checkpointStorage": {"uri": "s3://ckpts/bbc", "credentialsSecretRef": {"name": "minio",
                                                                                           "key": "credentials"}}}
    engine = DeterminedTrainingEngine(settings_for(cluster_det_master, tmp_path,
                                                   s3_endpoint_url="http://minio.cdl.svc:9000"))
    with pytest.raises(PermanentEngineError, match="Secret minio key credentials"):
        engine.submit(request_for(tmp_path, spec))
    ref = engine.submit(request_for(tmp_path, spec, secrets={"minio/credentials": "AKIA:s3cr3t"}))
    storage = cluster_det_master.experiments[int(ref.id)].config["checkpoint_storage"]
    assert storage == {"type": "s3", "bucket": "ckpts", "prefix": "bbc", "endpoint_url": "http://minio.cdl.svc:9000",
                       "access_key": "AKIA", "secret_key": "s3cr3t"}


@pytest.mark.slow
def test_registry_packages_the_checkpoint_and_registers_it_in_determined(
        cluster_det_master: FakeDeterminedMaster, s3_server: Any, file_store: Any, tmp_path: Path) -> None:
    cluster_det_master.s3_credentials = (s3_server.access_key, s3_server.secret_key)
    settings = settings_for(cluster_det_master, tmp_path, checkpoint_storage="s3://det-checkpoints/cdl",
                            s3_endpoint_url=s3_server.endpoint, s3_access_key=s3_server.access_key,
                            s3_secret_key=s3_server.secret_key, ui_url="https://det.example.com")
    training = DeterminedTrainingEngine(settings)
    single = {**ASHA, "searcher": {"name": "single", "metric": "validation_accuracy", "smallerIsBetter": False,
                                   "maxLength": {"epochs": 2}},
              "hyperparameters": {"dropout": 0.3, "batch_size": 32}}
    ref = training.submit(request_for(tmp_path, single))
    cluster_det_master.complete(int(ref.id), accuracy)
    best = training.status(ref).best
    assert best is not None and best.checkpoint is not None
    assert best.checkpoint.uri == f"s3://det-checkpoints/cdl/{best.checkpoint.uuid}"

    registry = DeterminedRegistryEngine(settings, file_store, root=tmp_path / "registry")
    assert isinstance(registry, RegistryEngine)
    request = RegistrationRequest(ResourceKey("ml", "news-classifier-v1"), "news-classifier", 3, best.checkpoint,
                                  model_dir(tmp_path), best.hparams, {"lineage": {"experiment": "bbc-asha"}}, ref)
    registered = registry.register(request)

    assert registered.version == 3 and registered.sha256 and file_store.exists("models/news-classifier/3/package.tar.gz")
    model = cluster_det_master.models["news-classifier"]
    (det_version, record), = model.versions.items()
    assert record["checkpoint"] == best.checkpoint.uuid and record["metadata"]["cdlVersion"] == 3
    assert record["metadata"]["sha256"] == registered.sha256
    assert registered.registry == {"engine": "determined", "id": f"news-classifier/{det_version}",
                                   "url": f"https://det.example.com/det/models/news-classifier/versions/{det_version}"}
    assert registry.register(request).sha256 == registered.sha256  # idempotent
    assert len(model.versions) == 1

    # dynamic-int8 compression stores its variant through the registry the version lives in
    from cdl.runtime.package import unpack

    archive = file_store.get_file("models/news-classifier/3/package.tar.gz", tmp_path / "package.tar.gz")
    variant = registry.store_variant("news-classifier", 3, "dynamic-int8", unpack(archive, tmp_path / "variant"))
    assert file_store.exists("models/news-classifier/3/dynamic-int8/package.tar.gz")
    assert model.versions[det_version]["metadata"]["variants"]["dynamic-int8"] == {
        "artifactUri": variant.artifact_uri, "sha256": variant.sha256}
    assert model.versions[det_version]["metadata"]["cdlVersion"] == 3

    registry.set_stage("news-classifier", 3, "production")
    assert model.versions[det_version]["labels"] == ["stage:production"]
    registry.delete("news-classifier", 3)
    assert model.versions == {}


def test_one_poller_reports_the_experiments_that_moved(cluster_det_master: FakeDeterminedMaster,
                                                         tmp_path: Path) -> None:
    """The master cannot push: the engine lists every cdl experiment in one call per round and
    tells the operator which Experiment resources moved (started, progressed, finished)."""
    from cdl.engines.base import ReportsChanges
    from tests.plugins.operator import wait_for

    engine = DeterminedTrainingEngine(settings_for(cluster_det_master, tmp_path), poll_seconds=0.1)
    assert isinstance(engine, ReportsChanges)
    reported: list[ResourceKey] = []
    engine.subscribe(reported.append)
    try:
        wait_for(lambda: engine.poller._seen is not None, timeout=10, what="the first listing")
        ref = engine.submit(request_for(tmp_path))
        wait_for(lambda: ResourceKey("ml", "bbc-asha") in reported, timeout=10, what="submitted experiment reported")
        lists_before = sum(1 for m, p in cluster_det_master.requests if m == "GET" and p == "/api/v1/experiments")
        reported.clear()
        time.sleep(0.5)
        assert reported == []  # nothing moved, nothing reported
        cluster_det_master.run_trials(int(ref.id), progress=0.5)
        wait_for(lambda: reported == [ResourceKey("ml", "bbc-asha")], timeout=10, what="progress reported")
        reported.clear()
        cluster_det_master.complete(int(ref.id), accuracy)
        wait_for(lambda: ResourceKey("ml", "bbc-asha") in reported, timeout=10, what="completion reported")
    finally:
        engine.close()
    lists = sum(1 for m, p in cluster_det_master.requests if m == "GET" and p == "/api/v1/experiments")
    trial_reads = sum(1 for m, p in cluster_det_master.requests if p.endswith("/trials"))
    assert lists > lists_before and trial_reads == 0  # listing only: no per-experiment polling
