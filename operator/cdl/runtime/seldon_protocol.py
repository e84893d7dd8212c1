"""Seldon protocol checks of a prediction request, before any model sees it: one copy, run in two places.

The model server (`CdlPredictor.predict_raw`, on the body seldon-core's Flask already parsed) runs
`check_payload(..., shapes=False)` on every request, so nothing it would choke on (500) or silently
accept (a prediction for garbage: numpy turns `true` into 1.0) reaches the model; the shape of the
examples is checked by its own numpy pass over them (`validate_rows`). The router parses nothing
on the way through (the body's size costs it nothing) and runs the full check, shapes included,
only on a request the model server refused, to answer with the message that names the field.

What is checked: `data` holds a non-empty `ndarray` of rows of one type and length, or a `tensor`
whose shape fits its values; else exactly one of `strData`, `jsonData`, `binData`, each of its
type (valid base64); `meta` an object with fields of Seldon's types; `names` a list of strings;
no booleans among the numbers; `data.ndarray` regular and at most 32 dimensions deep. Standard
library only (numpy lazily): it runs in seldon-core's environment as well as the router's.
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


def check_payload(payload: Any, body: bytes | None, shapes: bool = True) -> None:
    """Raise EnvelopeError naming the first mistake of `payload` (parsed from `body`; None when
    the bytes are not at hand: the examples are then walked for booleans). `shapes=False` leaves
    the regularity of `data.ndarray` to the caller's own numpy pass over the rows."""
    if not isinstance(payload, dict):
        raise EnvelopeError(f'the request must be a JSON object like {{"data": {{"ndarray": [...]}}}}, '
                            f"got a JSON {json_type(payload)}")
    if "data" in payload:
        _check_data(payload["data"], shapes)
    elif not any(k in payload for k in ("strData", "jsonData", "binData")):
        raise EnvelopeError('the request must hold "data" (with "ndarray"), "strData" or "jsonData"')
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
    if body is None or b"true" in body or b"false" in body:  # rare: only then walk the examples
        for where, examples in _examples(payload):
            if _holds_boolean(examples):
                raise EnvelopeError(f'"{where}" holds true/false: examples are numbers or strings')


def _check_data(data: Any, shapes: bool) -> None:
    if not isinstance(data, dict):
        raise EnvelopeError('"data" must be an object holding "ndarray" (or "tensor")')
    if "ndarray" in data:
        rows = data["ndarray"]
        if not isinstance(rows, list):
            raise EnvelopeError(f'"data.ndarray" must be a list of examples, got a JSON {json_type(rows)}')
        if not rows:
            raise EnvelopeError('"data.ndarray" is empty: send one row per example')
        if not shapes:
            return
        kinds = {json_type(r) for r in rows}
        if len(kinds) > 1:
            raise EnvelopeError(f'"data.ndarray" mixes {" and ".join(sorted(kinds))} rows: every example must '
                                "have the same type and shape")
        if kinds == {"array"}:
            lengths = {len(r) for r in rows}
            if len(lengths) > 1:
                raise EnvelopeError(f'"data.ndarray" rows differ in length ({sorted(lengths)[:5]}): every example '
                                    "must have the same shape")
            _check_rectangular(rows)
    elif "tensor" in data:
        tensor = data["tensor"]
        if not isinstance(tensor, dict) or not isinstance(tensor.get("shape"), list) \
                or not isinstance(tensor.get("values"), list):
            raise EnvelopeError('"data.tensor" must hold "shape" (list of ints) and "values" (flat list)')
        size = 1
        for dim in tensor["shape"]:
            if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
                raise EnvelopeError(f'"data.tensor.shape" must be non-negative integers, got {tensor["shape"]}')
            size *= dim
        if size != len(tensor["values"]):
            raise EnvelopeError(f'"data.tensor.values" holds {len(tensor["values"])} numbers but shape '
                                f"{tensor['shape']} needs {size}")
    else:
        raise EnvelopeError('"data" must hold "ndarray" (a list of examples) or "tensor"')


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
