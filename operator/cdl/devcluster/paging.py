"""List paging: `limit` and the opaque `continue` token (`kubectl get --chunk-size`, informers).

A token carries the resourceVersion of the first page and the key of the last item sent; the next
page starts after that key. Every page reports the first page's resourceVersion, as kube does.
Unlike etcd, the store keeps no snapshots, so later pages show the objects as they are now.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from cdl.devcluster.errors import bad_request
from cdl.devcluster.store import Stored


@dataclass
class Page:
    items: list[Stored]
    resource_version: str
    continue_token: str = ""
    remaining: int | None = None

    def list_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"resourceVersion": self.resource_version}
        if self.continue_token:
            meta["continue"] = self.continue_token
            meta["remainingItemCount"] = self.remaining
        return meta


def _key(st: Stored) -> str:
    meta = st.obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def encode(rv: str, start: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": int(rv), "start": start}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(token: str) -> tuple[str, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if data.get("v") != "meta.k8s.io/v1" or not isinstance(data.get("start"), str):
            raise ValueError
        return str(int(data["rv"])), data["start"]
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError):
        raise bad_request("continue key is not valid: the continue token could not be decoded")


def page(items: list[Stored], limit: str | None, cont: str | None, current_rv: str) -> Page:
    """One page of `items` (sorted by namespace/name)."""
    rv = current_rv
    if cont:
        rv, start = decode(cont)
        items = [st for st in items if _key(st) > start]
    try:
        n = int(limit) if limit else 0
    except ValueError:
        raise bad_request(f"invalid limit: {limit!r}")
    if n <= 0 or len(items) <= n:
        return Page(items, rv)
    shown = items[:n]
    return Page(shown, rv, encode(rv, _key(shown[-1])), len(items) - n)
