"""Kube's protobuf encoding of built-in kinds, read into the JSON form the rest of the server uses.

kubectl's typed `create` commands (deployment, job, service, role, quota, pdb, ingress, token...)
and helm's deletes send protobuf bodies and never fall back to JSON after a 415. The decoder is
generic: it walks the `k8s\\0` envelope (runtime.Unknown) and then Kubernetes' own field tables
(`kube_proto_fields.json`, generated from k8s.io/api's generated.proto by
scripts/gen_kube_proto_fields.py), so every kind of those group-versions decodes. Zero values
of optional fields are dropped, as Go's `omitempty` JSON encoding does.
"""

from __future__ import annotations

import base64
import datetime
import functools
import json
import struct
from pathlib import Path
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
            if pos + length > len(buf):
                raise ValueError("truncated length-delimited field")
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.append((num, value))
    return out


# --- decoding by Kubernetes' own field tables ---------------------------------------------------

_TABLE_FILE = Path(__file__).with_name("kube_proto_fields.json")
META = "io.k8s.apimachinery.pkg.apis.meta.v1"
# Messages that JSON shows as a scalar (timestamps, quantities, int-or-string, raw JSON).
_TIME = {f"{META}.Time", f"{META}.MicroTime"}
_QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
_INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
_RAW_JSON = {"io.k8s.apimachinery.pkg.runtime.RawExtension", f"{META}.FieldsV1"}
_NOT_SPECIAL = object()


@functools.cache
def _messages() -> dict[str, list[tuple[int, str, str, Any, bool]]]:
    """message name -> fields (number, JSON name, label o/r/m/i, type, keep a zero value)."""
    data = json.loads(_TABLE_FILE.read_text())
    return {name: [tuple(f) for f in flds] for name, flds in data["messages"].items()}  # type: ignore[misc]


def message_for(api_version: str, kind: str) -> str | None:
    """The protobuf message of a built-in kind: `apps/v1` Deployment -> io.k8s.api.apps.v1.Deployment."""
    group, _, version = api_version.rpartition("/")
    if group == "meta.k8s.io" or (kind in ("DeleteOptions", "Status") and not group):
        package = META
    else:
        package = f"io.k8s.api.{group.split('.')[0] if group else 'core'}.{version}"
    name = f"{package}.{kind}"
    return name if name in _messages() else None


def _signed(value: int, bits: int) -> int:
    value &= (1 << 64) - 1
    if value >= 1 << 63:
        value -= 1 << 64
    return value if bits == 64 else ((value + (1 << 31)) % (1 << 32)) - (1 << 31)


def _scalar(typ: str, value: Any) -> Any:
    if typ == "string":
        return value.decode()
    if typ == "bytes":
        return base64.b64encode(value).decode()
    if typ == "bool":
        return bool(value)
    if typ in ("int32", "int64"):
        return _signed(value, 64 if typ == "int64" else 32)
    if typ in ("uint32", "uint64"):
        return value
    if typ == "double":
        return struct.unpack("<d", value)[0]
    if typ == "float":
        return struct.unpack("<f", value)[0]
    raise ValueError(f"unsupported protobuf type {typ}")


def _repeated_scalars(typ: str, value: Any) -> list[Any]:
    """A repeated numeric field may arrive packed (one length-delimited run of varints)."""
    if isinstance(value, bytes) and typ in ("int32", "int64", "uint32", "uint64", "bool"):
        out, pos = [], 0
        while pos < len(value):
            v, pos = _varint(value, pos)
            out.append(_scalar(typ, v))
        return out
    return [_scalar(typ, value)]


def _special(name: str, buf: bytes) -> Any:
    if name in _TIME:
        seconds = nanos = 0
        for num, v in fields(buf):
            if num == 1:
                seconds = _signed(v, 64)
            elif num == 2:
                nanos = v
        if not seconds and not nanos:
            return None
        stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
        if name.endswith("MicroTime"):
            return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos // 1000:06d}Z"
        return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    if name == _QUANTITY:
        return next((v.decode() for num, v in fields(buf) if num == 1), "0")
    if name == _INT_OR_STRING:
        f = dict(fields(buf))
        return f.get(3, b"").decode() if f.get(1) == 1 else _signed(f.get(2, 0), 32)
    if name in _RAW_JSON:
        raw = next((v for num, v in fields(buf) if num == 1), b"")
        return json.loads(raw) if raw else None
    if name == f"{META}.Duration":
        return _go_duration(_signed(dict(fields(buf)).get(1, 0), 64))
    return _NOT_SPECIAL



