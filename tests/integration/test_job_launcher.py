"""The controller's side of evaluation Jobs: the manifest cdl builds is accepted by a
Kubernetes API server (the devcluster, with its schema checks), created once, and followed by its
conditions."""

from __future__ import annotations

from typing import Any

from cdl.controller.cluster import KubeClusterView
from cdl.engines.base import DataRef, JobState
from cdl.engines.settings import EvaluationJobSettings
from cdl.quality.evaluation_job import EvaluationRequest, evaluation_job, job_name


def test_the_evaluation_job_is_created_once_and_followed_by_its_conditions(k8s_client: Any, kubectl: Any) -> None:
    kubectl("create", "namespace", "eval-jobs", check=False)
    view = KubeClusterView(k8s_client)
    request = EvaluationRequest("eval-ml-v1-abc", "eval-jobs", "eval-jobs/news-v1", "file:///artifacts/p.tar.gz",
                                "a" * 64, None, "evaluate:evaluate", DataRef("news-test", "c1", uri="pfs://ml/t@master=c1"),
                                image="registry.example.com/cdl/train:0.1.0")
    manifest = evaluation_job(request, EvaluationJobSettings.from_env({}), "file:///artifacts/result.json", "")
    name = job_name(request.job_id)
    assert view.job_state("eval-jobs", name) is None
    view.create_job("eval-jobs", manifest)
    view.create_job("eval-jobs", manifest)  # a second pass finds it: no error, no second Job
    assert view.job_state("eval-jobs", name) == (JobState.PENDING, "")
    stored = view.batch.read_namespaced_job(name, "eval-jobs")
    pod = stored.spec.template.spec
    assert pod.service_account_name == "cdl-workload" and pod.automount_service_account_token is False
    view.batch.patch_namespaced_job_status(name, "eval-jobs", {"status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer"}]}})
    assert view.job_state("eval-jobs", name) == (JobState.FAILED, "DeadlineExceeded: Job was active longer")
