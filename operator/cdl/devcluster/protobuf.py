"""Just enough of kube's protobuf encoding to read what kubectl sends that way.

`kubectl create namespace|configmap|secret|serviceaccount` send protobuf bodies and do not fall
back to JSON after a 415. This reads the `k8s\\0` envelope and those kinds' fields (metadata:
name, generateName, namespace, labels, annotations, finalizers). Anything else is a 415.
"""

from __future__ import annotations

import base64
from typing import Any

from cdl.devcluster.errors import ApiError

MAGIC = b"k8s\x00"


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def fields(buf: bytes) -> list[tuple[int, Any]]:
    """(field number, value) pairs; length-delimited values stay bytes."""
    out: list[tuple[int, Any]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.append((num, value))
    return out


def _map_entry(buf: bytes) -> tuple[str, bytes]:
    key, value = "", b""
    for num, v in fields(buf):
        if num == 1:
            key = v.decode()
        elif num == 2:
            value = v
    return key, value


def _metadata(buf: bytes) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    names = {1: "name", 2: "generateName", 3: "namespace"}
    for num, v in fields(buf):
        if num in names and v:
            meta[names[num]] = v.decode()
        elif num in (11, 12):
            k, val = _map_entry(v)
            meta.setdefault("labels" if num == 11 else "annotations", {})[k] = val.decode()
        elif num == 14:
            meta.setdefault("finalizers", []).append(v.decode())
    return meta


def type_meta(raw: bytes) -> dict[str, str]:
    """apiVersion and kind from a protobuf envelope, whatever the kind."""
    out = {"apiVersion": "", "kind": ""}
    try:
        for num, v in fields(raw[len(MAGIC):]):
            if num == 1:
                for n2, v2 in fields(v):
                    if n2 in (1, 2):
                        out["apiVersion" if n2 == 1 else "kind"] = v2.decode()
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise ApiError(400, f"error decoding protobuf body: {e}")
    return out


def decode_object(raw: bytes) -> dict[str, Any]:
    if not raw.startswith(MAGIC):
        raise ApiError(415, "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml")
    try:
        api_version = kind = ""
        inner = b""
        for num, v in fields(raw[len(MAGIC):]):
            if num == 1:
                for n2, v2 in fields(v):
                    if n2 == 1:
                        api_version = v2.decode()
                    elif n2 == 2:
                        kind = v2.decode()
            elif num == 2:
                inner = v
        obj: dict[str, Any] = {"apiVersion": api_version, "kind": kind}
        for num, v in fields(inner):
            if num == 1:
                obj["metadata"] = _metadata(v)
            elif kind == "ConfigMap" and num in (2, 3):
                k, val = _map_entry(v)
                if num == 2:
                    obj.setdefault("data", {})[k] = val.decode()
                else:
                    obj.setdefault("binaryData", {})[k] = base64.b64encode(val).decode()
            elif kind == "Secret" and num == 2:
                k, val = _map_entry(v)
                obj.setdefault("data", {})[k] = base64.b64encode(val).decode()
            elif kind == "Secret" and num == 3:
                obj["type"] = v.decode()
            elif kind in ("ConfigMap", "Secret") and num == (4 if kind == "ConfigMap" else 5):
                obj["immutable"] = bool(v)
        if kind not in ("Namespace", "ConfigMap", "Secret", "ServiceAccount"):
            raise ApiError(415, f"protobuf bodies of kind {kind or 'unknown'} are not supported; send JSON")
        return obj
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise ApiError(400, f"error decoding protobuf body: {e}")


def decode_delete_options(raw: bytes) -> dict[str, Any]:
    """A protobuf DeleteOptions (helm's typed client sends these) as its JSON form."""
    out: dict[str, Any] = {}
    try:
        inner = b""
        for num, v in fields(raw[len(MAGIC):]):
            if num == 2:
                inner = v
        for num, v in fields(inner):
            if num == 2:
                pre = {}
                for n2, v2 in fields(v):
                    if n2 == 1:
                        pre["uid"] = v2.decode()
                    elif n2 == 2:
                        pre["resourceVersion"] = v2.decode()
                out["preconditions"] = pre
            elif num == 3:
                out["orphanDependents"] = bool(v)
            elif num == 4:
                out["propagationPolicy"] = v.decode()
            elif num == 5:
                out.setdefault("dryRun", []).append(v.decode())
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise ApiError(400, f"error decoding DeleteOptions: {e}")
    return out
