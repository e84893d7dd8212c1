"""The process side: restart persistence, `cdl up/status/down`, and helm install."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import typer
import yaml
from typer.testing import CliRunner

from cdl.cli import platform
from cdl.devcluster import process
from tests.plugins.devcluster import WIDGET_CRD


def _cm(info: process.ServerInfo, name: str) -> tuple[int, dict]:
    return process.request(f"{info.url}/api/v1/namespaces/default/configmaps/{name}", info.token,
                           ca_file=info.ca_file)


def test_stop_start_keeps_objects_and_continues_resource_versions(tmp_path):
    info = process.start_background(tmp_path)
    try:
        status, made = process.request(f"{info.url}/api/v1/namespaces/default/configmaps", info.token, "POST",
                                       {"metadata": {"name": "kept"}, "data": {"a": "1"}}, ca_file=info.ca_file)
        assert status == 201
        rv_before = int(made["metadata"]["resourceVersion"])
    finally:
        assert process.stop(tmp_path)
    assert process.read_status(tmp_path) is None
    info = process.start_background(tmp_path)  # same data dir, same port if still free
    try:
        status, kept = _cm(info, "kept")
        assert status == 200 and kept["data"] == {"a": "1"}
        status, listing = process.request(f"{info.url}/api/v1/namespaces/default/configmaps", info.token,
                                          ca_file=info.ca_file)
        assert int(listing["metadata"]["resourceVersion"]) == rv_before
        status, made = process.request(f"{info.url}/api/v1/namespaces/default/configmaps", info.token, "POST",
                                       {"metadata": {"name": "next"}}, ca_file=info.ca_file)
        assert int(made["metadata"]["resourceVersion"]) == rv_before + 1
    finally:
        process.stop(tmp_path)


def test_the_api_port_stays_the_same_across_stops_and_crashes(tmp_path):
    """Clients (kubeconfigs handed out, an operator still running) keep working: a restart after a
    clean stop or a kill -9 reuses the last port, even with the server's side of the connections
    it closed (an operator's watches) in TIME_WAIT."""
    import http.client
    import os
    import signal

    from cdl.devcluster.tls import client_context

    first = process.start_background(tmp_path)
    ports = [first.port]
    try:
        for restart in ("stop", "kill -9", "stop"):
            info = process.read_status(tmp_path)
            watchers = []
            for _ in range(5):  # open connections the server closes when it stops
                conn = http.client.HTTPSConnection("127.0.0.1", info.port, context=client_context(info.ca_file))
                conn.request("GET", "/api/v1/namespaces/default/configmaps",
                              headers={"Authorization": f"Bearer {info.token}"})
                conn.getresponse().read()
                watchers.append(conn)
            if restart == "stop":
                assert process.stop(tmp_path)
            else:
                os.killpg(info.pid, signal.SIGKILL)
                os.waitpid(info.pid, 0)  # our child: reap it, as init would
            ports.append(process.start_background(tmp_path).port)
            for conn in watchers:
                conn.close()
    finally:
        process.stop(tmp_path)
    assert ports == [first.port] * 4, ports


def test_after_cdl_down_no_deployment_says_available_until_it_answers_again(tmp_path, monkeypatch):
    """The serving processes stop with the platform: `cdl down` says so in each Deployment's
    status (keeping its URL), so a client reading it right after the next `cdl up` waits instead
    of sending requests to a URL nothing answers yet."""
    from cdl.cli.common import project_root

    monkeypatch.setattr(platform, "PLATFORM_COMPONENTS", platform.PLATFORM_COMPONENTS[:1])
    app = typer.Typer()
    platform.register(app)
    runner = CliRunner()
    data = tmp_path / "state"
    path = "/apis/cdl.dev/v1alpha1/namespaces/default/deployments"
    try:
        assert runner.invoke(app, ["up", "--data-dir", str(data), "--crds", str(project_root() / "crds")]).exit_code == 0
        info = process.read_status(data)
        manifest = yaml.safe_load((project_root() / "usecases/bbc-news/manifests/deployment.yaml").read_text())
        assert process.request(f"{info.url}{path}", info.token, "POST", manifest, ca_file=info.ca_file)[0] == 201
        url = "http://127.0.0.1:34029/api/v1.0/predictions"
        ready = {"type": "Ready", "status": "True", "reason": "Available", "message": "available",
                 "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}
        code, _ = process.request(f"{info.url}{path}/news-classifier/status", info.token, "PATCH",
                                  {"status": {"phase": "Available", "url": url, "conditions": [ready]}},
                                  content_type="application/merge-patch+json", ca_file=info.ca_file)
        assert code == 200

        down = runner.invoke(app, ["down", "--data-dir", str(data)])
        assert down.exit_code == 0 and "1 marked Deploying" in down.output
        assert runner.invoke(app, ["up", "--data-dir", str(data)]).exit_code == 0
        info = process.read_status(data)
        code, dep = process.request(f"{info.url}{path}/news-classifier", info.token, ca_file=info.ca_file)
        status = dep["status"]
        assert status["phase"] == "Deploying" and status["url"] == url
        assert "cdl down" in status["message"]
        assert [(c["type"], c["status"], c["reason"]) for c in status["conditions"]] == [
            ("Ready", "False", "PlatformStopped")]
    finally:
        runner.invoke(app, ["down", "--data-dir", str(data)])


def test_the_data_directory_is_its_owners_alone(tmp_path):
    """state.db holds every Secret: the data directory is 0700 and its files 0600, also when an
    older cdl left them readable."""
    import stat

    data = tmp_path / "state"
    data.mkdir(mode=0o755)
    (data / "state.db").touch(mode=0o644)
    info = process.start_background(data)
    try:
        code, _ = process.request(f"{info.url}/api/v1/namespaces/default/secrets", info.token, "POST",
                                  {"metadata": {"name": "db"}, "stringData": {"password": "hunter2"}},
                                  ca_file=info.ca_file)
        assert code == 201
    finally:
        process.stop(data)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir() if p.is_file()}
    assert {"state.db", "token", "kubeconfig", "devcluster.log"} <= set(modes)
    assert {name: mode for name, mode in modes.items() if mode & 0o077} == {}


def test_cdl_up_status_down(tmp_path, monkeypatch):
    # Only the control plane: PostgreSQL and the operator have their own tests.
    monkeypatch.setattr(platform, "PLATFORM_COMPONENTS", platform.PLATFORM_COMPONENTS[:1])
    app = typer.Typer()
    platform.register(app)
    runner = CliRunner()
    crds = tmp_path / "crds"
    crds.mkdir()
    (crds / "widgets.yaml").write_text(yaml.safe_dump(WIDGET_CRD))
    data = tmp_path / "state"
    try:
        first = runner.invoke(app, ["up", "--data-dir", str(data), "--crds", str(crds)])
        assert first.exit_code == 0, first.output
        assert f"export KUBECONFIG={data / 'kubeconfig'}" in first.stdout
        pid = process.read_status(data).pid
        again = runner.invoke(app, ["up", "--data-dir", str(data)])
        assert again.exit_code == 0 and "already running" in again.output
        assert process.read_status(data).pid == pid  # not started twice

        info = process.read_status(data)
        status, crd = process.request(
            f"{info.url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.test.cdl.dev", info.token,
            ca_file=info.ca_file)
        assert status == 200
        assert {c["type"]: c["status"] for c in crd["status"]["conditions"]} == {
            "NamesAccepted": "True", "Established": "True"}

        st = runner.invoke(app, ["status", "--data-dir", str(data), "-o", "json"])
        assert st.exit_code == 0
        assert json.loads(st.stdout)["control plane"]["pid"] == pid
        assert runner.invoke(app, ["up", "--data-dir", str(data), "--port", "99999"]).exit_code == 1
    finally:
        down = runner.invoke(app, ["down", "--data-dir", str(data)])
    assert down.exit_code == 0 and "stopped" in down.output
    assert runner.invoke(app, ["status", "--data-dir", str(data)]).exit_code == 3


def test_helm_install_of_a_small_chart(helm, kubectl, fresh_namespace, tmp_path):
    chart = tmp_path / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "crds").mkdir()
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: tiny\nversion: 0.1.0\nappVersion: '1.0'\n")
    (chart / "values.yaml").write_text("replicas: 2\nimage: nginx:1.27\n")
    gadget = {**WIDGET_CRD, "metadata": {"name": "gadgets.tiny.cdl.dev"}}
    gadget["spec"] = {**WIDGET_CRD["spec"], "group": "tiny.cdl.dev",
                      "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"}}
    (chart / "crds" / "gadgets.yaml").write_text(yaml.safe_dump(gadget))
    (chart / "templates" / "all.yaml").write_text(textwrap.dedent("""\
        apiVersion: v1
        kind: ServiceAccount
        metadata: {name: "{{ .Release.Name }}-sa"}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: "{{ .Release.Name }}-config"}
        data: {greeting: hello}
        ---
        apiVersion: rbac.authorization.k8s.io/v1
        kind: Role
        metadata: {name: "{{ .Release.Name }}-role"}
        rules:
        - apiGroups: [""]
          resources: [configmaps]
          verbs: [get, list, watch]
        ---
        apiVersion: rbac.authorization.k8s.io/v1
        kind: RoleBinding
        metadata: {name: "{{ .Release.Name }}-rb"}
        roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: "{{ .Release.Name }}-role"}
        subjects:
        - {kind: ServiceAccount, name: "{{ .Release.Name }}-sa", namespace: "{{ .Release.Namespace }}"}
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: "{{ .Release.Name }}-web", labels: {app: web}}
        spec:
          replicas: {{ .Values.replicas }}
          selector: {matchLabels: {app: web}}
          template:
            metadata: {labels: {app: web}}
            spec:
              serviceAccountName: "{{ .Release.Name }}-sa"
              containers:
              - name: web
                image: "{{ .Values.image }}"
                ports: [{containerPort: 80}]
        """))
    ns = fresh_namespace
    out = helm("install", "rel", str(chart), "-n", ns, timeout=120)
    assert "STATUS: deployed" in out.stdout, out.stdout + out.stderr
    assert "rel" in helm("list", "-n", ns).stdout
    assert kubectl("get", "deploy", "rel-web", "-n", ns, "-o", "jsonpath={.spec.replicas}").stdout == "2"
    kubectl("get", "crd", "gadgets.tiny.cdl.dev")
    out = helm("upgrade", "rel", str(chart), "-n", ns, "--set", "replicas=3", timeout=120)
    assert kubectl("get", "deploy", "rel-web", "-n", ns, "-o", "jsonpath={.spec.replicas}").stdout == "3"
    helm("uninstall", "rel", "-n", ns, timeout=120)
    assert "rel-web" not in kubectl("get", "deploy", "-n", ns).stdout
    assert Path(chart).exists()
