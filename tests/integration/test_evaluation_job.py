"""Evaluation never runs in the operator: on a cluster it is a Kubernetes Job from the training
image (docs/cluster-path.md, section 3), and Pachyderm data works for evaluation and for the
drift baseline.

The launcher here does what the cluster simulation (and a kubelet) does with the Job: it runs the
container's command with exactly the container's environment in an empty working directory."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cdl.engines.base import DataRef, JobState, RegisteredModel
from cdl.engines.jobs import JobRunner
from cdl.engines.settings import EvaluationJobSettings, PachydermSettings
from cdl.quality.evaluation_job import (
    EvaluationRequest,
    JobEvaluator,
    LocalEvaluator,
    job_name,
)
from tests.unit.test_reconcile_chain import world  # noqa: E402,F401 - the reconcile fixture

VENV_BIN = str(Path(os.sys.executable).parent)  # "python3" of the training image


class RunningLauncher:
    """Runs each created Job's single container like a pod: its command, its env, an empty dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.jobs: dict[str, dict[str, Any]] = {}
        self.states: dict[str, tuple[JobState, str]] = {}
        self.logs: dict[str, str] = {}

    def create_job(self, namespace: str, manifest: dict[str, Any]) -> None:
        name = manifest["metadata"]["name"]
        if name in self.jobs:
            return
        self.jobs[name] = manifest
        pod = manifest["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        env["PATH"] = f"{VENV_BIN}:/usr/bin:/bin"  # the image's PATH; nothing of the operator's environment
        work = self.root / name
        work.mkdir(parents=True)
        done = subprocess.run(container["command"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        self.logs[name] = done.stderr
        self.states[name] = ((JobState.SUCCEEDED, "") if done.returncode == 0 else
                             (JobState.FAILED, f"BackoffLimitExceeded: exit {done.returncode}"))

    def job_state(self, namespace: str, name: str) -> tuple[JobState, str] | None:
        return self.states.get(name)


def put_commit(client: Any, project: str, repo_name: str, files: Path) -> str:
    from pachyderm_sdk.api import pfs

    proj = pfs.Project(name=project)
    client.pfs.create_project(project=proj)
    repo = pfs.Repo(name=repo_name, type="user", project=proj)
    client.pfs.create_repo(repo=repo)
    with client.pfs.commit(branch=pfs.Branch(repo=repo, name="master")) as commit:
        for path in sorted(files.rglob("*")):
            if path.is_file():
                commit.put_file_from_bytes(path=f"/{path.relative_to(files).as_posix()}", data=path.read_bytes())
    return commit.id


@pytest.fixture
def pfs_test_data(cluster_pachd: Any, registry_data: Any) -> tuple[DataRef, Any]:
    from pachyderm_sdk import Client

    client = Client("127.0.0.1", cluster_pachd.port)
    commit = put_commit(client, "ml", "blobs-test", registry_data.test)
    ref = DataRef("blobs-test", commit, files=registry_data.examples, uri=f"pfs://ml/blobs-test@master={commit}")
    return ref, client


def request_for(registered: RegisteredModel, data: DataRef, **fields: Any) -> EvaluationRequest:
    return EvaluationRequest(
        job_id="eval-ml-blobs-v1-abc", namespace="ml", resource="ml/blobs-v1", package_uri=registered.artifact_uri,
        package_sha256=registered.sha256, package_dir=None, entrypoint="evaluate:evaluate", data=data,
        image="registry.example.com/cdl/train:0.1.0", **fields)


@pytest.mark.slow
def test_the_evaluation_job_runs_from_its_spec_alone_on_pachyderm_data(
        registry_registered: Callable[..., RegisteredModel], registry_engine: Any, registry_store: Any,
        pfs_test_data: tuple[DataRef, Any], cluster_pachd: Any, tmp_path: Path) -> None:
    registered = registry_registered(1)
    data, _ = pfs_test_data
    settings = EvaluationJobSettings.from_env({}, pachd_address=f"grpc://127.0.0.1:{cluster_pachd.port}")
    launcher = RunningLauncher(tmp_path / "pods")
    evaluator = JobEvaluator(launcher, registry_store, settings)
    stored: list[Path] = []

    def store_variant(variant: Path) -> Any:
        stored.append(variant)
        return registry_engine.store_variant("blobs", 1, "dynamic-int8", variant)

    request = request_for(registered, data, compression="dynamic-int8",
                          variant_key="models/blobs/1/dynamic-int8/package.tar.gz", store_variant=store_variant)
    first = evaluator.ensure(request)
    name = job_name(request.job_id)
    assert first.state == JobState.PENDING and list(launcher.jobs) == [name]

    pod = launcher.jobs[name]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "cdl-workload" and pod["automountServiceAccountToken"] is False
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["CDL_DATA_URI"] == data.uri and env["CDL_PACKAGE_SHA256"] == registered.sha256
    assert not {k for k in env if any(w in k for w in ("SECRET", "PASSWORD", "TOKEN", "DATABASE"))}
    assert pod["containers"][0]["command"] == ["python3", "-m", "cdl.runtime.assess"]

    done = evaluator.ensure(request)
    assert done.state == JobState.SUCCEEDED, (done.error, launcher.logs[name][-3000:])
    record = done.record
    assert record["metrics"]["accuracy"] >= 0.9
    assert record["classNames"] == ["circle", "square", "triangle"]
    assert sum(map(sum, record["confusion"])) == data.files
    compressed = record["compressed"]
    assert compressed["method"] == "dynamic-int8" and compressed["sizeRatio"] < 0.5
    assert compressed["compressed"]["metrics"]["accuracy"] >= 0.85
    assert stored and registry_store.exists("models/blobs/1/dynamic-int8/package.tar.gz")
    assert evaluator.ensure(request).record == record  # read again, not run again
    assert len(launcher.jobs) == 1


@pytest.mark.slow
def test_a_package_that_is_not_the_registered_one_fails_the_job_with_the_reason(
        registry_registered: Callable[..., RegisteredModel], registry_store: Any,
        pfs_test_data: tuple[DataRef, Any], cluster_pachd: Any, tmp_path: Path) -> None:
    registered = registry_registered(1)
    data, _ = pfs_test_data
    settings = EvaluationJobSettings.from_env({}, pachd_address=f"grpc://127.0.0.1:{cluster_pachd.port}")
    evaluator = JobEvaluator(RunningLauncher(tmp_path / "pods"), registry_store, settings)
    request = request_for(registered, data)
    request.package_sha256 = "f" * 64
    evaluator.ensure(request)
    outcome = evaluator.ensure(request)
    assert outcome.state == JobState.FAILED and "sha256 mismatch" in outcome.error


@pytest.mark.slow
def test_pachyderm_data_is_evaluated_and_counted_on_the_embedded_platform(
        registry_registered: Callable[..., RegisteredModel], pfs_test_data: tuple[DataRef, Any],
        registry_data: Any, tmp_path: Path) -> None:
    """DataRef.path is None for Pachyderm outputs: the data engine copies the commit for the
    local evaluator, and counts the labels (the drift baseline) from pachd."""
    from cdl.engines.data.pachyderm import PachydermDataEngine

    registered = registry_registered(1)
    data, client = pfs_test_data
    engine = PachydermDataEngine(PachydermSettings.from_env({}), client=client, work_dir=tmp_path / "pach")
    assert engine.label_counts(data) == {"circle": 10, "square": 10, "triangle": 10}
    local = engine.ensure_local(data)
    assert local.path and sorted(p.name for p in Path(local.path).iterdir()) == ["circle", "square", "triangle"]
    request = request_for(registered, local)
    request.package_dir = registered.package_dir
    evaluator = LocalEvaluator(JobRunner(tmp_path / "jobs"))
    outcome = evaluator.ensure(request)
    while not outcome.state.finished:
        time.sleep(0.2)
        outcome = evaluator.ensure(request)
    assert outcome.state == JobState.SUCCEEDED and outcome.record["metrics"]["accuracy"] >= 0.9


@pytest.mark.slow
def test_the_reconciler_evaluates_through_a_job_and_gates_on_its_result(
        world: Any, registry_registered: Callable[..., RegisteredModel],  # noqa: F811 - the fixture
        registry_store: Any, registry_data: Any, tmp_path: Path) -> None:
    """The ModelVersion reconciler with `engines.Evaluation: kubernetes`: it creates the Job, and
    gates on what the Job wrote; the team's evaluate() never runs in the operator process."""
    import copy

    from cdl.api.modelversion import ModelVersionSpec
    from cdl.reconcile.modelversion import spec_hash
    from tests.integration.test_operator_core import dpl, mv

    cluster, ctx, data, *_ = world
    registered = registry_registered(1)
    cluster.add(dpl())
    for _ in range(3):
        cluster.reconcile(ctx, "DataPipeline", "news")
    data.resolve = lambda key, output, commit="": DataRef("news-test", "c-test", files=registry_data.examples,
                                                          path=str(registry_data.test))
    launcher = RunningLauncher(tmp_path / "pods")
    settings = EvaluationJobSettings.from_env({}, image="registry.example.com/cdl/train:0.1.0")
    ctx.config.engines["Evaluation"] = "kubernetes"
    ctx.engines._built[("evaluation", "kubernetes")] = JobEvaluator(launcher, registry_store, settings)
    body = mv()
    body["spec"]["evaluation"] = {"data": {"pipelineRef": {"name": "news"}, "output": "test"},
                                  "gates": [{"metric": "accuracy", "min": 0.9}]}
    spec = ModelVersionSpec.model_validate(copy.deepcopy(body["spec"]))
    body["status"] = {"phase": "Evaluating", "version": 1, "specHash": spec_hash(spec),
                      "artifact": {"uri": registered.artifact_uri, "sha256": registered.sha256},
                      "registry": {"engine": "local"}, "lineage": {"experiment": "train"}}
    cluster.add(body)
    result, _ = cluster.reconcile(ctx, "ModelVersion", "clf-v1")
    assert result.status["phase"] == "Evaluating" and len(launcher.jobs) == 1
    assert not (ctx.config.data_dir / "packages").exists()  # the operator did not even unpack the package
    cluster.reconcile(ctx, "ModelVersion", "clf-v1")
    status = cluster.get("ModelVersion", "ml", "clf-v1")["status"]
    assert status["phase"] == "Ready", status.get("message")
    assert status["evaluation"]["passed"] is True and status["evaluation"]["metrics"]["accuracy"] >= 0.9
    (job,) = launcher.jobs.values()
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/cdl/train:0.1.0"
