"""The cluster simulation beside the devcluster: what `cdl up --engines cluster` starts.

`serve` (run as `python -m cdl.simulation DATA_DIR KUBECONFIG SOURCE`) holds, in one background
process, the fakes that stand in for the cluster's own services and run their workloads:
pachd (pipeline steps from their images), the Determined master (trials through Determined's
harness), Seldon's controller with its gateway (predictors under seldon-core-microservice) and
the Job controller (cdl's evaluation Jobs). It writes `DATA_DIR/simulation.json` with where each
one listens and the Determined account it made, then runs until SIGTERM.

`operator_pod` then runs the operator the way the Helm chart deploys it: `helm template` renders
the chart with values that point at the fakes; the simulation creates the Secrets the chart's
Deployment references, resolves the operator container's env from them (as the kubelet would),
mounts the rendered ConfigMap at /etc/cdl and an empty folder at /var/lib/cdl, hides the checkout
behind an empty folder, and starts the Deployment's command from the operator image
(docker/operator.Dockerfile: no checkout, no model code). The only difference from a pod:
KUBECONFIG stands in for the service account token.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

STATE_FILE = "simulation.json"
OPERATOR_NAMESPACE = "cdl"
RELEASE = "cdl"
DET_USER = "cdl-operator"
SELDON_CRD = Path("crds") / "thirdparty" / "seldondeployment.yaml"


@dataclass
class SimulationInfo:
    pachd_port: int
    determined_url: str
    determined_user: str
    determined_password: str
    seldon_gateway: str
    pid: int

    @classmethod
    def read(cls, data_dir: Path) -> SimulationInfo | None:
        try:
            return cls(**json.loads((data_dir / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None


def serve(data_dir: Path, kubeconfig: Path, source: Path) -> None:
    """Run the fakes until SIGTERM/SIGINT (the simulation process)."""
    from kubernetes import config as kube_config

    from cdl.simulation.determined import FakeDeterminedMaster, TrialExecutor
    from cdl.simulation.images import ImageBuilder
    from cdl.simulation.jobs import JobRunner
    from cdl.simulation.pachd import FakePachd
    from cdl.simulation.seldon import FakeSeldonController

    work = data_dir / "simulation"
    work.mkdir(parents=True, exist_ok=True)
    api = kube_config.new_client_from_config(config_file=str(kubeconfig))
    _apply_crd(api, source / SELDON_CRD)
    images = ImageBuilder(source, work)
    password = secrets.token_urlsafe(12)
    pachd = FakePachd(work / "pachd", images=images)
    executor = TrialExecutor(images, work / "trials")
    master = FakeDeterminedMaster(users={DET_USER: password}, executor=executor)
    seldon = FakeSeldonController(api, images=images, work_dir=work / "seldon")
    jobs = JobRunner(api, images, work / "jobs")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    pachd.start()
    master.start()
    seldon.start()
    jobs.start()
    info = SimulationInfo(pachd.port, master.url, DET_USER, password, seldon.gateway_url, os.getpid())
    tmp = data_dir / f".{STATE_FILE}"
    tmp.write_text(json.dumps(info.__dict__))
    tmp.replace(data_dir / STATE_FILE)
    try:
        stopped.wait()
    finally:
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        for part in (jobs, seldon, executor, master, pachd):  # each stops its containers by process group
            try:
                part.stop()
            except Exception:  # noqa: BLE001 - stop the rest regardless
                pass
    # A gRPC handler blocked in a waiting call (InspectCommit wait=FINISHED) would hold the
    # interpreter's exit on its worker thread: everything that matters is stopped, so leave now.
    os._exit(0)


def _apply_crd(api: Any, path: Path) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    body = yaml.safe_load(path.read_text())
    try:
        client.ApiextensionsV1Api(api).create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise


# --------------------------------------------------------------------------- the operator's pod


def helm_binary(source: Path) -> str:
    found = shutil.which("helm") or (str(source / ".tools" / "bin" / "helm")
                                     if (source / ".tools" / "bin" / "helm").exists() else None)
    if not found:
        raise RuntimeError("the cluster simulation renders the Helm chart: helm is not on PATH nor in .tools/bin "
                           "(make tools installs it)")
    return found


def chart_values(data_dir: Path, info: SimulationInfo, ports: dict[str, int]) -> list[str]:
    """`--set` values that point the chart at the simulation (file artifact and checkpoint stores)."""
    host, _, port = info.determined_url.split("://", 1)[1].partition(":")
    values = {
        "artifacts.url": (data_dir / "artifacts").as_uri(),
        "artifacts.s3.endpoint": "",
        "pachyderm.host": "127.0.0.1",
        "pachyderm.port": str(info.pachd_port),
        "determined.master": info.determined_url,
        "determined.checkpointStorage": (data_dir / "checkpoints").as_uri(),
        "determined.s3EndpointUrl": "",
        "determined.checkpointSecret": "",
        "seldon.gatewayUrl": info.seldon_gateway,
        "seldon.s3Endpoint": "",
        "seldon.credentialsSecret": "",
        "operator.metricsPort": str(ports["metrics"]),
        "operator.healthPort": str(ports["health"]),
        "operator.scoringSinkPort": str(ports["sink"]),
        "kb.port": str(ports["kb"]),
    }
    args: list[str] = []
    for key, value in values.items():  # numbers as numbers, the rest as strings (an empty one included)
        args += ["--set" if key.endswith(("port", "Port")) else "--set-string", f"{key}={value}"]
    return args


def render_chart(source: Path, data_dir: Path, info: SimulationInfo, ports: dict[str, int]) -> list[dict[str, Any]]:
    command = [helm_binary(source), "template", RELEASE, str(source / "charts" / "cdl"), "--namespace",
               OPERATOR_NAMESPACE, *chart_values(data_dir, info, ports)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"helm template failed: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _ensure_secrets(api: Any, container: dict[str, Any], database_url: str, info: SimulationInfo) -> None:
    """The Secrets the operator's Deployment references, as a DevOps engineer creates them before
    `helm install`: the database URL and the Determined account the simulation made, a random value
    for any other key (tokens, keys); and the evaluation Jobs' artifact-store credentials."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api)
    try:
        core.create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    known = {("cdl-determined", "username"): info.determined_user,
             ("cdl-determined", "password"): info.determined_password}
    wanted: dict[str, dict[str, str]] = {
        # What the install guide has a DevOps engineer create for the evaluation Jobs (artifact-store keys).
        "cdl-s3-workload": {"AWS_ACCESS_KEY_ID": "simulation", "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(12)},
    }
    for var in container.get("env") or []:
        ref = (var.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            value = database_url if var["name"] == "CDL_DATABASE_URL" else \
                known.get((ref["name"], ref["key"]), secrets.token_urlsafe(16))
            wanted.setdefault(ref["name"], {})[ref["key"]] = value
    for name, data in wanted.items():
        body = {"metadata": {"name": name}, "stringData": data}
        try:
            core.create_namespaced_secret(OPERATOR_NAMESPACE, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            core.replace_namespaced_secret(name, OPERATOR_NAMESPACE, body)


def free_ports() -> dict[str, int]:
    import socket

    out = {}
    for name in ("metrics", "health", "sink", "kb"):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            out[name] = int(sock.getsockname()[1])
    return out


def operator_pod(data_dir: Path, kubeconfig: Path, source: Path, database_url: str) -> Any:
    """Start the operator as the chart deploys it; the started `Container`."""
    from kubernetes import config as kube_config

    from cdl.simulation import containers
    from cdl.simulation.images import ImageBuilder

    info = SimulationInfo.read(data_dir)
    if info is None:
        raise RuntimeError(f"the cluster simulation is not running ({data_dir / STATE_FILE} is missing)")
    api = kube_config.new_client_from_config(config_file=str(kubeconfig))
    docs = render_chart(source, data_dir, info, free_ports())
    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config"))
    deployment = next(d for d in docs if d["kind"] == "Deployment" and "operator" in json.dumps(d["spec"]["template"]))
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    _ensure_secrets(api, container, database_url, info)
    pod_dir = data_dir / "operator-pod"
    volumes: dict[str, Path] = {}
    for volume in pod.get("volumes") or []:
        folder = pod_dir / "volumes" / volume["name"]
        folder.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            for key, text in (config_map["data"] or {}).items():
                (folder / key).write_text(text)
        volumes[volume["name"]] = folder
    images = ImageBuilder(source, data_dir / "simulation" / "operator-images")
    image = images.image(container["image"])
    # No checkout in the pod: the source tree is hidden behind an empty folder, except what stands
    # for the pod's own layers (the image's packages, the data dir with the kubeconfig). Mounts
    # apply in order: the tree is first bound at a staging folder outside it, so what is kept can
    # be bound back from there once the tree is hidden.
    root = source.resolve()
    stage = pod_dir.resolve() / "checkout"  # outside the tree, else a temporary folder
    if stage.is_relative_to(root):
        stage = Path(tempfile.mkdtemp(prefix="cdl-operator-pod-"))
    stage.mkdir(parents=True, exist_ok=True)
    (pod_dir / "no-checkout").mkdir(parents=True, exist_ok=True)

    def visible(path: Path) -> Path:
        path = path.resolve()
        return stage / path.relative_to(root) if path.is_relative_to(root) else path

    mounts: dict[str, Path] = {str(stage): root, str(root): visible(pod_dir / "no-checkout")}
    for keep in (image.base_env.resolve(), data_dir.resolve()):
        if keep.is_relative_to(root):
            mounts[str(keep)] = visible(keep)
    for m in container.get("volumeMounts") or []:
        if m["mountPath"] != "/tmp":  # /tmp stays shared: the kubeconfig and PostgreSQL socket may live there
            mounts[m["mountPath"]] = visible(volumes[m["name"]])
    env = containers.pod_env(container, OPERATOR_NAMESPACE, _core(api))
    env["KUBECONFIG"] = str(kubeconfig)  # the service account's stand-in
    return containers.start("operator", image, containers.pod_command(container, image), env,
                            image.path(image.dockerfile.workdir), data_dir / "logs" / "operator.log", mounts)


def _core(api: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api)


__all__ = ["SimulationInfo", "operator_pod", "render_chart", "serve"]
