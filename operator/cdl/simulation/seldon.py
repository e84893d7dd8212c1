"""A protocol-level fake of Seldon Core v1's controller, on a Kubernetes API server.

It watches SeldonDeployments (`machinelearning.seldon.io/v1`, all namespaces) through the
`kubernetes` client, as Seldon's controller-runtime manager does, and writes their status
through the status subresource: `Creating` when a new generation arrives, then `Available` with
one Deployment status per predictor (`<sdep>-<predictor>-0-<container>`), the replicas, the
service status and `status.address.url`
(`http://<sdep>-<first predictor>.<ns>.svc.cluster.local:8000/api/v1.0/predictions`), as Seldon
1.18 reports them.

What it checks, with the messages of Seldon's validating webhook (`ValidateSeldonDeployment`):
a known protocol, transport and serverType; at least one predictor; unique predictor names; a
container for every graph node without an implementation; a logger mode when there is a logger;
at most one shadow, never a shadow alone; traffic summing to 100 over several predictors. The
embedded API server has no admission webhooks, so an invalid object is accepted by the API
server and the fake reports `state: Failed` with the webhook's message instead of refusing it.

Without `images`, it cannot run anything: replicas are reported available as soon as the object
is processed (or held at 0 with `auto_ready=False` until `make_ready`).

With `images` (a `cdl.simulation.images.ImageBuilder`) it runs what the controller's Deployments
would: one container per predictor from the container's image, with the container's `command`/
`args` (else the image's ENTRYPOINT/CMD: seldon-core-microservice for cdl's predictor image), in
the image's WORKDIR, with exactly the container's `env` (`value`, `secretKeyRef` and `envFrom`
Secrets read from the API server, as the kubelet does) plus what Seldon's controller injects
(PREDICTIVE_UNIT_PARAMETERS from the graph's parameters, the service ports, the ids). A predictor
is Available once `/health/ping` answers; a container that exits first makes the object `Failed`
with the end of its log. A gateway (`gateway_url`, as Ambassador/Istio in front of Seldon) routes
`/seldon/<ns>/<name>/api/v1.0/predictions` to the predictors by their traffic weights (shadows
get a copy). Not done: several replicas per predictor (one process serves), Seldon's executor and
request logger, graphs of more than one node, `modelUri` with a storage initializer (cdl's
predictor downloads and verifies its package itself).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from cdl.simulation.watching import follow

GROUP, VERSION, PLURAL = "machinelearning.seldon.io", "v1", "seldondeployments"
PROTOCOLS = {"seldon", "tensorflow", "kfserving", "v2"}


def validate(spec: dict[str, Any]) -> list[str]:
    """Seldon's webhook checks of a SeldonDeployment spec: the problems, empty when valid."""
    errors: list[str] = []
    protocol = spec.get("protocol")
    if protocol and protocol not in PROTOCOLS:
        errors.append(f"spec: Invalid value: {protocol!r}: Invalid protocol")
    if spec.get("transport") and spec["transport"] not in ("rest", "grpc"):
        errors.append(f"spec: Invalid value: {spec['transport']!r}: Invalid transport")
    if spec.get("serverType") and spec["serverType"] not in ("rpc", "kafka"):
        errors.append(f"spec: Invalid value: {spec['serverType']!r}: Invalid serverType")
    predictors = spec.get("predictors") or []
    if not predictors:
        errors.append("spec: Invalid value: \"\": Graph contains no predictors")
    if len(predictors) == 1 and predictors[0].get("shadow"):
        errors.append(f"spec.predictors[0]: Invalid value: {predictors[0].get('name')!r}: Shadow can not exist as "
                      "only predictor")
    names: set[str] = set()
    shadows, traffic = 0, 0
    for i, p in enumerate(predictors):
        where = f"spec.predictors[{i}]"
        if p.get("name") in names:
            errors.append(f"{where}: Invalid value: {p.get('name')!r}: Duplicate predictor name")
        names.add(p.get("name"))
        containers = {c.get("name") for cs in p.get("componentSpecs") or []
                      for c in ((cs.get("spec") or {}).get("containers") or [])}
        errors += _check_units(p.get("graph") or {}, containers, f"{where}.graph")
        if p.get("shadow"):
            shadows += 1
            if shadows > 1:
                errors.append(f"spec: Invalid value: {p.get('name')!r}: Multiple shadows are not allowed")
        else:
            traffic += int(p.get("traffic") or 0)
    if traffic != 100 and len(predictors) - shadows > 1:
        errors.append(f"spec: Invalid value: {predictors[0].get('name')!r}: Traffic must sum to 100 for multiple "
                      "predictors")
    if 0 < traffic < 100 and len(predictors) == 1:
        errors.append(f"spec: Invalid value: {predictors[0].get('name')!r}: Traffic must sum be 100 for a single "
                      "predictor when set")
    return errors


