"""The Helm chart: lint, render with each values file, validate every rendered object against the
Kubernetes schemas, keep its CRDs identical to crds/, and install into the embedded API server."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cdl"
HELM = ROOT / ".tools" / "bin" / "helm"
K8S_VERSION = "1.35.0"
VALUES = {
    "default": [],
    "microk8s-gpu": ["-f", str(CHART / "values-microk8s-gpu.yaml")],
    "namespaced": ["--set", "watchNamespaces={ml-a,ml-b}"],
    "shards": ["--set", "operator.replicas=3"],
}


def helm(*args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess:
    if not HELM.exists():
        pytest.fail("helm is missing: run `make tools` (scripts/install-tools.sh)")
    env_args = ["--kubeconfig", str(kubeconfig)] if kubeconfig else []
    return subprocess.run([str(HELM), *args, *env_args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("values", VALUES, ids=list(VALUES))
def test_chart_lints(values):
    out = helm("lint", str(CHART), *VALUES[values])
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("values", VALUES, ids=list(VALUES))
def test_every_rendered_object_is_valid_kubernetes(values):
    out = helm("template", "cdl", str(CHART), "--namespace", "cdl", "--include-crds", *VALUES[values])
    assert out.returncode == 0, out.stderr
    objects = [o for o in yaml.safe_load_all(out.stdout) if o]
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "ServiceAccount", "ConfigMap", "Service", "CustomResourceDefinition"} <= kinds
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_operator_pod_is_locked_down():
    out = helm("template", "cdl", str(CHART), "--namespace", "cdl")
    deployment = next(o for o in yaml.safe_load_all(out.stdout) if o and o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"] and container["readinessProbe"] and container["resources"]["limits"]
    # Secrets are referenced, never inlined or created by the chart with defaults.
    rendered = out.stdout
    assert "kind: Secret" not in rendered
    for env in container["env"]:
        if any(word in env["name"] for word in ("PASSWORD", "SECRET", "TOKEN", "DATABASE_URL", "ACCESS_KEY")):
            assert "value" not in env and "secretKeyRef" in env["valueFrom"], env


def test_only_seldon_pods_reach_the_scoring_sink_and_it_needs_a_key():
    out = helm("template", "cdl", str(CHART), "--namespace", "cdl")
    objects = [o for o in yaml.safe_load_all(out.stdout) if o]
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy")
    operator = next(o for o in objects if o["kind"] == "Deployment")
    assert policy["spec"]["podSelector"]["matchLabels"] == operator["spec"]["selector"]["matchLabels"]
    sink_rule = next(r for r in policy["spec"]["ingress"] if r["ports"] == [{"protocol": "TCP", "port": "scoring-sink"}])
    assert sink_rule["from"] == [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [
        {"key": "seldon-deployment-id", "operator": "Exists"}]}}]
    others = [r for r in policy["spec"]["ingress"] if r is not sink_rule]
    assert all("scoring-sink" not in str(r) for r in others)  # no other rule opens the sink port
    env = {e["name"]: e for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CDL_SCORING_SINK_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "cdl-scoring-sink", "key": "key"}
    off = helm("template", "cdl", str(CHART), "--namespace", "cdl", "--set", "networkPolicy.enabled=false")
    assert "NetworkPolicy" not in off.stdout


def test_the_operator_allows_only_the_charts_label_studio_by_default():
    out = helm("template", "cdl", str(CHART), "--namespace", "cdl")
    config_map = next(o for o in yaml.safe_load_all(out.stdout) if o and o["kind"] == "ConfigMap")
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert config["label_studio_urls"] == ["http://label-studio.label-studio.svc:8080"]


def test_rbac_is_namespaced_when_namespaces_are_listed():
    out = helm("template", "cdl", str(CHART), "--namespace", "cdl", *VALUES["namespaced"])
    objects = [o for o in yaml.safe_load_all(out.stdout) if o]
    roles = [o for o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("-operator")]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml-a", "ml-b"]
    cluster_roles = [o for o in objects if o["kind"] == "ClusterRole"]
    # Only read-only discovery stays cluster-wide.
    for role in cluster_roles:
        for rule in role["rules"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
    secrets_rule = next(r for r in roles[0]["rules"] if "secrets" in r["resources"])
    assert secrets_rule["verbs"] == ["get"]


@pytest.mark.parametrize("values", VALUES, ids=list(VALUES))
def test_nothing_that_runs_team_code_can_read_secrets(values):
    """Evaluation Jobs run under an account no Role or ClusterRole is bound to, without an API
    token; the operator's own Secret rule is get-only, and by name when the values list them."""
    from cdl.config import OperatorConfig
    from cdl.engines.base import DataRef
    from cdl.engines.settings import ClusterSettings
    from cdl.quality.evaluation_job import EvaluationRequest, evaluation_job

    out = helm("template", "cdl", str(CHART), "--namespace", "cdl", *VALUES[values],
               "--set", "rbac.secretNames={cdl-s3,cdl-determined}")
    objects = [o for o in yaml.safe_load_all(out.stdout) if o]
    config_map = next(o for o in objects if o["kind"] == "ConfigMap")
    config = OperatorConfig.model_validate(yaml.safe_load(config_map["data"]["config.yaml"]))
    assert config.engines["Evaluation"] == "kubernetes"
    settings = ClusterSettings.model_validate(config.cluster).evaluation
    request = EvaluationRequest("eval-1", "ml", "ml/news-v1", "s3://cdl-artifacts/cdl/models/news/1/package.tar.gz",
                                "a" * 64, None, "evaluate:evaluate", DataRef("news-test", "c1", uri="pfs://ml/t@master=c1"))
    job = evaluation_job(request, settings, "s3://cdl-artifacts/cdl/evaluations/x/result.json", "")
    pod = job["spec"]["template"]["spec"]
    account = pod["serviceAccountName"]
    assert job["metadata"]["namespace"] == "cdl" and pod["automountServiceAccountToken"] is False
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    (sa,) = [o for o in objects if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == account]
    assert sa["metadata"]["namespace"] == "cdl" and sa["automountServiceAccountToken"] is False
    bound = [s for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding") for s in o["subjects"]]
    assert bound and account not in {s["name"] for s in bound}
    for role in (o for o in objects if o["kind"] in ("Role", "ClusterRole")):
        for rule in role["rules"]:
            if "secrets" in rule["resources"]:
                assert rule["verbs"] == ["get"] and rule["resourceNames"] == ["cdl-s3", "cdl-determined"], rule
            if "jobs" in rule["resources"]:
                assert role["kind"] == "Role" and role["metadata"]["namespace"] == "cdl"


@pytest.mark.slow
def test_helm_install_into_the_embedded_control_plane(devcluster, kubectl, tmp_path):
    out = helm("install", "cdl", str(CHART), "--namespace", "cdl-system", "--create-namespace",
               kubeconfig=devcluster.kubeconfig)
    assert out.returncode == 0, out.stdout + out.stderr
    listed = helm("list", "-n", "cdl-system", kubeconfig=devcluster.kubeconfig)
    assert "cdl" in listed.stdout and "deployed" in listed.stdout
    manifest = tmp_path / "dpl.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "cdl.dev/v1alpha1", "kind": "DataPipeline", "metadata": {"name": "helm-check"},
        "spec": {"source": {"uri": "file:///data"}},
    }))
    applied = kubectl("apply", "-n", "cdl-system", "-f", str(manifest))
    assert applied.returncode == 0, applied.stderr
    got = kubectl("get", "dpl", "helm-check", "-n", "cdl-system", "-o", "jsonpath={.spec.source.format}")
    assert got.stdout == "files"  # the CRD's default was applied by the API server
    out = helm("uninstall", "cdl", "-n", "cdl-system", kubeconfig=devcluster.kubeconfig)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("values", VALUES, ids=list(VALUES))
