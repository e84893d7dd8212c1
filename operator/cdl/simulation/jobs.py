"""Kubernetes Jobs run as the cluster would run them: the Job controller and kubelet of the simulation.

It watches `batch/v1` Jobs on the API server (all namespaces) and runs each new Job's pod: the
first container of its template, from its image (images.py), with its `command`/`args` (else the
image's ENTRYPOINT/CMD), exactly its environment as the kubelet resolves it (`value`,
`secretKeyRef`, `configMapKeyRef`, `envFrom`), in its `workingDir` when the image has it, else an
empty directory of its own. The Job's status follows Kubernetes: `startTime` and `active: 1` when
the pod starts; then `succeeded: 1` with a `Complete` condition, or `failed` with a `Failed`
condition (`BackoffLimitExceeded` after `backoffLimit + 1` tries, `DeadlineExceeded` past
`activeDeadlineSeconds`), and `completionTime`. `logs(namespace, name)` returns the pod's output.

Not done: parallelism/completions above 1, suspend, pod objects (`kubectl logs` on the Job),
init containers, volumes other than the image's own files, ttlSecondsAfterFinished.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cdl.simulation import containers
from cdl.simulation.watching import follow

DEFAULT_BACKOFF_LIMIT = 6


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class JobRunner:
    """`start()` watches Jobs; `stop()` ends the watch and every running pod."""

    def __init__(self, api_client: Any, images: Any, work_dir: Path) -> None:
        from kubernetes import client

        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.images = images
        self.work_dir = Path(work_dir)
        self.started: set[str] = set()  # Job uids
        self.running: dict[str, containers.Container] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="simulation-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
        for container in list(self.running.values()):
            container.stop(5)

    def logs(self, namespace: str, name: str) -> str:
        """The output of the Job's pods, oldest try first."""
        base = self.work_dir / namespace / name
        return "".join(p.read_text(errors="replace") for p in sorted(base.glob("try-*.log")))

    def _watch(self) -> None:
        follow(self._stop, self.batch.list_job_for_all_namespaces, handle=self._event,
               version_of=lambda job: job.metadata.resource_version)

    def _event(self, kind: str, job: Any) -> None:
        if kind == "ADDED" and job.metadata.uid not in self.started and not (job.status and job.status.start_time):
            self.started.add(job.metadata.uid)
            threading.Thread(target=self._run, args=(job,), daemon=True, name=f"job-{job.metadata.name}").start()
        elif kind == "DELETED":
            container = self.running.pop(job.metadata.uid, None)
            if container is not None:
                container.stop(5)

    def _status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.batch.patch_namespaced_job_status(name, namespace, {"status": status})
        except ApiException as exc:
            if exc.status != 404:  # a Job deleted while it ran
                raise

    def _run(self, job: Any) -> None:
        meta, spec = job.metadata, job.spec
        namespace, name = meta.namespace, meta.name
        started = _now()
        self._status(namespace, name, {"startTime": started, "active": 1})
        pod = self.batch.api_client.sanitize_for_serialization(spec.template.spec)
        container = pod["containers"][0]
        tries = (spec.backoff_limit if spec.backoff_limit is not None else DEFAULT_BACKOFF_LIMIT) + 1
        deadline = time.monotonic() + spec.active_deadline_seconds if spec.active_deadline_seconds else None
        failed, reason, message = 0, "", ""
        for attempt in range(tries):
            code, timed_out = self._run_pod(namespace, name, meta.uid, container, attempt, deadline)
            if code == 0:
                self._status(namespace, name, {
                    "active": 0, "succeeded": 1, "failed": failed, "completionTime": _now(), "ready": 0,
                    "conditions": [_condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number "
                                              "of succeeded pods"),
                                   _condition("Complete", "CompletionsReached", "Reached expected number of "
                                              "succeeded pods")]})
                return
            failed += 1
            if timed_out:
                reason, message = "DeadlineExceeded", "Job was active longer than specified deadline"
                break
            reason, message = "BackoffLimitExceeded", "Job has reached the specified backoff limit"
            if self._stop.is_set():
                break
        self._status(namespace, name, {
            "active": 0, "failed": failed, "ready": 0,
            "conditions": [_condition("FailureTarget", reason, message), _condition("Failed", reason, message)]})

    def _run_pod(self, namespace: str, name: str, uid: str, container: dict[str, Any], attempt: int,
                 deadline: float | None) -> tuple[int, bool]:
        base = self.work_dir / namespace / name
        log_path = base / f"try-{attempt}.log"
        try:
            image = self.images.image(container["image"])
            env = containers.pod_env(container, namespace, self.core)
            workdir = container.get("workingDir")
            cwd = image.path(workdir) if workdir and image.path(workdir).is_dir() else base / f"pod-{attempt}"
            running = containers.start(f"{name}-{attempt}", image, containers.pod_command(container, image), env, cwd,
                                       log_path)
        except Exception as exc:  # noqa: BLE001 - a pod that cannot start fails, with the reason in its log
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a") as log:
                log.write(f"the pod could not start: {exc}\n")
            return 1, False
        self.running[uid] = running
        try:
            while True:
                code = running.poll()
                if code is not None:
                    running.wait()
                    return code, False
                if deadline is not None and time.monotonic() > deadline:
                    running.stop(5)
                    return -9, True
                if self._stop.wait(0.2):
                    return running.stop(5) or -15, False
        finally:
            self.running.pop(uid, None)


def _condition(kind: str, reason: str, message: str) -> dict[str, str]:
    now = _now()
    return {"type": kind, "status": "True", "reason": reason, "message": message, "lastProbeTime": now,
            "lastTransitionTime": now}


__all__ = ["JobRunner"]
