"""The S3/MinIO artifact store (the MinIO SDK; also speaks to AWS S3 and moto's server).

Objects live at `<prefix>/<key>` in one bucket, created on the first write when missing. Each
object carries its sha256 as user metadata (`x-amz-meta-sha256`), so `stat` answers without a
download and reads are checked against it. Large files go up in 16 MiB multipart chunks.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import mimetypes
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from cdl.stores.artifacts import (
    CHUNK,
    S3Settings,
    StoredArtifact,
    join_key,
    local_files,
    receive_verified,
    sha256_file,
    split_s3_uri,
    validate_key,
    validate_prefix,
    verifying_stream,
)
from cdl.stores.errors import (
    ArtifactError,
    ArtifactIntegrityError,
    ArtifactNotFound,
    StoreError,
    StoreUnavailable,
)

PART_SIZE = 16 * 1024 * 1024
META_SHA256 = "sha256"  # sent as x-amz-meta-sha256
MISSING = {"NoSuchKey", "NoSuchBucket", "NotFound", "ResourceNotFound", "NoSuchObject"}
BUSY = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "XMinioServerNotInitialized"}


class S3ArtifactStore:
    """Artifacts as objects under s3://bucket/prefix."""

    def __init__(self, bucket: str, prefix: str, settings: S3Settings, *, create_bucket: bool = True,
                 part_size: int = PART_SIZE) -> None:
        from minio import Minio
        from minio.helpers import check_bucket_name

        try:
            check_bucket_name(bucket, strict=True)
        except ValueError:
            raise ValueError(f"invalid S3 bucket name {bucket!r}: use 3-63 lowercase letters, digits, '.' and '-'")
        host, secure = settings.host_and_secure()
        self.bucket = bucket
        self.prefix = validate_prefix(prefix.strip("/"))
        self.base_uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.endpoint = ("https://" if secure else "http://") + host
        self.part_size = part_size
        self._client = Minio(host, access_key=settings.access_key, secret_key=settings.secret_key, secure=secure,
                             region=settings.region, http_client=_http_client())
        self._bucket_ready = not create_bucket
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3ArtifactStore({self.base_uri} at {self.endpoint})"

    # -- writing -----------------------------------------------------------------------------

    def put_file(self, key: str, path: Path) -> StoredArtifact:
        name = self._object(key)
        sha256, size = sha256_file(Path(path))
        self._ensure_bucket()
        with open(path, "rb") as f:
            reader = _HashingReader(f)
            self._put(key, name, reader, size, sha256)
        if reader.hexdigest() != sha256:
            self.delete(key)
            raise ArtifactError(f"{path} changed while it was uploaded to {self.uri_for(key)}; nothing was stored")
        return StoredArtifact(uri=self.uri_for(key), key=key, sha256=sha256, bytes=size)

    def put_bytes(self, key: str, data: bytes) -> StoredArtifact:
        name = self._object(key)
        sha256 = hashlib.sha256(data).hexdigest()
        self._ensure_bucket()
        self._put(key, name, io.BytesIO(data), len(data), sha256)
        return StoredArtifact(uri=self.uri_for(key), key=key, sha256=sha256, bytes=len(data))

    def put_dir(self, prefix: str, directory: Path) -> list[StoredArtifact]:
        prefix = validate_prefix(prefix)
        return [self.put_file(join_key(prefix, rel), path) for rel, path in local_files(Path(directory))]

    def _put(self, key: str, name: str, data: Any, size: int, sha256: str) -> None:
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        with self._errors(f"writing {self.uri_for(key)}"):
            self._client.put_object(self.bucket, name, data, length=size, part_size=self.part_size,
                                    content_type=content_type, metadata={META_SHA256: sha256})

    # -- reading -----------------------------------------------------------------------------

    def get_file(self, key: str, dest: Path, sha256: str | None = None) -> Path:
        uri = self.uri_for(key)
        with self._errors(f"reading {uri}"), self._get(key) as resp:
            expected = sha256 or resp.headers.get("x-amz-meta-" + META_SHA256)
            return receive_verified(resp.stream(CHUNK), Path(dest), uri, expected)

    def get_bytes(self, key: str) -> bytes:
        uri = self.uri_for(key)
        with self._errors(f"reading {uri}"), self._get(key) as resp:
            data = resp.read()
            expected = resp.headers.get("x-amz-meta-" + META_SHA256)
        if expected:
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise ArtifactIntegrityError(uri, expected, actual)
        return data

    def get_dir(self, prefix: str, dest: Path) -> Path:
        prefix = validate_prefix(prefix)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for key in self.list(prefix):
            rel = key[len(prefix) + 1:] if prefix else key
            self.get_file(key, dest / rel)
        return dest

    def open_read(self, key: str) -> BinaryIO:
        """A streaming read; reading to the end checks the recorded sha256 (ArtifactIntegrityError)."""
        uri = self.uri_for(key)
        with self._errors(f"reading {uri}"):
            resp = self._open(key)
        return verifying_stream(resp, uri, resp.headers.get("x-amz-meta-" + META_SHA256), on_close=resp.release_conn)

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def stat(self, key: str) -> StoredArtifact | None:
        name = self._object(key)
        try:
            with self._errors(f"looking up {self.uri_for(key)}"):
                st = self._client.stat_object(self.bucket, name)
        except _Missing:
            return None
        sha256 = (st.metadata or {}).get("x-amz-meta-" + META_SHA256) or ""
        return StoredArtifact(uri=self.uri_for(key), key=key, sha256=sha256, bytes=int(st.size or 0))

    def list(self, prefix: str = "") -> list[str]:
        prefix = validate_prefix(prefix)
        full = "/".join(p for p in (self.prefix, prefix) if p)
        cut = len(self.prefix) + 1 if self.prefix else 0
        try:
            with self._errors(f"listing {self.base_uri}/{prefix}"):
                names = [o.object_name for o in self._client.list_objects(
                    self.bucket, prefix=(full + "/") if full else None, recursive=True) if not o.is_dir]
        except _Missing:
            return []
        return sorted(n[cut:] for n in names if n)

    # -- deleting ----------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        name = self._object(key)
        with contextlib.suppress(_Missing), self._errors(f"deleting {self.uri_for(key)}"):
            self._client.remove_object(self.bucket, name)

    def delete_prefix(self, prefix: str) -> int:
        from minio.deleteobjects import DeleteObject

        prefix = validate_prefix(prefix)
        keys = self.list(prefix)
        if not keys:
            return 0
        with self._errors(f"deleting {self.base_uri}/{prefix}"):
            failed = list(self._client.remove_objects(
                self.bucket, (DeleteObject(join_key(self.prefix, k)) for k in keys)))
        if failed:
            first = failed[0]
            raise StoreError(f"could not delete {len(failed)} object(s) under {self.base_uri}/{prefix}: "
                             f"{first.name}: {first.code} {first.message}")
        return len(keys)

    # -- uris --------------------------------------------------------------------------------

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object(key)}"

    def key_for(self, uri: str) -> str:
        try:
            bucket, name = split_s3_uri(uri)
        except ValueError:
            raise ValueError(f"{uri} is not in the artifact store {self.base_uri}") from None
        if bucket != self.bucket or not name or (self.prefix and not name.startswith(self.prefix + "/")):
            raise ValueError(f"{uri} is not in the artifact store {self.base_uri}")
        return validate_key(name[len(self.prefix) + 1:] if self.prefix else name)

    # -- internals ---------------------------------------------------------------------------

    def _object(self, key: str) -> str:
        return join_key(self.prefix, validate_key(key))

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        from minio.error import S3Error

        with self._lock, self._errors(f"creating bucket {self.bucket}"):
            if self._bucket_ready:
                return
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket, location=None)
                except S3Error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
            self._bucket_ready = True

    def _open(self, key: str) -> Any:
        name = self._object(key)
        try:
            return self._client.get_object(self.bucket, name)
        except Exception as exc:
            if getattr(exc, "code", None) in MISSING:
                raise ArtifactNotFound(f"no artifact {self.uri_for(key)}") from None
            raise

    @contextlib.contextmanager
    def _get(self, key: str) -> Iterator[Any]:
        resp = self._open(key)
        try:
            yield resp
        finally:
            resp.close()
            resp.release_conn()

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """S3 and connection errors as cdl errors: unreachable or busy -> StoreUnavailable."""
        import urllib3
        from minio.error import InvalidResponseError, S3Error, ServerError

        try:
            yield
        except S3Error as exc:
            if exc.code in MISSING:
                raise _Missing(str(exc.code)) from None
            if exc.code in BUSY:
                raise StoreUnavailable(f"S3 endpoint {self.endpoint} is busy while {what}: {exc.code}") from None
            raise StoreError(f"S3 endpoint {self.endpoint} refused {what}: {exc.code}: {exc.message}") from None
        except ServerError as exc:
            raise StoreUnavailable(f"S3 endpoint {self.endpoint} failed while {what}: HTTP {exc.status_code}") from None
        except InvalidResponseError as exc:
            raise StoreError(f"S3 endpoint {self.endpoint} answered {what} with something unexpected: {exc}") from None
        except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
            raise StoreUnavailable(f"S3 endpoint {self.endpoint} unreachable while {what}: {_short(exc)}") from None


class _Missing(ArtifactNotFound):
    """Internal: the bucket or object does not exist (callers turn it into None, [] or not-found)."""


class _HashingReader:
    """A file wrapper that hashes what the uploader reads, to prove it sent what it checksummed."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._digest.update(data)
        return data

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def _http_client() -> Any:
    """The SDK's pool with timeouts and retries fit for an operator (the defaults wait 5 minutes)."""
    import certifi
    import urllib3
    from urllib3.util import Retry, Timeout

    return urllib3.PoolManager(
        timeout=Timeout(connect=10, read=120),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=Retry(total=3, connect=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )


def _short(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc)[:300]
