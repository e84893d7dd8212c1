"""`cdl dashboard`'s gateway: the user's credentials reach the API server, nothing else gets in."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from typer.testing import CliRunner

from cdl.cli.main import app
from tests.plugins.kb import Gateway

pytestmark = pytest.mark.slow  # real PostgreSQL (and the devcluster)


def call(url: str, *, method: str = "GET", headers: dict[str, str] | None = None,
         body: bytes | None = None) -> tuple[int, str, dict[str, str]]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


@pytest.fixture
def gateway(devcluster):
    gw = Gateway(str(devcluster.kubeconfig), token="let-me-in")
    yield f"http://127.0.0.1:{gw.port}"
    gw.close()


def test_gateway_adds_credentials_and_guards_its_door(gateway, kb_service):
    namespace, rest = kb_service.split("/")
    path = f"/api/v1/namespaces/{namespace}/services/{rest}/proxy/v1/experiments"
    status, body, _ = call(gateway + path)
    assert status == 401 and "token" in body
    status, body, headers = call(gateway + path + "?token=let-me-in")
    assert status == 200 and json.loads(body)["total"] == 1  # the user's kubeconfig token reached the API server
    cookie = headers["Set-Cookie"].split(";")[0]
    assert call(gateway + path, headers={"Cookie": cookie})[0] == 200
    # DNS rebinding: a page served under another name cannot use the loopback gateway
    assert call(gateway + path, headers={"Cookie": cookie, "Host": "attacker.example"})[0] == 403
    # a change must come from the dashboard's own script
    ns_body = json.dumps({"metadata": {"name": "from-elsewhere"}}).encode()
    status, _, _ = call(gateway + "/api/v1/namespaces", method="POST", body=ns_body,
                        headers={"Cookie": cookie, "Content-Type": "application/json"})
    assert status == 403
    status, _, _ = call(gateway + "/api/v1/namespaces", method="POST", body=ns_body,
                        headers={"Cookie": cookie, "Content-Type": "application/json", "X-Cdl-Dashboard": "1"})
    assert status == 201


def test_dashboard_off_loopback_needs_a_token(devcluster):
    result = CliRunner().invoke(app, ["dashboard", "--address", "0.0.0.0", "--port", "0",
                                      "--kubeconfig", str(devcluster.kubeconfig)])
    assert result.exit_code == 1 and "not a loopback address; pass --token" in result.output
