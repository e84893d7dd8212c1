"""The cluster simulation runs what the cluster would run (cdl.simulation): a Determined trial
through Determined's own harness, a Pachyderm pipeline step from its image, a SeldonDeployment's
predictor under seldon-core-microservice, each driven through the cluster engine that would
drive the real thing, each container holding only what its image holds."""

from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdl.api.datapipeline import DataPipelineSpec
from cdl.api.experiment import ExperimentSpec
from cdl.engines.base import (
    DataRunRequest,
    JobState,
    ResourceKey,
    ServedModel,
    ServingRequest,
    TrainingRequest,
)
from cdl.engines.data.pachyderm import PachydermDataEngine
from cdl.engines.serving.seldon import SeldonServingEngine
from cdl.engines.settings import DeterminedSettings, PachydermSettings, SeldonSettings
from cdl.engines.training.determined import DeterminedTrainingEngine
from cdl.simulation import containers
from cdl.simulation.determined import FakeDeterminedMaster, TrialExecutor
from cdl.simulation.images import ImageBuilder
from cdl.simulation.pachd import FakePachd
from cdl.simulation.seldon import FakeSeldonController
from pipelines.text.clean import clean_text
from tests.fixtures.serving.build import NUMPY_PREDICTOR, build_package

ROOT = Path(__file__).resolve().parents[2]
LINREG = ROOT / "tests" / "fixtures" / "training" / "linreg"
TRAIN_IMAGE = "registry.example.com/cdl/bbc-train:0.1.0"
PIPELINES_IMAGE = "registry.example.com/cdl/pipelines:0.1.0"
PREDICTOR_IMAGE = "registry.example.com/cdl/predictor:0.1.0"
USER, PASSWORD = "cdl-operator", "Op3rator-pass"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> ImageBuilder:
    return ImageBuilder(ROOT, tmp_path_factory.mktemp("simulation"))


@pytest.fixture(scope="module")
def serving_images(tmp_path_factory: pytest.TempPathFactory, seldon_venv: Path) -> ImageBuilder:
    """The images, with the predictor's packages from the seldon environment, built (or brought up
    to date with its requirements) first."""
    return ImageBuilder(ROOT, tmp_path_factory.mktemp("serving-images"),
                        {"main": Path(sys.prefix), "seldon": seldon_venv})


def run_in(image: Any, code: str, tmp_path: Path) -> tuple[int, str]:
    container = containers.start("probe", image, ["python", "-c", code], {}, tmp_path / "probe", tmp_path / "probe.log")
    return container.wait(60), container.output()


# --------------------------------------------------------------------------- images


def test_an_image_holds_only_what_its_dockerfile_copies(serving_images: ImageBuilder, tmp_path: Path) -> None:
    images = serving_images
    train = images.image(TRAIN_IMAGE)
    code, out = run_in(train, "import cdl.runtime.trial, determined; import cdl.engines", tmp_path)
    assert code != 0 and "No module named 'cdl.engines'" in out  # the operator's code is not in a trial image
    code, out = run_in(images.image(PIPELINES_IMAGE), "import pipelines.text.clean; print('ok')", tmp_path)
    assert code == 0 and "ok" in out
    predictor = images.image(PREDICTOR_IMAGE)
    assert predictor.base_env.name == "seldon"  # seldon-core's pinned environment, not the operator's
    assert (predictor.path("/microservice") / "CdlPredictor.py").read_text().startswith("from cdl.runtime.serving")


# --------------------------------------------------------------------------- Determined


@pytest.fixture
def master(images: ImageBuilder, tmp_path: Path) -> Iterator[FakeDeterminedMaster]:
    if not containers.namespaces_available():
        pytest.skip("trial containers need a mount namespace (root or user namespaces)")
    executor = TrialExecutor(images, tmp_path / "trials", default_image=TRAIN_IMAGE)
    server = FakeDeterminedMaster(users={USER: PASSWORD}, executor=executor)
    server.start()
    yield server
    executor.stop()
    server.stop()


