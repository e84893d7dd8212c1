"""Built-in kinds against the embedded control plane as kubectl 1.35 and the Python client meet
them: every `kubectl create` (protobuf bodies), defaults and initial status, validation, OpenAPI
(`kubectl explain`), paging, field selectors, service account tokens, whoami and APIServices."""

from __future__ import annotations

import json

import pytest
import yaml


def get(kubectl, *args: str) -> dict:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def test_kubectl_create_every_typed_kind(kubectl, fresh_namespace):
    ns = fresh_namespace
    creates = [
        ("deployment", "web", "--image=nginx:1.27", "--replicas=3", "--port=8080"),
        ("job", "once", "--image=busybox", "--", "echo", "hi"),
        ("cronjob", "tick", "--image=busybox", "--schedule=*/5 * * * *", "--", "date"),
        ("service", "clusterip", "web", "--tcp=80:8080"),
        ("role", "reader", "--verb=get,list", "--resource=pods,configmaps"),
        ("rolebinding", "reads", "--role=reader", "--user=ada", "--serviceaccount=" + ns + ":default"),
        ("quota", "small", "--hard=cpu=2,memory=1Gi,pods=4"),
        ("pdb", "web", "--selector=app=web", "--min-available=50%"),
        ("ingress", "web", "--rule=ml.example.com/api*=web:80"),
        ("secret", "generic", "creds", "--from-literal=user=ada"),
        ("serviceaccount", "runner"),
    ]
    for args in creates:
        out = kubectl("create", "-n", ns, *args)
        assert "created" in out.stdout, out
    pc = f"pc-{ns}"
    kubectl("create", "priorityclass", pc, "--value=1000", "--description=batch work")
    try:
        assert get(kubectl, "priorityclass", pc)["value"] == 1000
    finally:
        kubectl("delete", "priorityclass", pc)

    deploy = get(kubectl, "deploy", "web", "-n", ns)
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert deploy["spec"]["replicas"] == 3 and container["image"] == "nginx:1.27"
    assert container["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]

    job = get(kubectl, "job", "once", "-n", ns)
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["echo", "hi"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert get(kubectl, "cronjob", "tick", "-n", ns)["spec"]["schedule"] == "*/5 * * * *"

    svc = get(kubectl, "svc", "web", "-n", ns)
    assert svc["spec"]["ports"] == [{"name": "80-8080", "port": 80, "protocol": "TCP", "targetPort": 8080}]

    role = get(kubectl, "role", "reader", "-n", ns)
    assert role["rules"][0]["verbs"] == ["get", "list"]
    assert sorted(role["rules"][0]["resources"]) == ["configmaps", "pods"]
    binding = get(kubectl, "rolebinding", "reads", "-n", ns)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"}
    assert {s["kind"] for s in binding["subjects"]} == {"User", "ServiceAccount"}

    assert get(kubectl, "quota", "small", "-n", ns)["spec"]["hard"] == {"cpu": "2", "memory": "1Gi", "pods": "4"}
    assert get(kubectl, "pdb", "web", "-n", ns)["spec"]["minAvailable"] == "50%"  # int-or-string
    rule = get(kubectl, "ingress", "web", "-n", ns)["spec"]["rules"][0]
    assert rule["host"] == "ml.example.com"  # IngressRuleValue is inlined, as in JSON
    path = rule["http"]["paths"][0]
    assert path["pathType"] == "Prefix" and path["backend"]["service"] == {"name": "web", "port": {"number": 80}}
    secret = get(kubectl, "secret", "creds", "-n", ns)
    assert secret["data"] == {"user": "YWRh"} and secret["type"] == "Opaque"


def test_fresh_objects_get_defaults_and_initial_status(kubectl, fresh_namespace):
    ns = fresh_namespace
    kubectl("run", "p1", "--image=nginx:1.27", "-n", ns)
    rows = kubectl("get", "pods", "-n", ns, "--no-headers").stdout.split()
    assert rows[:2] == ["p1", "Pending"]
    pod = get(kubectl, "pod", "p1", "-n", ns)
    assert pod["status"]["phase"] == "Pending" and pod["status"]["qosClass"] == "BestEffort"
    assert pod["status"]["conditions"][0]["type"] == "PodScheduled"
    spec = pod["spec"]
    assert (spec["restartPolicy"], spec["dnsPolicy"], spec["schedulerName"], spec["serviceAccountName"]) == (
        "Always", "ClusterFirst", "default-scheduler", "default")
    assert spec["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert spec["containers"][0]["terminationMessagePath"] == "/dev/termination-log"

    kubectl("create", "service", "nodeport", "np", "--tcp=80:8080", "-n", ns)
    kubectl("create", "service", "clusterip", "cip", "--tcp=80:8080", "-n", ns)
    np, cip = get(kubectl, "svc", "np", "-n", ns), get(kubectl, "svc", "cip", "-n", ns)
    assert cip["spec"]["type"] == "ClusterIP" and cip["spec"]["clusterIP"].startswith("10.")
    assert cip["spec"]["clusterIPs"] == [cip["spec"]["clusterIP"]] != np["spec"]["clusterIPs"]
    assert cip["spec"]["sessionAffinity"] == "None" and cip["status"] == {"loadBalancer": {}}
    assert 30000 <= np["spec"]["ports"][0]["nodePort"] <= 32767

    kubectl("create", "deployment", "d", "--image=nginx", "-n", ns)
    deploy = get(kubectl, "deploy", "d", "-n", ns)
    assert deploy["spec"]["strategy"] == {"type": "RollingUpdate",
                                          "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
    assert deploy["spec"]["revisionHistoryLimit"] == 10 and deploy["spec"]["progressDeadlineSeconds"] == 600
    assert deploy["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Always"  # no tag

    kubectl("create", "job", "j", "--image=busybox", "-n", ns)
    job = get(kubectl, "job", "j", "-n", ns)
    uid = job["metadata"]["uid"]
    assert job["spec"]["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    assert job["spec"]["template"]["metadata"]["labels"]["job-name"] == "j"
    assert job["spec"]["backoffLimit"] == 6 and job["spec"]["completions"] == 1


@pytest.mark.parametrize("manifest, message", [
    ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "empty"}, "spec": {}},
     'The Pod "empty" is invalid: spec.containers: Required value'),
    ({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "mismatch"},
      "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {
          "metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}},
     'spec.template.metadata.labels: Invalid value: map[string]string{"app":"b"}: `selector` does not match '
     'template `labels`'),
    ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "extra"}, "data": {"a": "1"}, "datta": {}},
     'strict decoding error: unknown field "datta"'),
    ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "typed"}, "data": {"a": 1}},
     "cannot unmarshal number into Go struct field ConfigMap.data.a of type string"),
    ({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "noports"}, "spec": {"selector": {"a": "b"}}},
     'The Service "noports" is invalid: spec.ports: Required value'),
    ({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "always"}, "spec": {"template": {
        "spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "i"}]}}}},
     'spec.template.spec.restartPolicy: Unsupported value: "Always": supported values: "OnFailure", "Never"'),
])
def test_invalid_builtin_objects_are_refused(kubectl, fresh_namespace, manifest, message):
    proc = kubectl("apply", "-n", fresh_namespace, "-f", "-", input=json.dumps(manifest), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "No resources found" in kubectl("get", manifest["kind"].lower(), "-n", fresh_namespace).stderr


def test_explain_a_builtin_kind(kubectl):
    out = kubectl("explain", "pods.spec.containers").stdout
    assert "KIND:       Pod" in out and "FIELD: containers <[]Container>" in out
    assert "imagePullPolicy\t<string>" in out
    ports = kubectl("explain", "services.spec.ports.targetPort").stdout
    assert "<IntOrString>" in ports
    assert "DeploymentStrategy" in kubectl("explain", "deployment.spec.strategy").stdout


def test_paging_with_chunk_size(kubectl, k8s_client, fresh_namespace):
    from kubernetes import client

    ns = fresh_namespace
    for n in range(7):
        kubectl("create", "configmap", f"c{n}", "-n", ns)
    proc = kubectl("get", "configmaps", "-n", ns, "--chunk-size=3", "-v=6")
    listed = [line.split()[0] for line in proc.stdout.splitlines()[1:]]
    assert listed == [f"c{n}" for n in range(7)]
    pages = [line for line in proc.stderr.splitlines() if "/configmaps?" in line and "limit=3" in line]
    assert len(pages) == 3 and "continue=" in pages[1]

    core = client.CoreV1Api(k8s_client)
    first = core.list_namespaced_config_map(ns, limit=4)
    assert [c.metadata.name for c in first.items] == ["c0", "c1", "c2", "c3"]
    assert first.metadata.remaining_item_count == 3 and first.metadata._continue
    rest = core.list_namespaced_config_map(ns, limit=4, _continue=first.metadata._continue)
    assert [c.metadata.name for c in rest.items] == ["c4", "c5", "c6"] and not rest.metadata._continue
    assert rest.metadata.resource_version == first.metadata.resource_version
    with pytest.raises(client.ApiException) as bad:
        core.list_namespaced_config_map(ns, limit=4, _continue="not-a-token")
    assert bad.value.status == 400


def test_field_selector_on_an_unsupported_field_is_refused(kubectl, fresh_namespace):
    proc = kubectl("get", "configmaps", "-n", fresh_namespace, "--field-selector=data.a=1", check=False)
    assert proc.returncode != 0 and "field label not supported: data.a" in proc.stderr
    kubectl("run", "p", "--image=nginx", "-n", fresh_namespace)
    assert "p " in kubectl("get", "pods", "-n", fresh_namespace, "--field-selector=status.phase=Pending").stdout


def test_service_account_token_and_whoami(kubectl, fresh_namespace):
    ns = fresh_namespace
    me = kubectl("auth", "whoami", "-o", "json").stdout
    assert json.loads(me)["status"]["userInfo"]["username"] == "kubernetes-admin"
    token = kubectl("create", "token", "default", "-n", ns).stdout.strip()
    who = yaml.safe_load(kubectl("--token", token, "auth", "whoami", "-o", "yaml").stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:default"
    assert f"system:serviceaccounts:{ns}" in who["status"]["userInfo"]["groups"]
    other = kubectl("create", "token", "default", "-n", ns, "--audience=vault").stdout.strip()
    refused = kubectl("--token", other, "get", "ns", check=False)  # not meant for the API server
    assert refused.returncode != 0 and "Unauthorized" in refused.stderr
    short = kubectl("create", "token", "default", "-n", ns, "--duration=1m", check=False)
    assert "may not specify a duration less than 10 minutes" in short.stderr
    missing = kubectl("create", "token", "nobody", "-n", ns, check=False)
    assert 'serviceaccounts "nobody" not found' in missing.stderr


def test_apiservices_follow_the_served_group_versions(kubectl, widget_crd):
    def rows() -> dict[str, str]:
        out = kubectl("get", "apiservices", "--no-headers").stdout
        return {line.split()[0]: line.split()[1] for line in out.splitlines()}

    listed = rows()
    assert listed["v1."] == "True" and listed["v1.apps"] == "True" and listed["v1.test.cdl.dev"] == "True"
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "probes.apisvc.cdl.dev"},
           "spec": {"group": "apisvc.cdl.dev", "scope": "Namespaced",
                    "names": {"plural": "probes", "singular": "probe", "kind": "Probe"},
                    "versions": [{"name": "v1beta1", "served": True, "storage": True, "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
    kubectl("apply", "-f", "-", input=json.dumps(crd))
    assert rows()["v1beta1.apisvc.cdl.dev"] == "True"
    kubectl("delete", "crd", "probes.apisvc.cdl.dev")
    assert "v1beta1.apisvc.cdl.dev" not in rows()


def test_openapi_v2_json_carries_the_builtin_definitions(devcluster):
    from cdl.devcluster import process

    status, doc = process.request(f"{devcluster.url}/openapi/v2", devcluster.token, ca_file=devcluster.ca_file)
    assert status == 200 and doc["swagger"] == "2.0"
    pod = doc["definitions"]["io.k8s.api.core.v1.Pod"]
    assert pod["properties"]["spec"]["allOf"] == [{"$ref": "#/definitions/io.k8s.api.core.v1.PodSpec"}]
    assert "io.k8s.api.apps.v1.Deployment" in doc["definitions"]


def test_a_service_keeps_its_allocated_ip_and_node_port_across_a_replace(k8s_client, fresh_namespace):
    from kubernetes import client

    core = client.CoreV1Api(k8s_client)
    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "np"},
            "spec": {"type": "NodePort", "selector": {"app": "np"}, "ports": [{"port": 80}]}}
    created = core.create_namespaced_service(fresh_namespace, body)
    assert created.spec.ports[0].target_port == 80 and created.spec.ports[0].node_port
    body["metadata"]["labels"] = {"tier": "web"}  # the manifest again: no IP, no node port
    replaced = core.replace_namespaced_service("np", fresh_namespace, body)
    assert replaced.spec.cluster_ip == created.spec.cluster_ip
    assert replaced.spec.ports[0].node_port == created.spec.ports[0].node_port


def test_client_side_apply_follows_each_lists_patch_strategy(kubectl, fresh_namespace):
    ns = fresh_namespace
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "readers", "namespace": ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
               "subjects": [{"kind": "User", "name": "ada", "apiGroup": "rbac.authorization.k8s.io"},
                            {"kind": "User", "name": "bob", "apiGroup": "rbac.authorization.k8s.io"}]}
    kubectl("apply", "-f", "-", input=json.dumps(binding))
    kubectl("patch", "rolebinding", "readers", "-n", ns, "--type=strategic", "-p",
            json.dumps({"subjects": [{"kind": "User", "name": "cy", "apiGroup": "rbac.authorization.k8s.io"}]}))
    # subjects has no merge strategy: a strategic patch replaces the list
    assert [s["name"] for s in get(kubectl, "rolebinding", "readers", "-n", ns)["subjects"]] == ["cy"]
    kubectl("create", "deployment", "web", "--image=nginx", "-n", ns)
    kubectl("patch", "deploy", "web", "-n", ns, "--type=strategic", "-p", json.dumps({"spec": {"template": {"spec": {
        "containers": [{"name": "nginx", "volumeMounts": [{"name": "v", "mountPath": "/a"}]}],
        "volumes": [{"name": "v", "emptyDir": {}}]}}}}))
    pod = get(kubectl, "deploy", "web", "-n", ns)["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "nginx"  # containers merged by name
    assert pod["containers"][0]["volumeMounts"] == [{"name": "v", "mountPath": "/a"}]
    kubectl("patch", "deploy", "web", "-n", ns, "--type=strategic", "-p", json.dumps({"metadata": {
        "finalizers": ["example.com/x"]}}))
    kubectl("patch", "deploy", "web", "-n", ns, "--type=strategic", "-p", json.dumps({"metadata": {
        "finalizers": ["example.com/y"]}}))
    assert get(kubectl, "deploy", "web", "-n", ns)["metadata"]["finalizers"] == ["example.com/x", "example.com/y"]
    kubectl("patch", "deploy", "web", "-n", ns, "--type=json", "-p", '[{"op":"remove","path":"/metadata/finalizers"}]')
