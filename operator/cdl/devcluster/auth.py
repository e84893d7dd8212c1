"""Bearer-token authentication: one token per data directory, written 0600 beside the data."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz"})


def load_or_create_token(path: Path) -> str:
    """The token in `path`, created on first use so kubeconfigs stay valid across restarts."""
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def authorized(header: str | None, token: str) -> bool:
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())
