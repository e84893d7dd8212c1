"""Opening an artifact store by URL, and fetching any file:// or s3:// URI.

Apart from `cdl.stores.artifacts` (the protocol and the helpers every store shares) because this
is the one place that knows the concrete stores: they import the protocol module, and the opener
imports them, so nothing imports in a circle.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cdl.stores.artifacts import (
    CHUNK,
    RESERVED_PREFIX,
    S3Settings,
    file_uri_path,
    local_files,
    receive_verified,
    split_s3_uri,
)
from cdl.stores.artifacts_file import FileArtifactStore, recorded_sha256
from cdl.stores.errors import ArtifactNotFound

if TYPE_CHECKING:  # pragma: no cover
    from cdl.stores.artifacts_s3 import S3ArtifactStore


def open_artifact_store(url: str, s3: S3Settings | None = None) -> FileArtifactStore | S3ArtifactStore:
    """The store for `file:///abs/dir` (or a plain path) or `s3://bucket/prefix` (needs `s3`)."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("artifact store url is empty: use file:///abs/dir, a directory path or s3://bucket/prefix")
    url = url.strip()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "s3":
        if s3 is None:
            raise ValueError(f"artifact store {url} is on S3 but no S3 settings (endpoint, keys) were given")
        from cdl.stores.artifacts_s3 import S3ArtifactStore

        bucket, prefix = split_s3_uri(url)
        return S3ArtifactStore(bucket, prefix, s3)
    if scheme in ("", "file"):
        return FileArtifactStore(file_uri_path(url) if scheme else Path(url))
    raise ValueError(f"artifact store {url}: unsupported scheme {scheme!r}; use file:// or s3://")


def download_uri(uri: str, dest: Path, s3: S3Settings | None = None, sha256: str | None = None) -> Path:
    """Fetch a file:// or s3:// uri (or an absolute path) to dest and return dest.

    A uri that names a single object or file lands at `dest` as a file (checked against
    `sha256` when given, or against the checksum recorded by a cdl store); one that names a
    folder (a checkpoint, a model package directory) is copied under `dest` as a directory.
    """
    dest = Path(dest)
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme == "s3":
        if s3 is None:
            raise ValueError(f"cannot download {uri}: no S3 settings (endpoint, keys) were given")
        from cdl.stores.artifacts_s3 import S3ArtifactStore

        bucket, key = split_s3_uri(uri)
        store = S3ArtifactStore(bucket, "", s3, create_bucket=False)
        if key and store.exists(key):
            return store.get_file(key, dest, sha256)
        if store.list(key):
            return store.get_dir(key, dest)
        raise ArtifactNotFound(f"nothing stored at {uri}")
    if scheme not in ("", "file"):
        raise ValueError(f"cannot download {uri}: unsupported scheme {scheme!r}; use file:// or s3://")
    source = file_uri_path(uri) if scheme else Path(uri)
    if not source.is_absolute():
        raise ValueError(f"cannot download {uri}: a path must be absolute")
    if source.is_dir():
        if dest.exists() and not dest.is_dir():
            raise NotADirectoryError(f"cannot download folder {uri} to {dest}: it is a file")
        dest.mkdir(parents=True, exist_ok=True)
        for rel, path in local_files(source):
            if not rel.startswith(RESERVED_PREFIX):
                _copy_verified(path, dest / rel, path.as_uri(), recorded_sha256(path))
        return dest
    if not source.is_file():
        raise ArtifactNotFound(f"nothing stored at {uri}")
    return _copy_verified(source, dest, uri, sha256 or recorded_sha256(source))


def _copy_verified(source: Path, dest: Path, uri: str, sha256: str | None) -> Path:
    with open(source, "rb") as f:
        return receive_verified(iter(lambda: f.read(CHUNK), b""), dest, uri, sha256)