def _go_duration(ns: int) -> str:
    """Go's time.Duration.String() for whole seconds and above, e.g. `1h0m0s`."""
    seconds = ns / 1e9
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    frac = seconds - int(seconds)
    secs = f"{s + frac:g}s"
    return (f"{h}h{m}m{secs}" if h else f"{m}m{secs}" if m else secs) if ns else "0s"


def _is_zero(value: Any) -> bool:
    return value is None or value == "" or value is False or value == 0 or value == {} or value == []


def decode_message(name: str, buf: bytes) -> Any:
    """One protobuf message as the JSON kube would serve for it."""
    special = _special(name, buf)
    if special is not _NOT_SPECIAL:
        return special
    table = _messages().get(name)
    if table is None:
        raise ValueError(f"unknown protobuf message {name}")
    if len(table) == 1 and table[0][1] == "items" and not table[0][3].startswith("io.k8s."):
        return [_scalar(table[0][3], v) for num, v in fields(buf) if num == 1]  # a named []string
    by_num = {f[0]: f for f in table}
    out: dict[str, Any] = {}
    for num, value in fields(buf):
        spec = by_num.get(num)
        if spec is None:
            continue  # a field of a newer release: kube ignores it too
        _, key, label, typ, _ = spec
        if label == "m":
            k, v = _map_entry(value)
            kt, vt = typ
            out.setdefault(key, {})[_scalar(kt, k) if isinstance(k, bytes) else k] = (
                decode_message(vt, v) if vt.startswith("io.k8s.") else _scalar(vt, v))
        elif label == "i":
            inlined = decode_message(typ, value)
            if isinstance(inlined, dict):
                out.update(inlined)
        elif label == "r":
            items = out.setdefault(key, [])
            if typ.startswith("io.k8s."):
                items.append(decode_message(typ, value))
            else:
                items.extend(_repeated_scalars(typ, value))
        else:
            out[key] = decode_message(typ, value) if typ.startswith("io.k8s.") else _scalar(typ, value)
    for _, key, label, _, keep_zero in table:
        value = out.get(key)
        if key in out and _is_zero(value) and not (keep_zero and label == "o" and value not in (None, "")):
            del out[key]
    return out


def _map_entry(buf: bytes) -> tuple[Any, Any]:
    key: Any = b""
    value: Any = b""
    for num, v in fields(buf):
        if num == 1:
            key = v
        elif num == 2:
            value = v
    return key, value


def _envelope(raw: bytes) -> tuple[str, str, bytes]:
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
    return api_version, kind, inner


def type_meta(raw: bytes) -> dict[str, str]:
    """apiVersion and kind from a protobuf envelope, whatever the kind."""
    try:
        api_version, kind, _ = _envelope(raw)
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise ApiError(400, f"error decoding protobuf body: {e}")
    return {"apiVersion": api_version, "kind": kind}


def decode_object(raw: bytes) -> dict[str, Any]:
    """A `k8s\\0`-framed protobuf object (runtime.Unknown) as its JSON form."""
    if not raw.startswith(MAGIC):
        raise ApiError(415, "the body of the request was in an unknown format - accepted media types include: "
                       "application/json, application/yaml, application/vnd.kubernetes.protobuf")
    try:
        api_version, kind, inner = _envelope(raw)
        name = message_for(api_version, kind)
        if name is None:
            raise ApiError(415, f"protobuf bodies of kind {kind or 'unknown'} in {api_version or 'no group'} "
                           "are not supported; send JSON")
        obj = decode_message(name, inner)
    except (ValueError, IndexError, UnicodeDecodeError, struct.error) as e:
        raise ApiError(400, f"error decoding protobuf body: {e}")
    return {"apiVersion": api_version, "kind": kind, **obj}


def decode_delete_options(raw: bytes) -> dict[str, Any]:
    """A protobuf DeleteOptions (helm's typed client sends these) as its JSON form."""
    try:
        _, _, inner = _envelope(raw)
        return decode_message(f"{META}.DeleteOptions", inner)
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise ApiError(400, f"error decoding DeleteOptions: {e}")
