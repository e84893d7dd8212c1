"""Seldon protocol checks of a prediction request's envelope, before any model sees it.

The router checks the shape of the data itself (`router.check_request`); this module checks the
rest of the envelope the Seldon Python server would otherwise choke on (500) or silently accept
(a prediction for garbage): one payload field of the right type, valid base64, `meta` an object
with fields of Seldon's types, `names` a list of strings, and no booleans among the numbers
(numpy would quietly turn `true` into 1.0). Each refusal names the field and what it must be.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

MAX_DIMENSIONS = 32  # numpy's limit
PAYLOAD_FIELDS = ("data", "strData", "jsonData", "binData")
META_FIELDS: dict[str, tuple[type, str]] = {
    "puid": (str, "a string"),
    "tags": (dict, "an object"),
    "routing": (dict, "an object of integers"),
    "requestPath": (dict, "an object of strings"),
    "metrics": (list, "a list of objects"),
}


class EnvelopeError(ValueError):
    """What is wrong with a request's envelope, for a 400."""


def check_envelope(payload: dict[str, Any], body: bytes) -> None:
    """Raise EnvelopeError naming the first mistake of `payload` (parsed from `body`)."""
    present = [k for k in PAYLOAD_FIELDS if k in payload]
    if len(present) > 1:
        raise EnvelopeError(f"the request holds {' and '.join(repr(k) for k in present)}: send exactly one of "
                            f"{', '.join(PAYLOAD_FIELDS)}")
    if "meta" in payload:
        _check_meta(payload["meta"])
    if "strData" in payload and not isinstance(payload["strData"], str):
        raise EnvelopeError(f'"strData" must be a string, got a JSON {json_type(payload["strData"])}')
    if "binData" in payload:
        _check_base64(payload["binData"])
    if "jsonData" in payload:
        data = payload["jsonData"]
        if not isinstance(data, dict | list):
            raise EnvelopeError(f'"jsonData" must be an object (like {{"instances": [...]}}) or a list, '
                                f"got a JSON {json_type(data)}")
        if isinstance(data, dict) and "instances" in data and not isinstance(data["instances"], list):
            raise EnvelopeError(f'"jsonData.instances" must be a list of examples, got a JSON '
                                f'{json_type(data["instances"])}')
    data = payload.get("data")
    if isinstance(data, dict) and "names" in data:
        names = data["names"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise EnvelopeError('"data.names" must be a list of strings (one name per feature)')
    if isinstance(data, dict) and isinstance(data.get("ndarray"), list) and data["ndarray"] \
            and isinstance(data["ndarray"][0], list):
        _check_rectangular(data["ndarray"])
    if b"true" in body or b"false" in body:  # rare: only then walk the examples for booleans
        for where, examples in _examples(payload):
            if _holds_boolean(examples):
                raise EnvelopeError(f'"{where}" holds true/false: examples are numbers or strings')


def _check_rectangular(rows: list[Any]) -> None:
    """Rows of arrays must form one regular array of at most 32 dimensions (what numpy, and so
    the model server, can take); numpy checks that at C speed."""
    import numpy as np

    deep = EnvelopeError(f'"data.ndarray" is nested deeper than {MAX_DIMENSIONS} levels')
    try:
        ndim = np.asarray(rows).ndim
    except ValueError as exc:
        if "maximum" in str(exc) and "inhomogeneous" not in str(exc):
            raise deep from None
        raise EnvelopeError('"data.ndarray" is ragged: every example must have the same shape '
                            "(an array inside a row where others hold numbers, or rows of different sizes)") from None
    if ndim > MAX_DIMENSIONS:
        raise deep


def _check_meta(meta: Any) -> None:
    if not isinstance(meta, dict):
        raise EnvelopeError(f'"meta" must be an object (like {{"tags": {{...}}}}), got a JSON {json_type(meta)}')
    for name, (kind, what) in META_FIELDS.items():
        if name not in meta:
            continue
        value = meta[name]
        ok = isinstance(value, kind)
        if ok and name == "routing":
            ok = all(isinstance(v, int) and not isinstance(v, bool) for v in value.values())
        elif ok and name == "requestPath":
            ok = all(isinstance(v, str) for v in value.values())
        elif ok and name == "metrics":
            ok = all(isinstance(v, dict) for v in value)
        if not ok:
            raise EnvelopeError(f'"meta.{name}" must be {what}, got {_preview(value)}')


def _check_base64(value: Any) -> None:
    if not isinstance(value, str):
        raise EnvelopeError(f'"binData" must be a base64 string, got a JSON {json_type(value)}')
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EnvelopeError(f'"binData" is not valid base64 ({exc}): encode the bytes with standard base64')


def _examples(payload: dict[str, Any]) -> list[tuple[str, Any]]:
    found = []
    data = payload.get("data")
    if isinstance(data, dict):
        found.append(("data.ndarray", data.get("ndarray")))
        tensor = data.get("tensor")
        if isinstance(tensor, dict):
            found.append(("data.tensor.values", tensor.get("values")))
    json_data = payload.get("jsonData")
    if isinstance(json_data, dict):
        found.append(("jsonData.instances", json_data.get("instances")))
    elif isinstance(json_data, list):
        found.append(("jsonData", json_data))
    return found


def _holds_boolean(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bool):
            return True
        if isinstance(item, list):
            stack.extend(item)
    return False


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (for messages)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