def _check_units(unit: dict[str, Any], containers: set[str], where: str) -> list[str]:
    errors: list[str] = []
    implementation = unit.get("implementation")
    if not implementation or implementation == "UNKNOWN_IMPLEMENTATION":
        if unit.get("name") not in containers:
            errors.append(f"{where}: Invalid value: {unit.get('name')!r}: Can't find container for Predictive Unit")
    if unit.get("logger") is not None and not (unit["logger"] or {}).get("mode"):
        errors.append(f"{where}: Invalid value: \"\": No logger mode specified")
    for i, child in enumerate(unit.get("children") or []):
        errors += _check_units(child, containers, f"{where}[{i}]")
    return errors


class FakeSeldonController:
    """Start with `start()`; `stop()` ends the watch thread. `processed` counts handled generations."""

    def __init__(self, api_client: Any, auto_ready: bool = True, images: Any | None = None,
                 work_dir: Path | None = None, ready_timeout: float = 180) -> None:
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.images = images
        self.work_dir = Path(work_dir) if work_dir else None
        self.ready_timeout = ready_timeout
        self.running: dict[tuple[str, str], list[dict[str, Any]]] = {}  # object -> predictors (port, container)
        self._gateway: _Gateway | None = None
        self.auto_ready = auto_ready
        self.processed: list[tuple[str, str, int]] = []
        self._seen: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.images is not None:
            self._gateway = _Gateway(self)
            self._gateway.start()
        self._thread = threading.Thread(target=self._run, name="fake-seldon-controller", daemon=True)
        self._thread.start()

    @property
    def gateway_url(self) -> str:
        """The gateway's base URL (`cluster.seldon.gatewayUrl` for the engine); with `images` only."""
        assert self._gateway is not None, "the gateway runs only when the controller runs predictors"
        return self._gateway.url

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
        for key in list(self.running):
            self._stop_predictors(key)
        if self._gateway is not None:
            self._gateway.stop()

    def wait_processed(self, namespace: str, name: str, generation: int, timeout: float = 20) -> None:
        with self._changed:
            ok = self._changed.wait_for(lambda: (namespace, name, generation) in self.processed, timeout)
        if not ok:
            raise AssertionError(f"the fake Seldon controller did not process {namespace}/{name} "
                                 f"generation {generation} within {timeout} s")

    def _run(self) -> None:
        follow(self._stop, self.api.list_cluster_custom_object, GROUP, VERSION, PLURAL, handle=self._event,
               version_of=lambda obj: obj["metadata"].get("resourceVersion"))

    def _event(self, kind: str, obj: dict[str, Any]) -> None:
        if kind in ("ADDED", "MODIFIED"):
            self._reconcile(obj)
        elif kind == "DELETED":
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            self._seen.pop(key, None)
            self._stop_predictors(key)

    def _reconcile(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        generation = int(meta.get("generation", 1))
        if self._seen.get(key) == generation:
            return  # our own status write, or nothing new
        self._seen[key] = generation
        spec = obj.get("spec") or {}
        problems = validate(spec)
        if problems:
            self._status(key, {"state": "Failed", "description": "; ".join(problems), "replicas": 0})
        elif self.images is not None:
            self._status(key, self._deployments(meta["name"], meta["namespace"], spec, ready=False))
            threading.Thread(target=self._roll_out, args=(key, generation, spec), daemon=True,
                             name=f"seldon-{key[1]}").start()
            return
        else:
            self._status(key, self._deployments(meta["name"], meta["namespace"], spec, ready=False))
            if self.auto_ready:
                self._status(key, self._deployments(meta["name"], meta["namespace"], spec, ready=True))
        with self._changed:
            self.processed.append((*key, generation))
            self._changed.notify_all()

    # ------------------------------------------------------------------ running the predictors

    def _roll_out(self, key: tuple[str, str], generation: int, spec: dict[str, Any]) -> None:
        """Start the new generation's predictors, wait until they answer, then stop the old ones."""
        old = self.running.get(key, [])
        started: list[dict[str, Any]] = []
        failure = None
        try:
            for p in spec.get("predictors") or []:
                started.append(self._start_predictor(key, generation, spec, p))
            for entry in started:
                failure = self._wait_ready(entry)
                if failure:
                    break
        except Exception as exc:  # noqa: BLE001 - a pod that cannot start: the object fails with the reason
            failure = str(exc)
        if self._seen.get(key) != generation:  # superseded while starting
            for entry in started:
                entry["container"].stop(5)
            return
        if failure:
            for entry in started:
                entry["container"].stop(5)
            self._status(key, {"state": "Failed", "description": failure[-2000:], "replicas": 0})
        else:
            self.running[key] = started
            for entry in old:
                entry["container"].stop(10)
            self._status(key, self._deployments(key[1], key[0], spec, ready=True))
        with self._changed:
            self.processed.append((*key, generation))
            self._changed.notify_all()

    def _start_predictor(self, key: tuple[str, str], generation: int, spec: dict[str, Any],
                         predictor: dict[str, Any]) -> dict[str, Any]:
        from cdl.simulation import containers

        namespace, name = key
        assert self.work_dir is not None, "the controller needs a work_dir to run predictors"
        pod = ((predictor.get("componentSpecs") or [{}])[0].get("spec") or {})
        graph = predictor.get("graph") or {}
        container = next((c for c in pod.get("containers") or [] if c.get("name") == graph.get("name")), None)
        if container is None:
            raise RuntimeError(f"predictor {predictor.get('name')}: no container for graph node {graph.get('name')}")
        image = self.images.image(container["image"])  # type: ignore[union-attr]
        argv = containers.pod_command(container, image)
        http, grpc_port, metrics = _free_port(), _free_port(), _free_port()
        env = {
            "PREDICTIVE_UNIT_SERVICE_PORT": str(http), "PREDICTIVE_UNIT_HTTP_SERVICE_PORT": str(http),
            "PREDICTIVE_UNIT_GRPC_SERVICE_PORT": str(grpc_port), "PREDICTIVE_UNIT_METRICS_SERVICE_PORT": str(metrics),
            "PREDICTIVE_UNIT_METRICS_ENDPOINT": "/prometheus",
            "PREDICTIVE_UNIT_PARAMETERS": json.dumps(graph.get("parameters") or []),
            "PREDICTIVE_UNIT_ID": graph.get("name", ""), "PREDICTOR_ID": predictor.get("name", ""),
            "SELDON_DEPLOYMENT_ID": name, "PREDICTOR_LABELS": json.dumps(predictor.get("labels") or {}),
        }
        env.update(containers.pod_env(container, namespace, self.core))
        base = self.work_dir / namespace / name / f"g{generation}-{predictor.get('name')}"
        started = containers.start(f"{name}-{predictor.get('name')}", image, argv, env,
                                   image.path(image.dockerfile.workdir), base / "container.log")
        return {"predictor": predictor.get("name"), "port": http, "container": started,
                "traffic": int(predictor.get("traffic") or 0), "shadow": bool(predictor.get("shadow"))}

    def _wait_ready(self, entry: dict[str, Any]) -> str | None:
        """None once the predictor answers /health/ping; the reason when it exits or times out."""
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            code = entry["container"].poll()
            if code is not None:
                return f"predictor {entry['predictor']} exited with {code}: {entry['container'].output()[-1500:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{entry['port']}/health/ping", timeout=2) as r:
                    if r.status == 200:
                        return None
            except OSError:
                pass
            time.sleep(0.3)
        return f"predictor {entry['predictor']} did not answer /health/ping within {self.ready_timeout:.0f} s"

    def _stop_predictors(self, key: tuple[str, str]) -> None:
        for entry in self.running.pop(key, []):
            entry["container"].stop(10)

    def make_ready(self, namespace: str, name: str) -> None:
        """Report every replica of the object available (with auto_ready=False)."""
        obj = self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        self._status((namespace, name), self._deployments(name, namespace, obj.get("spec") or {}, ready=True))

    def _deployments(self, name: str, namespace: str, spec: dict[str, Any], ready: bool) -> dict[str, Any]:
        deployments: dict[str, Any] = {}
        services: dict[str, Any] = {}
        total = 0
        for p in spec.get("predictors") or []:
            replicas = int(p.get("replicas", spec.get("replicas", 1)) or 0)
            total += replicas
            for cs in p.get("componentSpecs") or []:
                for c in (cs.get("spec") or {}).get("containers") or []:
                    dep = f"{name}-{p['name']}-0-{c['name']}"
                    deployments[dep] = {"name": dep, "replicas": replicas,
                                        "availableReplicas": replicas if ready else 0,
                                        "status": "Available" if ready else "Creating"}
            svc = f"{name}-{p['name']}"
            services[svc] = {"svcName": svc, "httpEndpoint": f"{svc}.{namespace}:8000",
                             "grpcEndpoint": f"{svc}.{namespace}:5001"}
        first = (spec.get("predictors") or [{}])[0].get("name", "default")
        status: dict[str, Any] = {
            "state": "Available" if ready else "Creating", "replicas": total,
            "deploymentStatus": deployments, "serviceStatus": services,
            "address": {"url": f"http://{name}-{first}.{namespace}.svc.cluster.local:8000/api/v1.0/predictions"},
        }
        if not ready:
            status["description"] = "Deployment is being created"
        return status

    def _status(self, key: tuple[str, str], status: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        namespace, name = key
        for _ in range(5):  # PUT /status with the object's resourceVersion: retry a conflict
            current = self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            current["status"] = status
            try:
                self.api.replace_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, current)
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Gateway:
    """Ambassador/Istio in front of Seldon: `/seldon/<ns>/<name>/<path>` to a predictor, picked by
    traffic weight; shadows get a copy whose answer is dropped."""

    def __init__(self, controller: FakeSeldonController) -> None:
        self.controller = controller
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from aiohttp import web

        ready = threading.Event()

        async def route(request: web.Request) -> web.StreamResponse:
            import aiohttp

            key = (request.match_info["ns"], request.match_info["name"])
            entries = self.controller.running.get(key) or []
            serving = [e for e in entries if not e["shadow"]]
            if not serving:
                return web.json_response({"status": {"code": 503, "info": f"no predictor serves {key[0]}/{key[1]}"}},
                                         status=503)
            weights = [max(e["traffic"], 0) for e in serving]
            chosen = random.choices(serving, weights=weights if sum(weights) else None)[0]
            body = await request.read()
            path = request.match_info["path"]
            async with aiohttp.ClientSession() as session:
                for shadow in (e for e in entries if e["shadow"]):
                    try:
                        await session.request(request.method, f"http://127.0.0.1:{shadow['port']}/{path}", data=body,
                                              headers={"Content-Type": request.content_type})
                    except aiohttp.ClientError:
                        pass
                async with session.request(request.method, f"http://127.0.0.1:{chosen['port']}/{path}", data=body,
                                           headers={"Content-Type": request.content_type}) as r:
                    return web.Response(body=await r.read(), status=r.status, content_type=r.content_type,
                                        headers={"Seldon-Predictor": chosen["predictor"]})

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_route("*", "/seldon/{ns}/{name}/{path:.*}", route)
            runner = web.AppRunner(app)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-seldon-gateway", daemon=True)
        self._thread.start()
        ready.wait(10)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


__all__ = ["FakeSeldonController", "validate"]
