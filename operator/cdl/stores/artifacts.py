"""Artifact stores: model packages, checkpoints, reports and exports, addressed by key and uri.

One interface (`ArtifactStore`), two implementations: a directory on the filesystem (the embedded
platform's default, `artifacts_file.FileArtifactStore`) and an S3/MinIO bucket under a prefix
(`artifacts_s3.S3ArtifactStore`). What every store promises:

- keys are '/'-separated paths relative to the store; a key that could escape it ('..', an
  absolute path, a backslash, an empty segment) is refused with `InvalidArtifactKey`;
- every stored artifact carries its sha256 (computed while it is written) and `stat` returns it;
- reads verify that sha256: the one the caller asks for, else the one recorded at write time,
  and raise `ArtifactIntegrityError` (leaving nothing at `dest`) when the bytes differ;
- a prefix names a folder: `list("a/b")`, `get_dir("a/b", ...)`, `delete_prefix("a/b")` see
  `a/b/x` and `a/b/c/y`, never `a/bc`;
- `uri_for` / `key_for` map keys to `file:///...` or `s3://bucket/prefix/...` uris and back;
- an unreachable S3 endpoint raises `StoreUnavailable` (a `cdl.errors.TransientError`).

Importing this module needs only the standard library; the MinIO SDK is imported when an S3
store is opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from cdl.stores.errors import (
    ArtifactIntegrityError,
    ArtifactNotFound,
    InvalidArtifactKey,
)

__all__ = [
    "ArtifactIntegrityError",
    "ArtifactNotFound",
    "ArtifactStore",
    "InvalidArtifactKey",
    "S3Settings",
    "StoredArtifact",
    "s3_settings",
    "validate_key",
    "validate_prefix",
]

CHUNK = 1024 * 1024
MAX_KEY_BYTES = 1024
RESERVED_PREFIX = ".cdl-"  # the file store keeps checksums and temporary files under .cdl-*/


@dataclass(frozen=True)
class StoredArtifact:
    """One stored object: where it is, its store-relative key, its sha256 and its size."""

    uri: str  # file:///abs/path/key or s3://bucket/prefix/key
    key: str  # the store-relative key, '/'-separated
    sha256: str  # '' only for an S3 object written by something other than cdl
    bytes: int


@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3 or MinIO endpoint. `repr` never shows the secret key."""

    endpoint: str  # host:port, or http(s)://host:port (the scheme then decides `secure`)
    access_key: str
    secret_key: str = field(repr=False)
    secure: bool = False
    region: str | None = None

    def __repr__(self) -> str:
        return (f"S3Settings(endpoint={self.endpoint!r}, access_key={self.access_key!r}, secret_key='***', "
                f"secure={self.secure!r}, region={self.region!r})")

    def host_and_secure(self) -> tuple[str, bool]:
        """The endpoint as the MinIO SDK wants it (no scheme), and whether to use TLS."""
        endpoint = self.endpoint.strip()
        if "://" in endpoint:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
                raise ValueError(f"S3 endpoint {endpoint!r}: expected host:port or http(s)://host:port")
            return parts.netloc, parts.scheme == "https"
        if not endpoint or "/" in endpoint:
            raise ValueError(f"S3 endpoint {endpoint!r}: expected host:port or http(s)://host:port")
        return endpoint, self.secure


def s3_settings(endpoint: str | None, access_key: Any = "", secret_key: Any = "", secure: bool = False,
                region: str | None = None) -> S3Settings | None:
    """The one way cdl builds S3 settings, from whatever holds them (the operator configuration, a
    cluster engine's settings, the environment): None without an endpoint; pydantic `SecretStr`
    values are unwrapped here and nowhere else."""
    if not endpoint:
        return None

    def plain(value: Any) -> str:
        if value is None:
            return ""
        getter = getattr(value, "get_secret_value", None)
        return getter() if getter else str(value)

    return S3Settings(endpoint=endpoint, access_key=plain(access_key), secret_key=plain(secret_key),
                      secure=secure, region=region)


@runtime_checkable
class ArtifactStore(Protocol):
    """A place to keep artifacts by key; see the module docstring for what every store promises."""

    base_uri: str

    def put_file(self, key: str, path: Path) -> StoredArtifact: ...
    def put_bytes(self, key: str, data: bytes) -> StoredArtifact: ...
    def put_dir(self, prefix: str, directory: Path) -> list[StoredArtifact]: ...
    def get_file(self, key: str, dest: Path, sha256: str | None = None) -> Path: ...
    def get_bytes(self, key: str) -> bytes: ...
    def get_dir(self, prefix: str, dest: Path) -> Path: ...
    def open_read(self, key: str) -> BinaryIO: ...
    def exists(self, key: str) -> bool: ...
    def stat(self, key: str) -> StoredArtifact | None: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def uri_for(self, key: str) -> str: ...
    def key_for(self, uri: str) -> str: ...


# ---------------------------------------------------------------------------------------------
# keys


def validate_key(key: str) -> str:
    """Return `key` if it is a safe store-relative path, else raise InvalidArtifactKey saying why."""
    if not isinstance(key, str) or not key:
        raise InvalidArtifactKey(f"invalid artifact key {key!r}: a key must be a non-empty string")
    if key.endswith("/") and not key.startswith("/"):
        raise InvalidArtifactKey(f"invalid artifact key {key!r}: a key must not end with '/' (that is a prefix)")
    _check_path(key, "key")
    return key


