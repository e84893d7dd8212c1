"""What the cluster engines generate, without any server: cluster settings, the Determined
experiment config, the Pachyderm pipeline requests and split, the SeldonDeployment and its status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cdl.api.datapipeline import DataPipelineSpec
from cdl.api.experiment import ExperimentSpec
from cdl.engines.base import DataRef, ResourceKey, ServedModel, ServingRequest
from cdl.engines.data.pachyderm import Names, PachydermDataEngine
from cdl.engines.serving.seldon import seldon_deployment, serving_status
from cdl.engines.settings import ClusterSettings, DeterminedSettings, GpuSettings, SeldonSettings
from cdl.engines.training.determined import checkpoint_uri, deep_merge, entrypoint_for, experiment_config
from cdl.errors import PermanentEngineError
from tests.fakes.seldon_controller import validate as seldon_webhook

ROOT = Path(__file__).resolve().parents[2]
KEY = ResourceKey("ml", "bbc-asha", "uid-1")
DATA = DataRef("news-train", "c0ffee", uri="pfs://ml/news-train@master=c0ffee")


def exp_spec(**changes: Any) -> ExperimentSpec:
    base: dict[str, Any] = {
        "model": {"path": "model", "entrypoint": "model_def:NewsTrial"},
        "hyperparameters": {"lr": {"type": "log", "minval": -3, "maxval": -1, "base": 10}, "hidden": 64},
        "searcher": {"name": "single", "metric": "validation_accuracy", "smallerIsBetter": False,
                     "maxLength": {"epochs": 3}},
        "seed": 11,
        "checkpointStorage": {"uri": "file:///shared/checkpoints"},
    }
    base.update(changes)
    return ExperimentSpec.model_validate(base)


def det(**values: Any) -> DeterminedSettings:
    return DeterminedSettings.from_env({}, **values)


def env_of(config: dict[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in config["environment"]["environment_variables"])


# --------------------------------------------------------------------------- settings


def test_cluster_settings_come_from_the_config_then_the_environment() -> None:
    env = {"CDL_PACHYDERM_HOST": "pachd.example", "CDL_PACHYDERM_PORT": "31650", "CDL_PACHYDERM_TOKEN": "pach-secret",
           "CDL_DETERMINED_MASTER": "det.example:8080", "CDL_DETERMINED_PASSWORD": "det-secret",
           "CDL_DETERMINED_TRIAL_ENV": '{"PACHD_ADDRESS": "grpc://pachd:30650"}',
           "CDL_SELDON_IMAGE_PULL_SECRETS": "regcred, other", "CDL_GPU_RESOURCE_NAME": "amd.com/gpu"}
    config = {"pachyderm": {"host": "from-config"}, "seldon": {"predictor_image": "reg/predictor:2"}}
    s = ClusterSettings.load(config, env)
    assert (s.pachyderm.host, s.pachyderm.port) == ("from-config", 31650)
    assert s.pachyderm.token is not None and s.pachyderm.token.get_secret_value() == "pach-secret"
    assert s.determined.master == "http://det.example:8080" and s.determined.web_url == "http://det.example:8080"
    assert s.determined.trial_env == {"PACHD_ADDRESS": "grpc://pachd:30650"}
    assert s.seldon.image == "reg/predictor:2" and s.seldon.image_pull_secrets == ["regcred", "other"]
    assert s.gpu.resource_name == "amd.com/gpu"
    assert "pach-secret" not in repr(s) and "det-secret" not in repr(s) and "det-secret" not in str(s.model_dump())


def test_the_helm_charts_cluster_section_is_accepted() -> None:
    values = yaml.safe_load((ROOT / "charts" / "cdl" / "values.yaml").read_text())
    cluster = {  # what charts/cdl/templates/configmap.yaml renders from those values
        "pachyderm": {k: values["pachyderm"][k] for k in ("host", "port", "tls")},
        "determined": {"master": values["determined"]["master"], "resource_pool": values["determined"]["resourcePool"]},
        "seldon": {"namespace": values["seldon"]["namespace"], "predictor_image": values["seldon"]["predictorImage"],
                   "gateway_url": values["seldon"]["gatewayUrl"],
                   "scoring_sink_url": "http://cdl-scoring-sink.cdl.svc:8081"},
        "gpu": {"resource_name": values["gpu"]["resourceName"], "runtime_class_name": values["gpu"]["runtimeClassName"]},
    }
    s = ClusterSettings.load(cluster, env={})
    assert s.seldon.namespace is None and s.seldon.gateway_url is None  # "" from the template means unset
    assert s.determined.resource_pool == "default"
    with pytest.raises(ValueError, match="not a URL"):
        DeterminedSettings.from_env({}, master="://")


# --------------------------------------------------------------------------- Determined


def test_searchers_map_to_determined_038_fields() -> None:
    single = experiment_config(exp_spec(), DATA, {}, det(), KEY)
    assert single["searcher"] == {"name": "single", "metric": "validation_accuracy", "smaller_is_better": False,
                                  "max_length": {"epochs": 3}}
    random_ = experiment_config(exp_spec(searcher={"name": "random", "metric": "loss", "maxTrials": 8,
                                                   "maxConcurrentTrials": 3, "maxLength": {"batches": 500}}),
                                DATA, {}, det(), KEY)
    assert random_["searcher"] == {"name": "random", "metric": "loss", "smaller_is_better": False, "max_trials": 8,
                                   "max_concurrent_trials": 3, "max_length": {"batches": 500}}
    assert random_["min_validation_period"] == {"batches": 50}
    grid = experiment_config(exp_spec(searcher={"name": "grid", "metric": "loss", "smallerIsBetter": True,
                                                "maxTrials": 4, "maxConcurrentTrials": 2}), None, {}, det(), KEY)
    assert grid["searcher"] == {"name": "grid", "metric": "loss", "smaller_is_better": True,
                                "max_concurrent_trials": 2}
    assert "min_validation_period" not in grid
    asha = experiment_config(exp_spec(searcher={
        "name": "asha", "metric": "validation_accuracy", "maxTrials": 16, "maxConcurrentTrials": 4,
        "maxLength": {"epochs": 9}, "asha": {"divisor": 3, "maxRungs": 4}}), DATA, {}, det(), KEY)
    assert asha["searcher"] == {
        "name": "adaptive_asha", "metric": "validation_accuracy", "smaller_is_better": False, "max_trials": 16,
        "max_concurrent_trials": 4, "time_metric": "epochs", "max_time": 9, "mode": "standard", "divisor": 3,
        "max_rungs": 4, "max_length": {"epochs": 9},
    }


def test_the_config_carries_data_code_seed_and_hyperparameters() -> None:
    spec = exp_spec(model={"path": "m", "image": "reg/train:1", "entrypoint": "model_def:NewsTrial"})
    config = experiment_config(spec, DATA, {}, det(trial_env={"PACHD_ADDRESS": "grpc://pachd:30650"}), KEY, 3, 2)
    assert config["name"] == "cdl-ml-bbc-asha-g3-r2"
    assert "cdl.dev/uid=uid-1" in config["labels"] and "cdl.dev/generation=3" in config["labels"]
    assert config["hyperparameters"] == spec.hyperparameters
    assert config["reproducibility"] == {"experiment_seed": 11}
    assert config["environment"]["image"] == "reg/train:1"
    env = env_of(config)
    assert env["CDL_DATA_URI"] == DATA.uri and env["CDL_DATA_REPO"] == "news-train" and env["CDL_DATA_COMMIT"] == "c0ffee"
    assert env["CDL_MAX_LENGTH"] == "epochs:3" and env["CDL_SEED"] == "11" and env["CDL_EXPERIMENT"] == "ml/bbc-asha"
    assert env["PACHD_ADDRESS"] == "grpc://pachd:30650"
    assert config["checkpoint_storage"] == {"type": "shared_fs", "host_path": "/shared/checkpoints"}
    assert "CDL_DATA_URI" not in env_of(experiment_config(spec, None, {}, det(), KEY))


@pytest.mark.parametrize(("entrypoint", "slots", "expected"), [
    # a PyTorchTrial too goes through cdl's bootstrap: data copied to CDL_DATA_DIR, early stopping
    ("model_def:NewsTrial", 1, "python3 -m cdl.runtime.launch"),
    ("model_def:NewsTrial", 4, "python3 -m determined.launch.torch_distributed python3 -m cdl.runtime.launch"),
    ("model_def:train", 1, "python3 -m cdl.runtime.launch"),
    ("model_def:train", 2, "python3 -m determined.launch.torch_distributed python3 -m cdl.runtime.launch"),
    ("train.py", 1, "python3 train.py"),
])
def test_entrypoints(entrypoint: str, slots: int, expected: str) -> None:
    assert entrypoint_for(entrypoint, slots) == expected


def test_resources_pick_slots_and_pools() -> None:
    settings = det(resource_pool="default", cpu_resource_pool="cpu-pool", gpu_resource_pool="a100")
    gpu = experiment_config(exp_spec(resources={"slotsPerTrial": 4, "gpu": True}), None, {}, settings, KEY)
    assert gpu["resources"] == {"slots_per_trial": 4, "resource_pool": "a100"}
    cpu = experiment_config(exp_spec(resources={"slotsPerTrial": 1}), None, {}, settings, KEY)
    assert cpu["resources"]["resource_pool"] == "cpu-pool"
    named = experiment_config(exp_spec(resources={"resourcePool": "mine"}), None, {}, settings, KEY)
    assert named["resources"]["resource_pool"] == "mine"
    assert experiment_config(exp_spec(), None, {}, det(resource_pool="default"), KEY)["resources"] == {
        "slots_per_trial": 1, "resource_pool": "default"}


def test_checkpoint_storage_on_s3_never_names_a_secret_it_was_not_given() -> None:
    settings = det(s3_endpoint_url="http://minio.cdl.svc:9000", checkpoint_secret="det-s3")
    by_ref = experiment_config(exp_spec(checkpointStorage={"uri": "s3://ckpts/team/bbc"}), None, {}, settings, KEY)
    assert by_ref["checkpoint_storage"] == {"type": "s3", "bucket": "ckpts", "prefix": "team/bbc",
                                           "endpoint_url": "http://minio.cdl.svc:9000"}
    (container,) = by_ref["environment"]["pod_spec"]["spec"]["containers"]
    assert container["name"] == "determined-container"
    assert {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]} == {
        "AWS_ACCESS_KEY_ID": {"name": "det-s3", "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": "det-s3", "key": "AWS_SECRET_ACCESS_KEY"}}
    from_secret = exp_spec(checkpointStorage={"uri": "s3://ckpts", "credentialsSecretRef": {"name": "m", "key": "k"}})
    inline = experiment_config(from_secret, None, {"m/k": "AK:SK"}, settings, KEY)["checkpoint_storage"]
    assert (inline["access_key"], inline["secret_key"]) == ("AK", "SK")
    with pytest.raises(PermanentEngineError, match="ACCESS_KEY:SECRET_KEY") as info:
        experiment_config(from_secret, None, {"m/k": "no-colon-here"}, settings, KEY)
    assert "no-colon-here" not in str(info.value)
    with pytest.raises(PermanentEngineError, match="spec.checkpointStorage is required"):
        experiment_config(exp_spec(checkpointStorage=None), None, {}, det(), KEY)
    assert experiment_config(exp_spec(checkpointStorage=None), None, {}, det(checkpoint_storage="s3://d/p"),
                             KEY)["checkpoint_storage"]["bucket"] == "d"


def test_checkpoint_uris() -> None:
    assert checkpoint_uri({"type": "s3", "bucket": "b", "prefix": "/p/q/"}, "u1") == "s3://b/p/q/u1"
    assert checkpoint_uri({"type": "s3", "bucket": "b"}, "u1") == "s3://b/u1"
    assert checkpoint_uri({"type": "shared_fs", "host_path": "/mnt/ck"}, "u1") == "file:///mnt/ck/u1"
    assert checkpoint_uri({"type": "shared_fs", "host_path": "/mnt", "storage_path": "det"}, "u") == "file:///mnt/det/u"


def test_early_stopping_reaches_the_trial_and_the_pod() -> None:
    spec = exp_spec(searcher={"name": "single", "metric": "acc", "maxLength": {"epochs": 2},
                              "earlyStopping": {"patience": 2, "minDelta": 0.01, "maxTrialSeconds": 600,
                                                "maxTrialMemory": "2Gi"}})
    config = experiment_config(spec, None, {}, det(), KEY)
    assert json.loads(env_of(config)["CDL_EARLY_STOPPING"]) == {"patience": 2, "minDelta": 0.01,
                                                                "maxTrialSeconds": 600, "maxTrialMemory": "2Gi"}
    assert env_of(config)["CDL_SMALLER_IS_BETTER"] == "false"  # the in-trial rules need the direction
    (container,) = config["environment"]["pod_spec"]["spec"]["containers"]
    assert container["resources"] == {"limits": {"memory": "2Gi"}}


def test_spec_determined_is_merged_last() -> None:
    spec = exp_spec(determined={"searcher": {"max_length": None, "source_trial_id": 7},
                                "resources": {"shm_size": "4G"}, "max_restarts": 1,
                                "environment": {"image": {"cpu": "c:1", "cuda": "g:1"}}})
    config = experiment_config(spec, None, {}, det(), KEY)
    assert "max_length" not in config["searcher"] and config["searcher"]["source_trial_id"] == 7
    assert config["resources"] == {"slots_per_trial": 1, "shm_size": "4G"}
    assert config["max_restarts"] == 1 and config["environment"]["image"] == {"cpu": "c:1", "cuda": "g:1"}
    assert "environment_variables" in config["environment"]
    assert deep_merge({"a": {"b": 1, "c": [1]}}, {"a": {"c": [2], "d": None}}) == {"a": {"b": 1, "c": [2]}}


# --------------------------------------------------------------------------- Pachyderm


def dpl_spec(**changes: Any) -> DataPipelineSpec:
    base: dict[str, Any] = {
        "source": {"uri": "file:///data/bbc"},
        "split": {"test": 0.2, "seed": 1},
        "steps": [{"name": "validate", "image": "reg/pipelines:1", "command": ["python", "-m", "pipelines.v"],
                   "glob": "/*/*", "resources": {"cpu": "250m", "memory": "512Mi", "gpu": 2},
                   "env": {"A": "1"}, "datumTries": 4, "parallelism": 3,
                   "secrets": [{"name": "hf", "key": "api-token"}]},
                  {"name": "clean", "command": ["python", "-m", "pipelines.c"]}],
    }
    base.update(changes)
    return DataPipelineSpec.model_validate(base)


def test_pipeline_requests_carry_the_step_spec() -> None:
    from cdl.engines.settings import PachydermSettings

    engine = PachydermDataEngine(PachydermSettings.from_env({}, default_image="reg/cdl-pipelines:0.1"),
                                 gpu=GpuSettings.from_env({}, resource_name="nvidia.com/gpu"))
    key = ResourceKey("ml", "bbc")
    names = engine.names(key)
    first = engine.pipeline_request(key, names, dpl_spec(), 0)
    assert first.pipeline.name == "bbc-validate" and first.pipeline.project.name == "ml"
    assert (first.input.pfs.repo, first.input.pfs.glob, first.input.pfs.name) == ("bbc-raw", "/*/*", "in")
    assert first.transform.cmd == ["python", "-m", "pipelines.v"] and first.transform.image == "reg/pipelines:1"
    assert first.transform.env["A"] == "1" and first.transform.env["CDL_OUTPUT_DIR"] == "/pfs/out"
    assert [(s.name, s.key, s.env_var) for s in first.transform.secrets] == [("hf", "api-token", "API_TOKEN")]
    assert first.resource_requests.cpu == pytest.approx(0.25) and first.resource_requests.memory == "512Mi"
    assert first.resource_limits.gpu.number == 2 and first.resource_limits.memory == "512Mi"
    assert first.datum_tries == 4 and first.parallelism_spec.constant == 3
    second = engine.pipeline_request(key, names, dpl_spec(), 1)
    assert second.input.pfs.repo == "bbc-validate" and second.transform.image == "reg/cdl-pipelines:0.1"
    no_image = PachydermDataEngine(PachydermSettings.from_env({}))
    with pytest.raises(PermanentEngineError, match=r"spec.steps\[1\].image is required"):
        no_image.pipeline_request(key, names, dpl_spec(), 1)


def test_names_fit_pachds_limits() -> None:
    from cdl.engines.settings import PachydermSettings

    engine = PachydermDataEngine(PachydermSettings.from_env({}))
    names = engine.names(ResourceKey("a-long-namespace-for-a-team", "a.dotted-and-rather-long-datapipeline-name"))
    assert isinstance(names, Names) and names.project == "a-long-namespace-for-a-team"
    for part in ("raw", "train", "validate-and-clean-everything-in-sight"):
        name = names.repo(part)
        assert len(name) <= 51 and len(f"{names.project}-{name}-v99") <= 63
        assert all(c.isalnum() or c in "-_" for c in name)
    assert names.repo("x" * 60) != names.repo("x" * 61)


# --------------------------------------------------------------------------- Seldon


def model(name: str, role: str, percent: int) -> ServedModel:
    return ServedModel(name, f"s3://art/models/news/{name}/package.tar.gz", "f" * 64, "serve:NewsPredictor", role,
                       percent)


def serving(*models: ServedModel, **extra: Any) -> ServingRequest:
    return ServingRequest(ResourceKey("ml", "news"), 4, list(models), **extra)


SELDON = SeldonSettings.from_env({}, predictor_image="reg/predictor:1", scoring_sink_url="http://sink:8081/scoring",
                                 credentials_secret="cdl-s3", s3_endpoint="http://minio:9000")


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / "thirdparty" / "seldondeployment.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_the_seldon_deployment_has_the_traffic_split_shadow_logger_and_gpu() -> None:
    request = serving(model("news-v1", "primary", 80), model("news-v2", "canary", 20), model("news-v3", "shadow", 0),
                      replicas=3, resources={"cpu": "1", "memory": "2Gi", "gpu": 1}, sample_rate=0.5,
                      secrets={"cdl-s3/secretKey": "never-inline"})
    gpu = GpuSettings.from_env({}, runtime_class_name="nvidia", node_selector={"gpu": "yes"})
    obj = seldon_deployment(request, SELDON, gpu=gpu)
    assert obj["apiVersion"] == "machinelearning.seldon.io/v1" and obj["metadata"]["namespace"] == "ml"
    primary, canary, shadow = obj["spec"]["predictors"]
    assert [(p["name"], p.get("traffic"), p.get("shadow")) for p in (primary, canary, shadow)] == [
        ("primary", 80, None), ("canary", 20, None), ("shadow", None, True)]
    pod = primary["componentSpecs"][0]["spec"]
    assert pod["runtimeClassName"] == "nvidia" and pod["nodeSelector"] == {"gpu": "yes"}
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1 and primary["replicas"] == 3
    assert container["envFrom"] == [{"secretRef": {"name": "cdl-s3"}}]
    logger = canary["graph"]["logger"]
    assert logger["mode"] == "all" and "role=canary" in logger["url"] and "sampleRate=0.5" in logger["url"]
    assert "never-inline" not in json.dumps(obj)
    jsonschema.validate(obj, crd_schema())
    assert seldon_webhook(obj["spec"]) == []  # what Seldon's validating webhook checks


def test_the_seldon_deployment_refuses_bad_splits() -> None:
    with pytest.raises(PermanentEngineError, match="traffic of primary and canary must sum to 100"):
        seldon_deployment(serving(model("a", "primary", 80), model("b", "canary", 10)), SELDON)
    with pytest.raises(PermanentEngineError, match="one primary"):
        seldon_deployment(serving(model("a", "primary", 50), model("b", "primary", 50)), SELDON)
    plain = seldon_deployment(serving(model("a", "primary", 100), request_logging=False), SELDON)
    assert "logger" not in plain["spec"]["predictors"][0]["graph"]
    assert "resources" not in plain["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]


def test_seldon_status_maps_to_serving_status() -> None:
    obj = seldon_deployment(serving(model("a", "primary", 100), replicas=2), SELDON)
    assert serving_status(obj, SELDON).state == "Deploying"
    obj["status"] = {"state": "Creating", "description": "Deployment is being created"}
    assert serving_status(obj, SELDON).message == "Deployment is being created"
    obj["status"] = {"state": "Available", "replicas": 2, "address": {"url": "http://news-primary.ml:8000/x"},
                     "deploymentStatus": {"news-primary-0-model": {"name": "news-primary-0-model", "replicas": 2,
                                                                   "availableReplicas": 1}}}
    degraded = serving_status(obj, SELDON)
    assert (degraded.state, degraded.desired, degraded.ready) == ("Degraded", 2, 1)
    obj["status"]["deploymentStatus"]["news-primary-0-model"]["availableReplicas"] = 2
    available = serving_status(obj, SELDON)
    assert (available.state, available.url) == ("Available", "http://news-primary.ml:8000/x")
    gateway = SeldonSettings.from_env({}, gateway_url="http://gw.example/")
    assert serving_status(obj, gateway).url == "http://gw.example/seldon/ml/news/api/v1.0/predictions"
    obj["status"] = {"state": "Failed", "description": "Traffic must sum to 100 for multiple predictors"}
    failed = serving_status(obj, SELDON)
    assert failed.state == "Failed" and "Traffic must sum" in failed.message
    assert serving_status(None, SELDON).state == "Failed"
