"""A small client for a Deployment's endpoint, used by `cdl predict`.

Standard library only, so it works wherever the CLI does. `predict(url, data)` wraps a list of
examples as `{"data": {"ndarray": [...]}}` (Seldon protocol) or, for an Open Inference Protocol
URL (`.../v2/models/<name>/infer`), as one input tensor (`BYTES` for texts, `FP64` for numbers);
a dict is sent as it is. It returns the decoded answer; an HTTP error becomes `PredictionError`
with the server's own message.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class PredictionError(Exception):
    """The endpoint refused or failed the request; `status` is the HTTP status (0: unreachable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message


def payload(data: Any, v2: bool = False) -> dict[str, Any]:
    """The request body for `data`: a full message (dict) or a list of examples."""
    if isinstance(data, dict):
        return data
    rows = list(data) if isinstance(data, (list, tuple)) else [data]
    if not v2:
        return {"data": {"ndarray": rows}}
    texts = [r[0] if isinstance(r, list) and len(r) == 1 and isinstance(r[0], str) else r for r in rows]
    if all(isinstance(t, str) for t in texts):
        return {"inputs": [{"name": "input", "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}]}
    shape, flat = [len(rows)], list(rows)
    while flat and all(isinstance(r, list) for r in flat) and len({len(r) for r in flat}) == 1:
        shape.append(len(flat[0]))
        flat = [v for r in flat for v in r]
    return {"inputs": [{"name": "input", "shape": shape, "datatype": "FP64", "data": flat}]}


def is_v2(url: str) -> bool:
    return "/v2/models/" in url


def predict(url: str, data: Any, timeout: float = 30.0) -> dict[str, Any]:
    """POST `data` to the endpoint and return the JSON answer."""
    body = json.dumps(payload(data, is_v2(url))).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read().decode("utf-8", errors="replace")
        message = raw
        try:
            parsed = json.loads(raw)
            message = str(((parsed.get("status") or {}).get("info")) or raw) if isinstance(parsed, dict) else raw
        except ValueError:
            pass
        raise PredictionError(exc.code, message.strip()) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PredictionError(0, f"{url} unreachable: {reason}") from None


def predictions(answer: dict[str, Any]) -> list[Any]:
    """The per-example predictions in an answer (`data.ndarray`, or `jsonData.predictions`)."""
    data = answer.get("data")
    if isinstance(data, dict) and isinstance(data.get("ndarray"), list):
        return list(data["ndarray"])
    json_data = answer.get("jsonData")
    if isinstance(json_data, dict) and isinstance(json_data.get("predictions"), list):
        return list(json_data["predictions"])
    outputs = answer.get("outputs")
    if isinstance(outputs, list) and outputs:  # Open Inference Protocol
        from cdl.quality.monitoring import v2_rows

        return list(v2_rows(outputs[0]) or [])
    return []
