"""Decoding kube's protobuf bodies (cdl.devcluster.protobuf) from hand-encoded messages."""

from __future__ import annotations

import pytest

from cdl.devcluster import protobuf
from cdl.devcluster.errors import ApiError


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def num(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value)


def msg(field: int, payload: bytes) -> bytes:
    return varint((field << 3) | 2) + varint(len(payload)) + payload


def text(field: int, value: str) -> bytes:
    return msg(field, value.encode())


def envelope(api_version: str, kind: str, body: bytes) -> bytes:
    return protobuf.MAGIC + msg(1, text(1, api_version) + text(2, kind)) + msg(2, body)


def test_a_deployment_decodes_with_kubes_json_names_and_omitempty():
    meta = text(1, "web") + text(3, "ml") + msg(11, text(1, "app") + text(2, "web")) + msg(8, b"")  # zero Time
    container = text(1, "c") + text(2, "nginx") + text(14, "") + msg(6, num(3, 8080))  # imagePullPolicy ""
    pod_spec = msg(2, container)
    template = msg(1, msg(11, text(1, "app") + text(2, "web"))) + msg(2, pod_spec)
    strategy = text(1, "RollingUpdate") + msg(2, msg(1, num(1, 1) + text(3, "30%")) + msg(2, num(2, 2)))
    spec = num(1, 0) + msg(2, msg(1, text(1, "app") + text(2, "web"))) + msg(3, template) + msg(4, strategy) \
        + num(5, 0)
    obj = protobuf.decode_object(envelope("apps/v1", "Deployment", msg(1, meta) + msg(2, spec)))
    assert obj["apiVersion"] == "apps/v1" and obj["kind"] == "Deployment"
    assert obj["metadata"] == {"name": "web", "namespace": "ml", "labels": {"app": "web"}}
    assert obj["spec"]["replicas"] == 0  # a pointer with a non-zero default: an explicit 0 is kept
    assert "minReadySeconds" not in obj["spec"]  # a plain optional int: 0 is omitted
    assert obj["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": "30%", "maxSurge": 2}  # int-or-string
    assert obj["spec"]["template"]["spec"]["containers"] == [
        {"name": "c", "image": "nginx", "ports": [{"containerPort": 8080}]}]


def test_negative_numbers_timestamps_and_quantities():
    meta = text(1, "q") + msg(9, num(1, 1767225600))  # deletionTimestamp
    spec = msg(1, text(1, "cpu") + msg(2, text(1, "500m")))  # hard: {cpu: 500m}
    obj = protobuf.decode_object(envelope("v1", "ResourceQuota", msg(1, meta) + msg(2, spec)))
    assert obj["metadata"]["deletionTimestamp"] == "2026-01-01T00:00:00Z"
    assert obj["spec"] == {"hard": {"cpu": "500m"}}
    pc = protobuf.decode_object(envelope("scheduling.k8s.io/v1", "PriorityClass", msg(1, text(1, "low")) + num(2, -5)))
    assert pc["value"] == -5


def test_an_unknown_kind_is_415_and_garbage_is_400():
    with pytest.raises(ApiError) as err:
        protobuf.decode_object(envelope("example.com/v1", "Thing", b""))
    assert err.value.code == 415
    with pytest.raises(ApiError) as err:
        protobuf.decode_object(protobuf.MAGIC + b"\x0a\xff")
    assert err.value.code == 400