def test_rendered_operator_configuration_is_what_the_operator_accepts(values):
    from cdl.config import OperatorConfig
    from cdl.engines.settings import ClusterSettings

    out = helm("template", "cdl", str(CHART), "--namespace", "cdl", *VALUES[values])
    config_map = next(o for o in yaml.safe_load_all(out.stdout) if o and o["kind"] == "ConfigMap")
    config = OperatorConfig.model_validate(yaml.safe_load(config_map["data"]["config.yaml"]))
    cluster = ClusterSettings.model_validate(config.cluster)
    assert config.engines["Experiment"] == "determined" and config.scoring_sink_port == 8081
    assert cluster.seldon.scoring_sink_url == "http://cdl-scoring-sink.cdl.svc:8081"
    if values == "microk8s-gpu":
        assert cluster.gpu.runtime_class_name == "nvidia"
        assert cluster.gpu.node_selector == {"nvidia.com/gpu.present": "true"}
        assert cluster.gpu.tolerations[0]["key"] == "nvidia.com/gpu"


def test_knowledge_base_behind_a_service_and_the_proxy_role():
    out = helm("template", "cdl", str(CHART), "--namespace", "cdl",
               "--set", "kb.users[0].kind=Group,kb.users[0].name=data-scientists,"
                        "kb.users[0].apiGroup=rbac.authorization.k8s.io")
    objects = [o for o in yaml.safe_load_all(out.stdout) if o]
    config = yaml.safe_load(next(o for o in objects if o["kind"] == "ConfigMap")["data"]["config.yaml"])
    assert (config["kb_port"], config["kb_host"]) == (8082, "0.0.0.0")
    service = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "cdl-kb")
    assert service["spec"]["ports"] == [{"name": "http", "port": 8082, "targetPort": "kb"}]
    role = next(o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == "cdl-kb-user")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["services/proxy"],
                              "resourceNames": ["cdl-kb", "cdl-kb:http"], "verbs": ["get", "create"]}]
    binding = next(o for o in objects if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "cdl-kb-user")
    assert binding["subjects"][0]["name"] == "data-scientists"
    pod = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    token = next(e for e in pod["env"] if e["name"] == "CDL_KB_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "cdl-kb", "key": "token"}  # never a literal
    off = helm("template", "cdl", str(CHART), "--namespace", "cdl", "--set", "kb.enabled=false")
    assert "cdl-kb" not in off.stdout and "kb_port" not in off.stdout


def test_several_replicas_run_as_shards_with_their_leases():
    """replicas > 1: each pod names itself (its pod name) and its namespace for the Leases, the
    service account may manage Leases there, and pods roll over one by one; one replica does not."""
    def render(*args):
        out = helm("template", "cdl", str(CHART), "--namespace", "cdl", *args)
        assert out.returncode == 0, out.stderr
        return [o for o in yaml.safe_load_all(out.stdout) if o]

    objects = render("--set", "operator.replicas=3")
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert deployment["spec"]["replicas"] == 3 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert env["CDL_SHARD_IDENTITY"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["CDL_SHARD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    role = next(o for o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("-shards"))
    assert role["metadata"]["namespace"] == "cdl" and role["rules"][0]["resources"] == ["leases"]
    from cdl.config import OperatorConfig

    config_map = next(o for o in objects if o["kind"] == "ConfigMap")
    config = OperatorConfig.model_validate(yaml.safe_load(config_map["data"]["config.yaml"]))
    assert config.shard_group == "cdl-operator" and config.shard_lease_seconds == 15

    single = render()
    deployment = next(o for o in single if o["kind"] == "Deployment")
    names = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "CDL_SHARD_IDENTITY" not in names and deployment["spec"]["strategy"]["type"] == "Recreate"
    assert not any(o["kind"] == "Role" and o["metadata"]["name"].endswith("-shards") for o in single)
