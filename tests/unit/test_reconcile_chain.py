"""The reconcilers without kopf: a dictionary stands in for the cluster (reconcilers only read
other resources and Secrets through `ClusterView`), scripted engines for the engines."""

from __future__ import annotations

import copy

import pytest

from cdl.api.kinds import BY_KIND
from cdl.config import OperatorConfig
from cdl.engines.chooser import EngineChooser
from cdl.errors import DependencyNotReady
from cdl.reconcile import datapipeline, deployment, experiment, modelversion, outcomes
from cdl.reconcile.base import Context, Resource
from tests.integration.operator_engines import (
    ScriptedDataEngine,
    ScriptedRegistryEngine,
    ScriptedServingEngine,
    ScriptedTrainingEngine,
)
from tests.integration.test_operator_core import dep, dpl, exp, mv

MODULES = {"DataPipeline": datapipeline, "Experiment": experiment, "ModelVersion": modelversion,
           "Deployment": deployment}


class DictCluster:
    def __init__(self):
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}

    def add(self, body, ns="ml"):
        body = copy.deepcopy(body)
        body["metadata"].update(namespace=ns, uid=f"uid-{body['metadata']['name']}", generation=1)
        self.objects[(body["kind"], ns, body["metadata"]["name"])] = body
        return body

    def get(self, kind, namespace, name):
        return copy.deepcopy(self.objects.get((kind, namespace, name)))

    def list(self, kind, namespace):
        return [copy.deepcopy(o) for (k, ns, _), o in self.objects.items() if k == kind and ns == namespace]

    def read_secret(self, namespace, name, key):
        try:
            return self.secrets[(namespace, name)][key]
        except KeyError:
            raise DependencyNotReady(f"waiting for Secret {namespace}/{name}")

    def patch_spec(self, kind, namespace, name, patch):
        obj = self.objects[(kind, namespace, name)]
        obj["spec"].update(patch)
        obj["metadata"]["generation"] += 1

    def patch_status(self, kind, namespace, name, patch):
        self.objects[(kind, namespace, name)].setdefault("status", {}).update(patch)

    def annotate(self, kind, namespace, name, annotations):
        self.objects[(kind, namespace, name)]["metadata"].setdefault("annotations", {}).update(annotations)

    def reconcile(self, ctx, kind, name, ns="ml"):
        body = self.objects[(kind, ns, name)]
        res = Resource.from_body(BY_KIND[kind], copy.deepcopy(body))
        result, outcome = outcomes.run(MODULES[kind].reconcile, res, ctx)
        status = body.setdefault("status", {})
        for k, v in result.status.items():
            if v is None:
                status.pop(k, None)
            else:
                status[k] = v
        return result, outcome


@pytest.fixture
def world(tmp_path):
    cluster = DictCluster()
    data = ScriptedDataEngine(tmp_path / "out", polls=0)
    train = ScriptedTrainingEngine(polls=0)
    reg, srv = ScriptedRegistryEngine(), ScriptedServingEngine()
    config = OperatorConfig(data_dir=tmp_path / "state", base_dir=tmp_path.parents[0])
    config.base_dir = __import__("pathlib").Path(__file__).resolve().parents[2]
    engines = EngineChooser(config, overrides={"data": {"local": data}, "training": {"local": train},
                                                "registry": {"local": reg}, "serving": {"local": srv}})
    return cluster, Context(config=config, cluster=cluster, engines=engines), data, train, reg, srv


def test_chain_passes_data_commit_to_training_and_model(world):
    cluster, ctx, data, train, reg, srv = world
    for body in (dpl(), exp(), mv(), dep()):
        cluster.add(body)
    for _ in range(3):
        for kind, name in (("DataPipeline", "news"), ("Experiment", "train"), ("ModelVersion", "clf-v1"),
                           ("Deployment", "clf")):
            cluster.reconcile(ctx, kind, name)
    assert cluster.get("Deployment", "ml", "clf")["status"]["phase"] == "Available"
    assert train.requests[0].data.commit == "c-v1-train"
    assert cluster.get("ModelVersion", "ml", "clf-v1")["status"]["lineage"]["data"]["commit"] == "c-v1-train"
    assert srv.applied["ml/clf"].models[0].model_version == "clf-v1"


def test_pending_experiment_says_what_it_waits_for(world):
    cluster, ctx, *_ = world
    cluster.add(exp())
    result, outcome = cluster.reconcile(ctx, "Experiment", "train")
    assert outcome == "waiting"
    assert result.status["phase"] == "Pending"
    assert result.status["message"] == "waiting for DataPipeline news to exist"
    assert result.events[0].reason == "WaitingForDependency"
    # The same wait again posts no second Event.
    result, _ = cluster.reconcile(ctx, "Experiment", "train")
    assert result.events == []


def test_rejected_model_is_not_deployed(world):
    cluster, ctx, *_, srv = world
    rejected = cluster.add(mv())
    rejected["status"] = {"phase": "Rejected", "artifact": {"uri": "x", "sha256": "y"}}
    cluster.add(dep())
    result, outcome = cluster.reconcile(ctx, "Deployment", "clf")
    assert outcome == "waiting"
    assert "rejected by its evaluation gate" in result.status["message"]
    assert srv.calls.count("apply") == 0


def test_retrain_annotation_starts_a_new_run(world):
    cluster, ctx, data, train, *_ = world
    cluster.add(dpl())
    cluster.add(exp())
    for _ in range(3):
        cluster.reconcile(ctx, "DataPipeline", "news")
        cluster.reconcile(ctx, "Experiment", "train")
    assert cluster.get("Experiment", "ml", "train")["status"]["phase"] == "Completed"
    cluster.annotate("Experiment", "ml", "train", {"cdl.dev/retrain-run": "2"})
    result, _ = cluster.reconcile(ctx, "Experiment", "train")
    assert result.status["run"] == 2 and result.status["phase"] == "Submitted"
    assert [r.run for r in train.requests] == [1, 2]


def test_engine_outside_the_allowed_list_fails_the_resource(world):
    cluster, ctx, *_ = world
    ctx.config.engines["DataPipeline"] = "kubeflow"  # a bad operator default
    cluster.add(dpl())
    result, outcome = cluster.reconcile(ctx, "DataPipeline", "news")
    assert outcome == "failed"
    assert result.status["phase"] == "Failed"
    assert result.status["message"] == "engine 'kubeflow' cannot drive data; allowed: local, pachyderm"
