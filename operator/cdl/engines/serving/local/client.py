"""A small client for a Deployment's endpoint (Seldon protocol), used by `cdl predict`.

Standard library only, so it works wherever the CLI does. `predict(url, data)` wraps a list of
examples as `{"data": {"ndarray": [...]}}` (a dict is sent as it is) and returns the decoded
answer; an HTTP error becomes `PredictionError` with the server's own message.
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


def payload(data: Any) -> dict[str, Any]:
    """The request body for `data`: a full Seldon message (dict) or a list of examples."""
    if isinstance(data, dict):
        return data
    if isinstance(data, (list, tuple)):
        return {"data": {"ndarray": list(data)}}
    return {"data": {"ndarray": [data]}}


def predict(url: str, data: Any, timeout: float = 30.0) -> dict[str, Any]:
    """POST `data` to the endpoint and return the JSON answer."""
    body = json.dumps(payload(data)).encode()
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
    return []
