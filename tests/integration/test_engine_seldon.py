"""The Seldon serving engine on the embedded Kubernetes API server (devcluster), with the
SeldonDeployment CRD installed by kubectl and a fake Seldon controller writing the status
(cdl/simulation/seldon.py)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kubernetes import client

from cdl.engines.base import ResourceKey, ServedModel, ServingEngine, ServingRequest, ServingStatus
from cdl.engines.serving.seldon import GROUP, PLURAL, VERSION, KubernetesSeldonObjects, SeldonServingEngine
from cdl.engines.settings import SeldonSettings
from cdl.errors import PermanentEngineError, TransientEngineError

SINK = "http://cdl-scoring-sink.cdl.svc:8081/scoring"


def served(name: str, role: str = "primary", percent: int = 100) -> ServedModel:
    return ServedModel(name, f"s3://cdl-artifacts/models/news/{name[-1]}/package.tar.gz", "ab" * 32,
                       "serve:NewsPredictor", role, percent)


def request_for(namespace: str, *models: ServedModel, generation: int = 1, **extra: Any) -> ServingRequest:
    values: dict[str, Any] = {"replicas": 2, "resources": {"cpu": "500m", "memory": "1Gi", "gpu": 1},
                              "secrets": {"cdl-s3/secretKey": "do-not-inline-me"}}
    values.update(extra)
    return ServingRequest(ResourceKey(namespace, "news"), generation, list(models or [served("news-v1")]), **values)


def engine_for(k8s_client: Any, **settings: Any) -> SeldonServingEngine:
    values = {"predictor_image": "registry.example.com/cdl/predictor:0.1.0", "scoring_sink_url": SINK,
              "credentials_secret": "cdl-s3", "secret_env": {"HF_TOKEN": "hf/token"}}
    values.update(settings)
    return SeldonServingEngine(SeldonSettings.from_env({}, **values), api=k8s_client)


def get(k8s_client: Any, namespace: str, name: str = "news") -> dict[str, Any]:
    return client.CustomObjectsApi(k8s_client).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def wait_state(engine: SeldonServingEngine, key: ResourceKey, state: str, timeout: float = 20) -> ServingStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = engine.status(key)
        if status.state == state:
            return status
        time.sleep(0.05)
    raise AssertionError(f"{key} did not become {state}: {status}")


def test_apply_creates_a_seldon_deployment_that_becomes_available(
        k8s_client: Any, fresh_namespace: str, cluster_seldon_controller: Any, kubectl: Any) -> None:
    engine = engine_for(k8s_client)
    assert isinstance(engine, ServingEngine)
    request = request_for(fresh_namespace)

    ref = engine.apply(request)

    assert ref.id == f"{fresh_namespace}/news" and ref.engine == "seldon"
    status = wait_state(engine, request.key, "Available")
    assert (status.desired, status.ready) == (2, 2)
    assert status.url == f"http://news-primary.{fresh_namespace}.svc.cluster.local:8000/api/v1.0/predictions"
    assert status.ref == {"seldonDeployment": f"{fresh_namespace}/news"}
    obj = get(k8s_client, fresh_namespace)
    (predictor,) = obj["spec"]["predictors"]
    assert predictor["name"] == "primary" and predictor["replicas"] == 2 and predictor["traffic"] == 100
    container = predictor["componentSpecs"][0]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/cdl/predictor:0.1.0"
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"},
                                      "limits": {"memory": "1Gi", "nvidia.com/gpu": 1}}
    env = {e["name"]: e for e in container["env"]}
    assert env["CDL_MODEL_PACKAGE"]["value"] == "s3://cdl-artifacts/models/news/1/package.tar.gz"
    assert env["CDL_PREDICTOR"]["value"] == "serve:NewsPredictor" and env["MODEL_NAME"]["value"].endswith("CdlPredictor")
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert container["envFrom"] == [{"secretRef": {"name": "cdl-s3"}}]
    assert "do-not-inline-me" not in json.dumps(obj)
    graph = predictor["graph"]
    assert graph["name"] == container["name"] and graph["type"] == "MODEL"
    assert {p["name"]: p["value"] for p in graph["parameters"]}["model_package"] == env["CDL_MODEL_PACKAGE"]["value"]
    assert graph["logger"]["mode"] == "all" and graph["logger"]["url"].startswith(SINK + "?")
    assert f"namespace={fresh_namespace}" in graph["logger"]["url"] and "modelVersion=news-v1" in graph["logger"]["url"]
    listed = kubectl("get", "sdep", "-n", fresh_namespace).stdout
    assert "news" in listed and "Available" in listed


def test_canary_and_shadow_are_predictors_and_a_reapply_is_a_no_op(
        k8s_client: Any, fresh_namespace: str, cluster_seldon_controller: Any) -> None:
    engine = engine_for(k8s_client)
    models = (served("news-v1", "primary", 90), served("news-v2", "canary", 10), served("news-v3", "shadow", 0))
    request = request_for(fresh_namespace, *models)
    engine.apply(request)
    wait_state(engine, request.key, "Available")
    obj = get(k8s_client, fresh_namespace)
    predictors = {p["name"]: p for p in obj["spec"]["predictors"]}
    assert (predictors["primary"]["traffic"], predictors["canary"]["traffic"]) == (90, 10)
    assert predictors["shadow"]["shadow"] is True and "traffic" not in predictors["shadow"]
    assert predictors["canary"]["labels"]["cdl.dev/model-version"] == "news-v2"
    assert engine.status(request.key).desired == 4  # the shadow gets a copy of the traffic, not replicas here

    engine.apply(request)  # same request: nothing written
    assert get(k8s_client, fresh_namespace)["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]

    shifted = request_for(fresh_namespace, served("news-v1", "primary", 50), served("news-v2", "canary", 50),
                          generation=2)
    engine.apply(shifted)
    updated = get(k8s_client, fresh_namespace)
    assert updated["metadata"]["generation"] == obj["metadata"]["generation"] + 1
    assert [p["traffic"] for p in updated["spec"]["predictors"]] == [50, 50]
    cluster_seldon_controller.wait_processed(fresh_namespace, "news", updated["metadata"]["generation"])
    assert wait_state(engine, shifted.key, "Available").desired == 4


def test_deploying_until_the_replicas_are_ready_and_delete(
        k8s_client: Any, fresh_namespace: str, cluster_seldon_controller: Any) -> None:
    cluster_seldon_controller.auto_ready = False
    engine = engine_for(k8s_client, gateway_url="http://istio-ingressgateway.istio-system.svc")
    request = request_for(fresh_namespace, request_logging=False)
    ref = engine.apply(request)
    assert ref.url == f"http://istio-ingressgateway.istio-system.svc/seldon/{fresh_namespace}/news/api/v1.0/predictions"
    cluster_seldon_controller.wait_processed(fresh_namespace, "news", 1)
    deploying = engine.status(request.key)
    assert deploying.state == "Deploying" and deploying.ready == 0 and deploying.url == ref.url
    assert "logger" not in get(k8s_client, fresh_namespace)["spec"]["predictors"][0]["graph"]

    cluster_seldon_controller.make_ready(fresh_namespace, "news")
    assert wait_state(engine, request.key, "Available").ready == 2

    engine.delete(request.key)
    assert engine.status(request.key).state == "Failed"  # gone
    with pytest.raises(client.exceptions.ApiException) as info:
        get(k8s_client, fresh_namespace)
    assert info.value.status == 404
    engine.delete(request.key)  # deleting twice is fine


def test_seldon_rejections_surface(k8s_client: Any, fresh_namespace: str, cluster_seldon_controller: Any) -> None:
    engine = engine_for(k8s_client)
    # The API server refuses what the CRD schema forbids: a permanent error with its message.
    with pytest.raises(PermanentEngineError, match=r"Kubernetes refused creating SeldonDeployment .*replicas"):
        engine.apply(request_for(fresh_namespace, replicas=-1))

    # Seldon's controller refuses what its webhook forbids (here: a container name clash set by a
    # user-edited object): the state is Failed with Seldon's message.
    objects = KubernetesSeldonObjects(k8s_client)
    request = request_for(fresh_namespace)
    engine.apply(request)
    wait_state(engine, request.key, "Available")  # the controller is done writing the status
    obj = get(k8s_client, fresh_namespace)
    obj["spec"]["predictors"][0]["graph"]["name"] = "renamed"
    objects.replace(fresh_namespace, "news", obj)
    cluster_seldon_controller.wait_processed(fresh_namespace, "news", obj["metadata"]["generation"] + 1)
    failed = engine.status(request.key)
    assert failed.state == "Failed" and "Can't find container for Predictive Unit" in failed.message
    engine.apply(request)  # apply puts the object back as it should be
    assert wait_state(engine, request.key, "Available").state == "Available"


def test_an_object_cdl_does_not_own_is_left_alone(k8s_client: Any, fresh_namespace: str,
                                                  cluster_seldon_crd: Any) -> None:
    foreign = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SeldonDeployment",
               "metadata": {"name": "news", "namespace": fresh_namespace},
               "spec": {"predictors": [{"name": "default", "graph": {"name": "m", "implementation": "SKLEARN_SERVER",
                                                                     "modelUri": "gs://x"}}]}}
    client.CustomObjectsApi(k8s_client).create_namespaced_custom_object(GROUP, VERSION, fresh_namespace, PLURAL,
                                                                       foreign)
    engine = engine_for(k8s_client)
    with pytest.raises(PermanentEngineError, match="is not managed by this Deployment"):
        engine.apply(request_for(fresh_namespace))
    engine.delete(ResourceKey(fresh_namespace, "news"))
    assert get(k8s_client, fresh_namespace)["spec"]["predictors"][0]["name"] == "default"


def test_an_unreachable_api_server_is_transient(cluster_closed_port: int) -> None:
    configuration = client.Configuration()
    configuration.host = f"https://127.0.0.1:{cluster_closed_port}"
    configuration.verify_ssl = False
    configuration.retries = 0
    api = client.ApiClient(configuration)
    engine = SeldonServingEngine(SeldonSettings.from_env({}), api=api)
    started = time.monotonic()
    with pytest.raises(TransientEngineError, match="unreachable"):
        engine.apply(request_for("ml"))
    with pytest.raises(TransientEngineError):
        engine.status(ResourceKey("ml", "news"))
    assert time.monotonic() - started < 10
    api.close()


def test_one_poller_reports_the_deployments_whose_serving_state_moved(
        k8s_client: Any, fresh_namespace: str, cluster_seldon_controller: Any) -> None:
    """The engine lists the SeldonDeployments it made in one call per round and tells the
    operator which Deployment resources moved (created, became ready, went away)."""
    from cdl.engines.base import ReportsChanges
    from tests.plugins.operator import wait_for

    cluster_seldon_controller.auto_ready = False
    engine = engine_for(k8s_client)
    engine.poller.interval = 0.1
    assert isinstance(engine, ReportsChanges)
    reported: list[ResourceKey] = []
    engine.subscribe(reported.append)
    key = ResourceKey(fresh_namespace, "news")
    try:
        wait_for(lambda: engine.poller._seen is not None, timeout=10, what="the first listing")
        engine.apply(request_for(fresh_namespace))
        wait_for(lambda: key in reported, timeout=10, what="the new SeldonDeployment reported")
        cluster_seldon_controller.wait_processed(fresh_namespace, "news", 1)
        time.sleep(0.3)
        reported.clear()
        time.sleep(0.3)
        assert key not in reported  # nothing moved, nothing reported
        cluster_seldon_controller.make_ready(fresh_namespace, "news")
        wait_for(lambda: key in reported, timeout=10, what="ready reported")
        reported.clear()
        engine.delete(key)
        wait_for(lambda: key in reported, timeout=10, what="deletion reported")
    finally:
        engine.close()
