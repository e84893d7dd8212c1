"""The knowledge base reached the Kubernetes way: a Service and its Endpoints on the devcluster,
the API server's service proxy path, kubectl and the cdl CLI with nothing but a kubeconfig."""

from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

from cdl.cli.main import app
from tests.plugins.kb import EXPERIMENT, NS


def test_kubectl_reads_through_the_service_proxy(kb_service, kubectl):
    namespace, rest = kb_service.split("/")
    out = kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/services/{rest}/proxy/v1/experiments?limit=5")
    data = json.loads(out.stdout)
    assert data["items"][0]["name"] == EXPERIMENT and data["limit"] == 5
    # a query with spaces and symbols arrives intact
    q = "epochs%20%3E%2010%20%26%26%20optimizer%20%3D%20Adam"
    out = kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/services/{rest}/proxy/v1/namespaces/{NS}/"
                  f"experiments/{EXPERIMENT}/trials?q={q}")
    assert [t["trial"] for t in json.loads(out.stdout)["items"]] == ["10", "2", "3"]


def test_a_service_without_endpoints_is_503(k8s_client, kubectl):
    from kubernetes import client

    namespace = f"kb-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(k8s_client)
    core.create_namespace({"metadata": {"name": namespace}})
    core.create_namespaced_service(namespace, {"metadata": {"name": "empty"},
                                               "spec": {"ports": [{"name": "http", "port": 80}]}})
    out = kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/services/empty:http/proxy/", check=False)
    assert out.returncode != 0 and 'no endpoints available for service "empty"' in out.stderr


def cli(devcluster, kb_service, tmp_path, monkeypatch, *args):
    monkeypatch.chdir(tmp_path)  # any directory: no .cdl/ here
    monkeypatch.delenv("KUBECONFIG", raising=False)
    result = CliRunner().invoke(app, [*args, "--kubeconfig", str(devcluster.kubeconfig), "--kb-service", kb_service])
    return result


def test_cli_views_read_through_the_api(devcluster, kb_service, tmp_path, monkeypatch):
    r = cli(devcluster, kb_service, tmp_path, monkeypatch, "experiments", "compare", EXPERIMENT, "-n", NS, "-o", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [row["trial"] for row in rows] == ["10", "2", "3", "1"] and rows[0]["accuracy"] == 0.95

    r = cli(devcluster, kb_service, tmp_path, monkeypatch, "experiments", "compare", EXPERIMENT, "-n", NS,
            "--trials", "2,3")
    assert r.exit_code == 0 and "Adam" in r.output and "SGD" not in r.output

    r = cli(devcluster, kb_service, tmp_path, monkeypatch, "logs", EXPERIMENT, "-n", NS, "--trial", "3")
    assert r.exit_code == 0 and "trial 3" in r.output

    r = cli(devcluster, kb_service, tmp_path, monkeypatch, "report", "news-v1", "-n", NS)
    assert r.exit_code == 0 and "business" in r.output and "Confusion" in r.output

    r = cli(devcluster, kb_service, tmp_path, monkeypatch, "lineage", "news-v1", "-n", NS)
    assert r.exit_code == 0
    for fragment in ("news-train@c0ffee", f"experiment: {EXPERIMENT}", "news v1", f"deployment: {NS}/news"):
        assert fragment in r.output

    r = cli(devcluster, kb_service, tmp_path, monkeypatch, "monitor", "news", "-n", NS, "-o", "json")
    assert r.exit_code == 0, r.output
    figures = json.loads(r.output[r.output.index("{"):])
    assert figures["requests"] == 18 and [p["requests"] for p in figures["series"]] == [5, 6, 7]

    r = cli(devcluster, kb_service, tmp_path, monkeypatch, "report", "missing-v9", "-n", NS)
    assert r.exit_code == 1 and "ModelVersion ml/missing-v9 has no registered version" in r.output


@pytest.mark.slow
def test_the_operator_serves_and_registers_its_knowledge_base(operator_runner, postgres_url, kubectl, tmp_path):
    """As on the embedded platform: kb_port 0 (a free loopback port) and kb_service registered."""
    namespace = f"kb-{uuid.uuid4().hex[:6]}"
    with operator_runner(tmp_path / "state", database_url=postgres_url, kb_port=0,
                         kb_service=f"{namespace}/cdl-kb"):
        from tests.plugins.operator import wait_for

        def health() -> str | None:
            out = kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/services/cdl-kb:http/proxy/healthz",
                          check=False)
            return out.stdout if out.returncode == 0 else None

        assert wait_for(health, 30, "the knowledge base behind the service proxy") == "ok"
        out = kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/services/cdl-kb:http/proxy/v1/experiments")
        assert set(json.loads(out.stdout)) >= {"items", "total", "limit", "offset", "next"}
    # stopped with the operator: the port no longer answers
    out = kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/services/cdl-kb:http/proxy/healthz", check=False)
    assert out.returncode != 0 and "error trying to reach service" in out.stderr