def training_request(tmp_path: Path, entrypoint: str) -> TrainingRequest:
    spec = ExperimentSpec.model_validate({
        "model": {"path": "model", "image": TRAIN_IMAGE, "entrypoint": entrypoint},
        "hyperparameters": {"lr": 0.1, "batch_size": 32},
        "searcher": {"name": "single", "metric": "validation_loss", "maxLength": {"epochs": 2}},
        "seed": 3,
    })
    model = tmp_path / "model"
    shutil.copytree(LINREG, model, ignore=shutil.ignore_patterns("__pycache__"))
    return TrainingRequest(ResourceKey("ml", "linreg", "uid-7"), spec, 1, 1, model, None, {})


def wait_training(engine: DeterminedTrainingEngine, ref: Any, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = engine.status(ref)
        if status.state.finished:
            return status
        time.sleep(1)
    raise AssertionError(f"experiment {ref.id} did not finish: {status}")


def test_a_determined_trial_trains_through_the_harness_and_reports_to_the_master(
        master: FakeDeterminedMaster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDL_TEST_SECRET", "the operator's own setting")  # must not reach the trial
    settings = DeterminedSettings.from_env({}, master=master.url, user=USER, password=PASSWORD,
                                           checkpoint_storage=(tmp_path / "checkpoints").as_uri())
    engine = DeterminedTrainingEngine(settings)

    ref = engine.submit(training_request(tmp_path, "model_def:LinRegTrial"))
    status = wait_training(engine, ref)

    assert status.state == JobState.SUCCEEDED, engine.logs(ref)[-3000:]
    (trial,) = status.trials
    assert trial.length_done == 2  # two epochs, as Determined's Trainer counted them
    # Real training: SGD on y = Xw* got the validation loss well under the data's variance.
    assert trial.metrics["validation_loss"] < 0.5
    assert trial.metrics["env_secret_visible"] == 0.0
    best = status.best
    assert best is not None and best.checkpoint is not None
    checkpoint = Path(best.checkpoint.uri.removeprefix("file://"))
    assert (checkpoint / "state_dict.pth").is_file() and (checkpoint / "metadata.json").is_file()
    # The model definition was uploaded and unpacked by prep_container (its copy is in the checkpoint).
    assert (checkpoint / "code" / "model_def.py").is_file()
    logs = engine.logs(ref)
    assert "determined.exec.launch" in logs or "Launching" in logs
    assert "report_validation_metrics" in logs


def test_a_trial_that_crashes_fails_the_experiment_with_its_traceback(
        master: FakeDeterminedMaster, tmp_path: Path) -> None:
    settings = DeterminedSettings.from_env({}, master=master.url, user=USER, password=PASSWORD,
                                           checkpoint_storage=(tmp_path / "checkpoints").as_uri())
    engine = DeterminedTrainingEngine(settings)

    ref = engine.submit(training_request(tmp_path, "model_def:BrokenTrial"))
    status = wait_training(engine, ref)

    assert status.state == JobState.FAILED
    assert "trial" in (status.message or "")
    assert "Traceback" in engine.logs(ref)


def test_asha_stops_a_trial_that_is_not_promoted_past_its_rung(master: FakeDeterminedMaster, tmp_path: Path) -> None:
    from cdl.engines.training.determined import experiment_config

    settings = DeterminedSettings.from_env({}, master=master.url, user=USER, password=PASSWORD,
                                           checkpoint_storage=(tmp_path / "checkpoints").as_uri())
    spec = {
        "model": {"path": "model", "image": TRAIN_IMAGE, "entrypoint": "model_def:LinRegTrial"},
        "hyperparameters": {"lr": {"type": "categorical", "vals": [0.2, 0.0005]}, "batch_size": 32,
                            "sleep_per_batch": 0.05},  # epochs long enough for the preemption to arrive
        "searcher": {"name": "asha", "metric": "validation_loss", "smallerIsBetter": True, "maxTrials": 2,
                     "maxConcurrentTrials": 1,
                     "maxLength": {"epochs": 4}, "asha": {"divisor": 2, "maxRungs": 2}},
    }
    # A seed whose first trial learns (lr 0.2) and whose second hardly moves (lr 0.0005): the
    # second reaches the first rung (2 epochs) behind the first and is stopped.
    for seed in range(50):
        request = training_request(tmp_path / str(seed), "model_def:LinRegTrial")
        request.spec = ExperimentSpec.model_validate({**spec, "seed": seed})
        drawn = [t["lr"] for t in master._draw(experiment_config(request.spec, None, {}, settings, request.key))]
        if drawn == [0.2, 0.0005]:
            break
    engine = DeterminedTrainingEngine(settings)

    ref = engine.submit(request)
    status = wait_training(engine, ref, timeout=300)

    assert status.state == JobState.SUCCEEDED, engine.logs(ref)[-3000:]
    first, second = sorted(status.trials, key=lambda t: int(t.id))
    assert first.length_done == 4 and first.stop_reason is None
    # Preempted by the master after its rung-0 validation; it stops at its next boundary check.
    assert second.length_done in (2, 3) and second.stop_reason == "asha: not promoted"
    assert status.best is not None and status.best.id == first.id


# --------------------------------------------------------------------------- Pachyderm


@pytest.fixture
def pachd(images: ImageBuilder, tmp_path: Path) -> Iterator[FakePachd]:
    server = FakePachd(tmp_path / "pachd", images=images)
    server.start()
    yield server
    server.stop()


def pipeline_spec(source: Path, command: list[str]) -> DataPipelineSpec:
    return DataPipelineSpec.model_validate({
        "engine": "pachyderm",
        "source": {"uri": source.as_uri(), "format": "files", "labelsFrom": "directory"},
        "split": {"test": 0.2, "seed": 42, "stratify": True},
        "steps": [{"name": "clean", "image": PIPELINES_IMAGE, "glob": "/*/*", "command": command}],
    })


def wait_run(engine: PachydermDataEngine, key: ResourceKey, run_id: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = engine.run_status(key, run_id)
        if status.state.finished:
            return status
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish: {status}")


def test_a_pipeline_step_runs_from_its_image_and_commits_pfs_out(pachd: FakePachd, tmp_path: Path) -> None:
    from pachyderm_sdk import Client
    from pachyderm_sdk.api import pfs

    source = tmp_path / "news"
    for label in ("business", "sport"):
        (source / label).mkdir(parents=True)
        for i in range(5):
            (source / label / f"{i}.txt").write_text(f"  {label.upper()}   Story\t{i}  \n\n\nwith   SPACES ")
    engine = PachydermDataEngine(PachydermSettings.from_env({}, host="127.0.0.1", port=pachd.port))
    key = ResourceKey("ml", "news", "uid-1")

    ref = engine.start_run(DataRunRequest(key, pipeline_spec(source, ["python", "-m", "pipelines.text.clean",
                                                                             "--lowercase"]), 1))
    status = wait_run(engine, key, ref.id)

    assert status.state == JobState.SUCCEEDED, status.message
    clean = status.outputs["clean"]
    client = Client("127.0.0.1", pachd.port)
    commit = pfs.Commit.from_uri(clean.uri.removeprefix("pfs://"))
    text = b"".join(c.value for c in client.pfs.get_file(
        file=pfs.File(commit=commit, path="/business/0.txt"))).decode()
    original = (source / "business" / "0.txt").read_text()
    assert text == clean_text(original, lowercase=True) and text != original  # the step's output in /pfs/out


def test_a_step_needing_code_its_image_lacks_fails_the_run(pachd: FakePachd, tmp_path: Path) -> None:
    source = tmp_path / "news"
    (source / "sport").mkdir(parents=True)
    (source / "sport" / "0.txt").write_text("a story")
    engine = PachydermDataEngine(PachydermSettings.from_env({}, host="127.0.0.1", port=pachd.port))
    key = ResourceKey("ml", "other", "uid-2")

    # The operator's code is on this machine, but not in the pipelines image.
    ref = engine.start_run(DataRunRequest(key, pipeline_spec(source, ["python", "-m", "cdl.engines.base"]), 1))
    status = wait_run(engine, key, ref.id)

    assert status.state == JobState.FAILED


# --------------------------------------------------------------------------- Seldon


@pytest.fixture
def seldon(cluster_seldon_crd: Any, k8s_client: Any, serving_images: ImageBuilder,
           tmp_path: Path) -> Iterator[FakeSeldonController]:
    controller = FakeSeldonController(k8s_client, images=serving_images, work_dir=tmp_path / "seldon")
    controller.start()
    yield controller
    controller.stop()


def test_a_seldon_deployment_serves_predictions_through_seldon_core(
        seldon: FakeSeldonController, k8s_client: Any, fresh_namespace: str, tmp_path: Path) -> None:
    package = build_package(tmp_path / "packages", "toy", 1, seed=0, torch_checkpoint=False)
    settings = SeldonSettings.from_env({}, predictor_image=PREDICTOR_IMAGE, gateway_url=seldon.gateway_url)
    engine = SeldonServingEngine(settings, api=k8s_client)
    model = ServedModel("toy-1", package.uri, package.sha256, NUMPY_PREDICTOR)
    key = ResourceKey(fresh_namespace, "toy")

    engine.apply(ServingRequest(key, 1, [model], replicas=1))
    deadline = time.monotonic() + 180
    status = engine.status(key)
    while status.state not in ("Available", "Failed") and time.monotonic() < deadline:
        time.sleep(0.5)
        status = engine.status(key)

    assert status.state == "Available", status.message
    body = json.dumps({"data": {"ndarray": [[4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 4.0, 0.0]]}}).encode()
    request = urllib.request.Request(status.url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    assert len(answer["data"]["ndarray"]) == 2
    assert set(answer["data"]["ndarray"]) <= {"alpha", "beta", "gamma"}
    assert answer["meta"]  # seldon-core's envelope: it went through the microservice

    engine.delete(key)


# --------------------------------------------------------------------------- Kubernetes Jobs


@pytest.fixture
def job_runner(k8s_client: Any, images: ImageBuilder, tmp_path: Path) -> Iterator[Any]:
    from cdl.simulation.jobs import JobRunner

    runner = JobRunner(k8s_client, images, tmp_path / "jobs")
    runner.start()
    yield runner
    runner.stop()


def job_body(name: str, code: str) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": {
        "backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": TRAIN_IMAGE, "command": ["python3", "-c", code],
            "env": [{"name": "CDL_STEP", "value": "assess"},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "store", "key": "token"}}}]}]}}}}


