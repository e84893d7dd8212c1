"""Where a ModelVersion's evaluation (and compression) runs: never in the operator.

`Evaluator.ensure(request)` starts the evaluation once and answers its state; when it has
finished, the record the reconciler publishes (`metrics`, `confusion`, `classNames`,
`evaluation`, `compressed`). Two evaluators:

- `LocalEvaluator` (embedded platform): child processes of the operator's machine, as before
  (`cdl.quality.evaluation`, `cdl.quality.compression`), followed by the background job runner;
- `JobEvaluator` (cluster): a Kubernetes Job from the training image running
  `python3 -m cdl.runtime.assess` under a service account that can read nothing
  (docs/cluster-path.md, section 3). The Job writes its result to the artifact store; the
  operator reads that JSON and, for compression, the variant archive (data, never code).
  The Job is created through `JobLauncher`, which the controller implements with the Kubernetes
  client: this module only builds the manifest.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cdl.engines.base import DataRef, JobState
from cdl.engines.settings import EvaluationJobSettings
from cdl.errors import PermanentEngineError

COMMAND = ["python3", "-m", "cdl.runtime.assess"]
LABEL_RESOURCE = "cdl.dev/resource"
MANAGED_BY = "app.kubernetes.io/managed-by"
CONTAINER = "evaluate"


@dataclass
class EvaluationRequest:
    """One evaluation of one ModelVersion package (and its compression)."""

    job_id: str  # stable per ModelVersion spec: a restarted operator finds the same job
    namespace: str
    resource: str  # namespace/name of the ModelVersion
    package_uri: str
    package_sha256: str
    package_dir: Path | None  # the operator's unpacked copy (embedded platform)
    entrypoint: str
    data: DataRef
    compression: str = "none"
    image: str | None = None
    variant_key: str = ""
    store_variant: Callable[[Path], Any] | None = None
    timeout: float = 1800.0


@dataclass
class EvaluationOutcome:
    state: JobState
    record: dict[str, Any] | None = None
    error: str = ""
    details: dict[str, Any] = field(default_factory=dict)


class Evaluator(Protocol):
    name: str
    needs_local_copies: bool

    def ensure(self, request: EvaluationRequest) -> EvaluationOutcome: ...


class JobLauncher(Protocol):
    """The little of the Kubernetes API an evaluation Job needs (the controller implements it)."""

    def create_job(self, namespace: str, manifest: dict[str, Any]) -> None:
        """Create the Job; one that already exists is left as it is."""

    def job_state(self, namespace: str, name: str) -> tuple[JobState, str] | None:
        """(state, message) of the Job, or None when there is none."""


def record_from(evaluation: Any, compressed: dict[str, Any] | None) -> dict[str, Any]:
    """What the reconciler publishes, from an EvaluationResult and the compression comparison."""
    return {"metrics": evaluation.metrics, "confusion": evaluation.confusion, "classNames": evaluation.class_names,
            "evaluation": evaluation.wire(), **({"compressed": compressed} if compressed else {})}


# --------------------------------------------------------------------------- embedded platform


class LocalEvaluator:
    """Child processes on the operator's machine, followed by the background job runner."""

    name = "local"
    # Runs on the operator's machine: the reconciler hands it local copies of the package and of
    # the data (the data engine copies a commit that has no path, e.g. Pachyderm's).
    needs_local_copies = True

    def __init__(self, jobs: Any) -> None:
        self.jobs = jobs

    def ensure(self, request: EvaluationRequest) -> EvaluationOutcome:
        from cdl.quality.evaluation import evaluate_package

        if request.data.path is None:
            raise PermanentEngineError(
                f"evaluation of {request.resource}: the data {request.data.repo}@{request.data.commit[:12]} has no "
                "local copy; evaluate it with the cluster evaluator (engines.Evaluation: kubernetes)")
        assert request.package_dir is not None
        data_dir = Path(request.data.path)

        def work() -> dict[str, Any]:
            out = evaluate_package(request.package_dir, request.entrypoint, data_dir, timeout=request.timeout)
            compressed = None
            if request.compression == "dynamic-int8":
                from cdl.quality.compression import compress_and_evaluate

                compressed = compress_and_evaluate(request.package_dir, request.entrypoint, data_dir,
                                                   method="dynamic-int8", original=out,
                                                   store_variant=request.store_variant)
            return record_from(out, compressed)

        job = self.jobs.ensure(request.job_id, work)
        return EvaluationOutcome(job.state, job.result if job.state.finished else None, job.error or "")


# --------------------------------------------------------------------------- cluster


def job_name(job_id: str) -> str:
    return "cdl-eval-" + hashlib.sha256(job_id.encode()).hexdigest()[:12]


