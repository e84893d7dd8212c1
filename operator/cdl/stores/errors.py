"""Errors of the stores layer, placed in cdl's one hierarchy (`cdl.errors`).

A store that cannot be reached is a `TransientError` (the reconciler retries with backoff); a
wrong key, table name or checksum is not, and says what is allowed or what differed.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from cdl.errors import CdlError, TransientError


class StoreUnavailable(TransientError):
    """PostgreSQL or the S3 endpoint is unreachable, restarting or busy; try again shortly."""

    reason = "StoreUnavailable"


class StoreError(CdlError):
    """A store refused an operation for a reason retrying will not fix."""

    reason = "StoreError"


class ArtifactError(StoreError):
    """Base of the artifact store's own errors."""

    reason = "ArtifactError"


class InvalidArtifactKey(ArtifactError, ValueError):
    """A key or prefix that could escape the store or is not a plain '/'-separated path."""

    reason = "InvalidArtifactKey"


class ArtifactNotFound(ArtifactError, FileNotFoundError):
    """No artifact under that key (also a FileNotFoundError, so `except OSError` keeps working)."""

    reason = "ArtifactNotFound"


class ArtifactIntegrityError(ArtifactError):
    """The bytes read back do not have the sha256 they were stored (or asked for) with."""

    reason = "ArtifactIntegrityError"

    def __init__(self, uri: str, expected: str, actual: str) -> None:
        self.uri, self.expected, self.actual = uri, expected, actual
        super().__init__(f"artifact {uri} failed its integrity check: expected sha256 {expected}, got {actual}")


class InvalidTableName(StoreError, ValueError):
    """A labels table name that is not a plain lowercase PostgreSQL identifier."""

    reason = "InvalidTableName"


class RecordNotFound(StoreError, LookupError):
    """An update names a record (run, trial, model version) that was never recorded."""

    reason = "RecordNotFound"


class MigrationError(StoreError):
    """A schema migration failed or an applied migration's file was changed afterwards."""

    reason = "MigrationError"


def mask_url(url: str) -> str:
    """The url (or libpq key=value string) with any password replaced by '***', for logs and errors."""
    masked = _PASSWORD_PARAM.sub(r"\1***", url)
    if "://" not in masked:
        return masked
    try:
        parts = urlsplit(masked)
        password = parts.password
    except ValueError:
        return "<unparseable url>"
    if not password:
        return masked
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


_PASSWORD_PARAM = re.compile(r"((?:^|[?&\s])password\s*=\s*)('[^']*'|[^&\s]*)", re.IGNORECASE)