def wait_job(k8s_client: Any, namespace: str, name: str, timeout: float = 60) -> dict[str, Any]:
    from kubernetes import client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.BatchV1Api(k8s_client).read_namespaced_job(name, namespace)
        kinds = {c.type for c in (job.status.conditions or []) if c.status == "True"}
        if kinds & {"Complete", "Failed"}:
            return k8s_client.sanitize_for_serialization(job)
        time.sleep(0.2)
    raise AssertionError(f"Job {namespace}/{name} did not finish")


def test_a_job_runs_its_pod_command_with_the_pods_env_from_its_image(
        job_runner: Any, k8s_client: Any, fresh_namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes import client

    monkeypatch.setenv("CDL_TEST_SECRET", "the operator's own setting")
    core, batch = client.CoreV1Api(k8s_client), client.BatchV1Api(k8s_client)
    core.create_namespaced_secret(fresh_namespace, {"metadata": {"name": "store"}, "stringData": {"token": "t0k3n"}})
    show = ("import os, cdl.runtime.pfs; print('token', os.environ['TOKEN'], os.environ['CDL_STEP'], "
            "'CDL_TEST_SECRET' in os.environ)")
    batch.create_namespaced_job(fresh_namespace, job_body("shows-env", show))
    batch.create_namespaced_job(fresh_namespace, job_body("needs-operator-code", "import cdl.engines.base"))

    done = wait_job(k8s_client, fresh_namespace, "shows-env")
    assert done["status"]["succeeded"] == 1 and done["status"]["completionTime"]
    assert "token t0k3n assess False" in job_runner.logs(fresh_namespace, "shows-env")
    failed = wait_job(k8s_client, fresh_namespace, "needs-operator-code")
    assert failed["status"]["failed"] == 1
    assert [c["reason"] for c in failed["status"]["conditions"] if c["type"] == "Failed"] == ["BackoffLimitExceeded"]
    assert "No module named 'cdl.engines'" in job_runner.logs(fresh_namespace, "needs-operator-code")