def job_environment(request: EvaluationRequest, settings: EvaluationJobSettings, result_uri: str,
                    variant_uri: str) -> dict[str, str]:
    """The pod's plain environment: everything `cdl.runtime.assess` reads (no secret values)."""
    env = {
        "CDL_PACKAGE_URI": request.package_uri,
        "CDL_PACKAGE_SHA256": request.package_sha256,
        "CDL_EVAL_ENTRYPOINT": request.entrypoint,
        "CDL_DATA_REPO": request.data.repo,
        "CDL_DATA_COMMIT": request.data.commit,
        "CDL_COMPRESSION": request.compression,
        "CDL_RESULT_URI": result_uri,
        "CDL_MODEL_VERSION": request.resource,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    data_uri = request.data.uri or (Path(request.data.path).as_uri() if request.data.path else None)
    if data_uri is None:
        raise PermanentEngineError(f"evaluation of {request.resource}: the data {request.data.repo}@"
                                   f"{request.data.commit[:12]} has no location an evaluation Job can read")
    env["CDL_DATA_URI"] = data_uri
    if request.compression != "none":
        env["CDL_VARIANT_URI"] = variant_uri
    if settings.s3_endpoint:
        env["CDL_S3_ENDPOINT"] = settings.s3_endpoint
    if settings.pachd_address:
        env["CDL_PACHD_ADDRESS"] = settings.pachd_address
    return env


def evaluation_job(request: EvaluationRequest, settings: EvaluationJobSettings, result_uri: str,
                   variant_uri: str) -> dict[str, Any]:
    """The batch/v1 Job that evaluates one package (docs/cluster-path.md, section 3)."""
    image = request.image or settings.image
    if not image:
        raise PermanentEngineError(f"evaluation of {request.resource}: no image: set the Experiment's "
                                   "spec.model.image or the operator's cluster.evaluation.image")
    name = job_name(request.job_id)
    labels = {MANAGED_BY: "cdl", LABEL_RESOURCE: request.resource.replace("/", ".")}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": list(COMMAND),
        "workingDir": "/tmp/cdl-evaluation",
        "env": [{"name": k, "value": v} for k, v in sorted(job_environment(request, settings, result_uri,
                                                                          variant_uri).items())],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if settings.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": settings.credentials_secret}}]
    resources: dict[str, Any] = {}
    if settings.cpu:
        resources.setdefault("requests", {})["cpu"] = settings.cpu
    if settings.memory:
        resources.setdefault("requests", {})["memory"] = settings.memory
        resources.setdefault("limits", {})["memory"] = settings.memory
    if resources:
        container["resources"] = resources
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": settings.namespace or request.namespace, "labels": labels,
                     "annotations": {"cdl.dev/evaluation": request.job_id}},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": settings.deadline_seconds,
            "ttlSecondsAfterFinished": settings.ttl_seconds,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": settings.service_account,
                    "automountServiceAccountToken": False,
                    "containers": [container],
                    "volumes": [],
                },
            },
        },
    }


class JobEvaluator:
    """Evaluation as a Kubernetes Job; the result comes back through the artifact store."""

    name = "kubernetes"
    needs_local_copies = False  # the Job fetches the package and the data itself

    def __init__(self, launcher: JobLauncher, artifacts: Any, settings: EvaluationJobSettings) -> None:
        self.launcher = launcher
        self.artifacts = artifacts
        self.settings = settings

    def _result_key(self, request: EvaluationRequest) -> str:
        return f"{self.settings.result_prefix}/{job_name(request.job_id)}/result.json"

    def ensure(self, request: EvaluationRequest) -> EvaluationOutcome:
        name = job_name(request.job_id)
        key = self._result_key(request)
        namespace = self.settings.namespace or request.namespace
        found = self.launcher.job_state(namespace, name)
        if found is None:
            if self.artifacts.exists(key):  # finished earlier and the Job was cleaned up
                return self._read(request, key)
            variant_uri = self.artifacts.uri_for(request.variant_key) if request.variant_key else ""
            manifest = evaluation_job(request, self.settings, self.artifacts.uri_for(key), variant_uri)
            self.launcher.create_job(namespace, manifest)
            return EvaluationOutcome(JobState.PENDING, details={"job": name})
        state, message = found
        if not state.finished:
            return EvaluationOutcome(state, details={"job": name})
        if self.artifacts.exists(key):
            return self._read(request, key)
        return EvaluationOutcome(JobState.FAILED, error=f"evaluation Job {namespace}/{name} ended "
                                 f"({message or state.value}) without writing {self.artifacts.uri_for(key)}")

    def _read(self, request: EvaluationRequest, key: str) -> EvaluationOutcome:
        from cdl.quality.evaluation import result_from_body

        body = json.loads(self.artifacts.get_bytes(key))
        if "error" in body:
            trace = "\n".join((body.get("traceback") or "").strip().splitlines()[-15:])
            return EvaluationOutcome(JobState.FAILED, error=f"{body['error']}" + (f"\n{trace}" if trace else ""))
        original = result_from_body(body["evaluation"], request.entrypoint)
        compressed = None
        if body.get("compression"):
            compressed = self._compressed(request, body["compression"], original)
        return EvaluationOutcome(JobState.SUCCEEDED, record_from(original, compressed))

    def _compressed(self, request: EvaluationRequest, found: dict[str, Any], original: Any) -> dict[str, Any]:
        from cdl.quality.compression import CompressedPackage, comparison
        from cdl.quality.evaluation import result_from_body
        from cdl.runtime.package import unpack

        variant = result_from_body(found["evaluation"], request.entrypoint)
        info, archive = found["compress"], found["variant"]
        uri = archive["uri"]
        with tempfile.TemporaryDirectory(prefix="cdl-variant-") as tmp:
            package_dir = None
            if request.store_variant is not None:  # register it: the archive is data, nothing of it runs here
                local = Path(tmp) / "variant.tar.gz"
                self.artifacts.get_file(self.artifacts.key_for(uri), local, archive["sha256"])
                package_dir = unpack(local, Path(tmp) / "variant")
                stored = request.store_variant(package_dir)
                uri = getattr(stored, "artifact_uri", None) or uri
            compressed = CompressedPackage(
                package_dir=Path(package_dir or uri), method=found["method"],
                weights_bytes_original=int(info["weightsBytes"]["original"]),
                weights_bytes=int(info["weightsBytes"]["compressed"]),
                quantized_modules=list(info.get("quantizedModules") or []), loader=str(info.get("loader") or ""),
                archive=None, sha256=archive["sha256"], bytes=int(archive["bytes"]))
            out = comparison(compressed, original, variant, int(found.get("originalBytes") or 0), uri)
        out["packageDir"] = None
        return out
