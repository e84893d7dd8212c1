"""The API server bounds what one request costs, as kube-apiserver does: a body over 3 MiB is a
413, JSON nested past the limit a 400 (not a 500 from a parser's recursion), a duplicated key a
400 naming it (strict decoding, kubectl's default); the server keeps answering after each."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from cdl.devcluster import process
from cdl.devcluster.limits import MAX_BODY_BYTES, MAX_DEPTH, json_depth

PATH = "/api/v1/namespaces/default/configmaps"


def _post(info: process.ServerInfo, body: bytes, query: str = "") -> tuple[int, dict]:
    request = urllib.request.Request(f"{info.url}{PATH}{query}", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {info.token}",
                                              "Content-Type": "application/json"})
    from cdl.devcluster.tls import client_context

    try:
        with urllib.request.urlopen(request, timeout=30, context=client_context(info.ca_file)) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _cm(name: str, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def test_json_depth_is_measured_without_recursion() -> None:
    assert json_depth(b'{"a": [1, {"b": "[[[{{{"}]}') == 3  # brackets in strings do not count
    assert json_depth(b"[" * 100_000 + b"]" * 100_000) == 100_000
    assert json_depth(b'"just a string"') == 0


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1_000, 3_000, 50_000])
def test_deep_nesting_is_a_400(devcluster, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    body = ('{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "deep"}, "x": ' + nested + "}").encode()
    code, status = _post(devcluster, body)
    assert code == 400 and f"at most {MAX_DEPTH}" in status["message"]
    assert status["kind"] == "Status" and status["reason"] == "BadRequest"


def test_a_body_over_3_mib_is_a_413(devcluster) -> None:
    body = json.dumps(_cm("big", blob="x" * (MAX_BODY_BYTES + 1))).encode()
    code, status = _post(devcluster, body)
    assert code == 413 and status["reason"] == "RequestEntityTooLarge"
    assert _post(devcluster, json.dumps(_cm("fits", blob="x" * 1_000_000)).encode())[0] == 201  # 1 MB is fine


def test_a_duplicated_key_is_refused_naming_it(devcluster) -> None:
    body = b'{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dup", "name": "other"}, "data": {}}'
    code, status = _post(devcluster, body)
    assert code == 400 and 'duplicate field "name"' in status["message"]
    body = b'{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dup2"}, "data": {"a": "1", "a": "2"}}'
    assert _post(devcluster, body)[0] == 400
    code, made = _post(devcluster, body, "?fieldValidation=Ignore")  # as kube-apiserver: the last one wins
    assert code == 201 and made["data"] == {"a": "2"}