def validate_prefix(prefix: str) -> str:
    """Return the prefix without a trailing '/' ('' = the whole store), or raise InvalidArtifactKey."""
    if not isinstance(prefix, str):
        raise InvalidArtifactKey(f"invalid artifact prefix {prefix!r}: a prefix must be a string")
    stripped = prefix[:-1] if prefix.endswith("/") else prefix
    if stripped:
        _check_path(stripped, "prefix")
    elif prefix == "/":
        raise InvalidArtifactKey("invalid artifact prefix '/': absolute paths are not allowed; use '' for the whole store")
    return stripped


def _check_path(path: str, what: str) -> None:
    def bad(why: str) -> InvalidArtifactKey:
        return InvalidArtifactKey(f"invalid artifact {what} {path!r}: {why}")

    if path.startswith("/"):
        raise bad("absolute paths are not allowed; keys are relative to the store")
    if "\\" in path:
        raise bad("backslashes are not allowed; separate folders with '/'")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise bad("control characters are not allowed")
    if len(path.encode("utf-8")) > MAX_KEY_BYTES:
        raise bad(f"longer than {MAX_KEY_BYTES} bytes")
    segments = path.split("/")
    if any(s in (".", "..") for s in segments):
        raise bad("'.' and '..' segments are not allowed")
    if "" in segments:
        raise bad("empty path segments ('//') are not allowed")
    if segments[0].startswith(RESERVED_PREFIX):
        raise bad(f"names starting with {RESERVED_PREFIX!r} are reserved by the store")


def join_key(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


def under_prefix(key: str, prefix: str) -> bool:
    return not prefix or key.startswith(prefix + "/")


# ---------------------------------------------------------------------------------------------
# streaming helpers shared by the stores


def copy_hashing(src: BinaryIO, dst: BinaryIO) -> tuple[str, int]:
    """Copy src to dst in chunks; return (sha256 hex, bytes copied)."""
    digest, size = hashlib.sha256(), 0
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        dst.write(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def sha256_file(path: Path) -> tuple[str, int]:
    """The sha256 and size of a local file, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def receive_verified(chunks: Iterator[bytes], dest: Path, uri: str, expected: str | None) -> Path:
    """Write chunks to a temporary file beside dest, check the sha256, then rename it into place.

    Nothing is left at `dest` when the check fails (ArtifactIntegrityError) or the read breaks.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if expected and actual != expected.lower():
            raise ArtifactIntegrityError(uri, expected, actual)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return dest


class VerifyingReader(io.RawIOBase):
    """A streaming read that hashes as it goes and raises ArtifactIntegrityError at the end of the
    stream when the bytes differ from `expected` (no check when expected is empty)."""

    def __init__(self, raw: BinaryIO, uri: str, expected: str | None, on_close=None) -> None:
        super().__init__()
        self._raw, self._uri, self._expected = raw, uri, (expected or "").lower()
        self._digest = hashlib.sha256()
        self._on_close = on_close
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._raw.read(len(buffer))
        if not data:
            self._check()
            return 0
        n = len(data)
        buffer[:n] = data
        self._digest.update(data)
        return n

    def _check(self) -> None:
        if self._checked:
            return
        self._checked = True
        actual = self._digest.hexdigest()
        if self._expected and actual != self._expected:
            raise ArtifactIntegrityError(self._uri, self._expected, actual)

    def close(self) -> None:
        if not self.closed:
            try:
                self._raw.close()
            finally:
                if self._on_close is not None:
                    self._on_close()
        super().close()


def verifying_stream(raw: BinaryIO, uri: str, expected: str | None, on_close=None) -> BinaryIO:
    return io.BufferedReader(VerifyingReader(raw, uri, expected, on_close), buffer_size=CHUNK)  # type: ignore[return-value]


def local_files(directory: Path) -> list[tuple[str, Path]]:
    """(relative '/'-separated path, path) of every regular file under directory, sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} is not a directory")
    found = []
    for root, dirs, files in os.walk(directory, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if path.is_file():
                found.append((path.relative_to(directory).as_posix(), path))
    found.sort()
    return found


# ---------------------------------------------------------------------------------------------
# uris


def split_s3_uri(uri: str) -> tuple[str, str]:
    """('bucket', 'prefix/without/slashes') of s3://bucket/prefix."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "s3" or not parts.netloc:
        raise ValueError(f"{uri!r} is not an s3://bucket/prefix uri")
    if parts.query or parts.fragment:
        raise ValueError(f"{uri!r}: s3 uris take no query or fragment")
    prefix = parts.path.strip("/")
    if prefix:
        validate_prefix(prefix)
    return parts.netloc, prefix


def file_uri_path(uri: str) -> Path:
    """The absolute path of a file:///abs/path uri (percent-decoded)."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "file":
        raise ValueError(f"{uri!r} is not a file:// uri")
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"{uri!r}: file uris must be local (file:///abs/path)")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise ValueError(f"{uri!r}: file uris need an absolute path (file:///abs/path)")
    return Path(path)
