"""What the API server takes in one request, as kube-apiserver bounds it.

- Body size: 3 MiB (kube-apiserver's `MaxRequestBodyBytes`), refused with 413 before parsing.
- JSON nesting: at most `MAX_DEPTH` levels, refused with 400 before any parser recurses
  (kube-apiserver allows 10,000 levels to a Go decoder; a Python parser hits its recursion limit
  near 1,000, which used to end in a 500).
- Duplicate keys in a JSON object: refused with 400 naming the key, as kube-apiserver's strict
  field validation does (`fieldValidation=Strict`, kubectl's default); `fieldValidation=Ignore`
  or `Warn` let the last value win, as the API server then does.

`limits_middleware` applies them to every write (POST, PUT, PATCH) before a handler reads the
body; the handlers then parse a body known to be bounded.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from cdl.api.common import MAX_NESTING_DEPTH
from cdl.devcluster.errors import ApiError

MAX_BODY_BYTES = 3 * 1024 * 1024
MAX_DEPTH = MAX_NESTING_DEPTH
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH"})
PROTOBUF_MAGIC = b"k8s\x00"
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def json_depth(raw: bytes) -> int:
    """How deeply a JSON text nests (strings skipped), without recursion: 0 for a scalar."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRING.sub(b'""', raw)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


class DuplicateKey(ValueError):
    def __init__(self, key: str, path: str) -> None:
        self.key, self.path = key, path
        super().__init__(f'duplicate field "{key}"' + (f" in {path}" if path else ""))


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKey(key, "")
        seen[key] = value
    return seen


def check_json(raw: bytes, *, strict: bool = True) -> None:
    """Raise ApiError when a JSON body nests deeper than MAX_DEPTH or (strict) repeats a key."""
    depth = json_depth(raw)
    if depth > MAX_DEPTH:
        raise ApiError(400, f"the request body nests {depth} levels deep; at most {MAX_DEPTH} are allowed",
                       reason="BadRequest")
    if strict:
        try:
            json.loads(raw, object_pairs_hook=_refuse_duplicates)
        except DuplicateKey as exc:
            raise ApiError(400, f"strict decoding error: {exc}", reason="BadRequest") from None
        except ValueError:
            pass  # not JSON (YAML, or malformed): the handler says what is wrong with it


@web.middleware
async def limits_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.method in WRITE_METHODS:
        too_large = ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes",
                             reason="RequestEntityTooLarge")
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise too_large
        raw = await request.read()  # cached: the handler reads the same bytes
        if len(raw) > MAX_BODY_BYTES:
            raise too_large
        if not raw.startswith(PROTOBUF_MAGIC):  # JSON, or YAML (its flow style nests the same way)
            strict = request.query.get("fieldValidation", "Strict") not in ("Ignore", "Warn")
            check_json(raw, strict=strict)
    return await handler(request)
