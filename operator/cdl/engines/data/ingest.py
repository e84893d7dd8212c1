"""Ingestion: a DataPipeline's source (file://, s3://, http(s)://) into the object store.

What a source may be:
- a directory (file://, or an s3:// prefix): its files keep their relative paths;
- one archive (zip, tar, tar.gz, tar.bz2, tar.xz; a file:// path, an s3:// object or an http(s)
  URL): it is unpacked, and a single folder wrapping everything (`bbc/...`) is stripped;
- one plain file: committed under its own name.
Hidden files and folders (`.git`, `.DS_Store`) and `__MACOSX/` are left out. With `format: idx`
gzipped IDX files are stored uncompressed (`train-images-idx3-ubyte.gz` -> `...-ubyte`).

Fingerprints are cheap to poll and change when the content does: local files are hashed once
and remembered by (size, mtime, inode); S3 objects are named by their ETags; HTTP resources by
ETag/Last-Modified/Content-Length (or by a download when the server sends none of them).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from cdl.api.datapipeline import Source
from cdl.engines.data.objects import FileEntry, ObjectStore, sha256_file
from cdl.errors import PermanentEngineError, TransientEngineError
from cdl.files import write_atomic

HTTP_TIMEOUT = 30.0
USER_AGENT = "cdl-data-engine/0.1"
SKIP_NAMES = {"__MACOSX", "Thumbs.db"}



class _HeadNotAllowed(Exception):
    """The server refuses HEAD (405): fall back to fingerprinting the downloaded body."""

@dataclass
class Ingested:
    """The files of the raw commit and what ingestion noticed on the way."""

    files: dict[str, FileEntry]
    new_objects: int = 0
    skipped: list[str] = field(default_factory=list)
    fingerprint: str = ""  # the source's fingerprint as read by this ingest (what `fingerprint` returns)


def _digest(parts: list[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogateescape"))
        h.update(b"\x00")
    return h.hexdigest()


MISSING_PREFIX = "0" * 8


def missing_fingerprint(uri: str) -> str:
    """A stable fingerprint for a source that is not there (a run then fails with a message)."""
    return MISSING_PREFIX + _digest(["missing", uri])[8:]


def is_missing(fingerprint: str) -> bool:
    return fingerprint.startswith(MISSING_PREFIX)


def tree_fingerprint(hashes: dict[str, tuple[str, int]]) -> str:
    return _digest([f"{rel}\x00{sha}" for rel, (sha, _) in hashes.items()])


def listing_fingerprint(listing: list[tuple[str, str, int]]) -> str:
    return _digest([f"{k}\x00{etag}\x00{size}" for k, etag, size in listing])


def hidden(rel: str) -> bool:
    return any(part.startswith(".") or part in SKIP_NAMES for part in rel.split("/"))


def resolve_file_uri(uri: str, base_dir: Path | None) -> Path:
    """`file:///abs` or `file:rel` (relative to the base directory) as a path."""
    if uri.startswith("file://"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise PermanentEngineError(f"spec.source.uri {uri}: file uris must be local (file:///abs/dir)")
        return Path(unquote(parts.path))
    rel = unquote(uri[len("file:"):])
    path = Path(rel)
    return path if path.is_absolute() else (base_dir or Path.cwd()) / path


# --------------------------------------------------------------------------- archives


def archive_kind(path: Path) -> str | None:
    """'zip', 'tar' or 'gzip' (a single gzipped file) from the magic bytes; None for plain files."""
    with open(path, "rb") as f:
        head = f.read(262)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        try:
            with tarfile.open(path, "r:gz") as tar:
                tar.next()
            return "tar"
        except (tarfile.TarError, OSError, EOFError):
            return "gzip"
    if head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00" or head[257:262] == b"ustar":
        return "tar"
    return None


def _safe_rel(name: str, uri: str) -> str | None:
    rel = name.replace("\\", "/")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if rel.startswith("/") or ".." in parts:
        raise PermanentEngineError(f"source {uri}: archive member {name!r} would leave the extraction folder",
                                   reason="BadArchive")
    return "/".join(parts) or None


def extract_archive(path: Path, dest: Path, uri: str, kind: str) -> None:
    """Unpack regular files only (no links, devices, absolute or `..` paths)."""
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if info.is_dir() or (info.external_attr >> 16) & 0o170000 == 0o120000:
                        continue
                    rel = _safe_rel(info.filename, uri)
                    if rel is None:
                        continue
                    target = dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1024 * 1024)
        elif kind == "tar":
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    rel = _safe_rel(member.name, uri)
                    if rel is None:
                        continue
                    target = dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(member)
                    if src is None:
                        continue
                    with src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1024 * 1024)
        else:
            raise ValueError(kind)
    except PermanentEngineError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, OSError, ValueError) as exc:
        label = "zip" if kind == "zip" else "tar"
        raise PermanentEngineError(f"source {uri}: not a valid {label} archive ({type(exc).__name__}: {exc})",
                                   reason="BadArchive")


def strip_wrapper(files: dict[str, str]) -> dict[str, str]:
    """Drop one folder that wraps every file (`bbc/business/1.txt` -> `business/1.txt`)."""
    firsts = {rel.split("/", 1)[0] for rel in files}
    if len(firsts) == 1 and all("/" in rel for rel in files):
        return {rel.split("/", 1)[1]: p for rel, p in files.items()}
    return files


def walk(directory: Path) -> tuple[dict[str, str], list[str]]:
    """(file paths by relative path, skipped hidden paths) of a directory, links to files followed."""
    found: dict[str, str] = {}
    skipped: list[str] = []
    stack = [(str(directory), "")]
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = prefix + entry.name
                if entry.name.startswith(".") or entry.name in SKIP_NAMES:
                    skipped.append(rel + ("/" if entry.is_dir() else ""))
                elif entry.is_dir():
                    stack.append((entry.path, rel + "/"))
                elif entry.is_file():
                    found[rel] = entry.path
    return dict(sorted(found.items())), skipped


# --------------------------------------------------------------------------- local file hashes


class StatCache:
    """sha256 of local files remembered by (size, mtime, inode): unchanged files are not re-read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, list] = {}
        self._dirty = False
        if path.exists():
            with contextlib.suppress(ValueError, OSError):
                self._data = json.loads(path.read_text())

    def known(self, path: str) -> tuple[str, int] | None:
        """The remembered (sha256, size) if the file is unchanged since, else None."""
        st = os.stat(path)
        hit = self._data.get(path)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns and hit[2] == st.st_ino:
            return hit[3], st.st_size
        return None

    def sha256(self, path: str | Path) -> tuple[str, int]:
        key = str(path)
        hit = self.known(key)
        if hit is not None:
            return hit
        st = os.stat(key)
        sig = [st.st_size, st.st_mtime_ns, st.st_ino]
        sha, size = sha256_file(Path(key))
        with self._lock:
            self._data[key] = [*sig, sha]
            self._dirty = True
        return sha, size

    def save(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            data = json.dumps(self._data, separators=(",", ":"))
            self._dirty = False
        write_atomic(self.path, data)


# --------------------------------------------------------------------------- the ingestor


class Ingestor:
    """Reads sources into the object store; one per engine, shared by its runs."""

    def __init__(self, state_dir: Path, objects: ObjectStore, s3_endpoint: str | None = None,
                 workers: int = 4) -> None:
        self.state_dir = state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.objects = objects
        self.s3_endpoint = s3_endpoint
        self.workers = max(1, workers)
        self.stat_cache = StatCache(state_dir / "stat-cache.json")

    # ------------------------------------------------------------------ fingerprints

    def fingerprint(self, source: Source, secrets: dict[str, str], base_dir: Path | None) -> str:
        uri = source.uri
        if uri.startswith("file:"):
            return self._file_fingerprint(resolve_file_uri(uri, base_dir), uri)
        if uri.startswith("s3://"):
            listing = self._s3_listing(source, secrets)
            if not listing:
                return missing_fingerprint(uri)
            return listing_fingerprint(listing)
        return self._http_fingerprint(uri)

    def _file_fingerprint(self, path: Path, uri: str) -> str:
        if path.is_file():
            return _digest(["file", self.stat_cache.sha256(path)[0]])
        if not path.is_dir():
            return missing_fingerprint(uri)
        files, _ = walk(path)
        parts = self._hash_all(files)
        self.stat_cache.save()
        return tree_fingerprint(parts)

    def _hash_all(self, files: dict[str, str]) -> dict[str, tuple[str, int]]:
        """(sha256, size) per file: remembered ones by a stat, the rest read (in parallel)."""
        from concurrent.futures import ThreadPoolExecutor

        out: dict[str, tuple[str, int]] = {}
        todo: dict[str, str] = {}
        for rel, path in files.items():
            hit = self.stat_cache.known(path)
            if hit is None:
                todo[rel] = path
            else:
                out[rel] = hit
        if len(todo) < 16 or self.workers == 1:
            out.update({rel: self.stat_cache.sha256(p) for rel, p in todo.items()})
        else:  # one task per worker: hashing releases the GIL, submitting 10k tasks would not
            items = list(todo.items())
            chunks = [items[i::self.workers] for i in range(self.workers)]
            with ThreadPoolExecutor(self.workers) as pool:
                for part in pool.map(lambda chunk: [(r, self.stat_cache.sha256(p)) for r, p in chunk], chunks):
                    out.update(part)
        return {rel: out[rel] for rel in files}

    # ------------------------------------------------------------------ ingest

    def ingest(self, source: Source, secrets: dict[str, str], base_dir: Path | None,
               progress: Callable[[str], None] | None = None) -> Ingested:
        """The raw commit's files; PermanentEngineError names the source and what is wrong."""
        before = self.objects.created
        uri = source.uri
        scratch = Path(tempfile.mkdtemp(prefix="ingest-", dir=self.objects.tmp))
        try:
            if uri.startswith("file:"):
                result = self._ingest_file(resolve_file_uri(uri, base_dir), uri, scratch)
            elif uri.startswith("s3://"):
                result = self._ingest_s3(source, secrets, scratch)
            else:
                result = self._ingest_http(uri, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            self.stat_cache.save()
        if source.format == "idx":
            result.files = self._gunzip_idx(result.files)
        if not result.files:
            raise PermanentEngineError(f"source {uri} holds no files", reason="EmptySource")
        result.new_objects = self.objects.created - before
        return result

    def _store_tree(self, directory: Path, move: bool, strip: bool) -> Ingested:
        files, skipped = walk(directory)
        if strip:
            files = strip_wrapper(files)
        if move:
            stored = {rel: self.objects.put_file(p, move=True) for rel, p in files.items()}
        else:
            hashes = self._hash_all(files)
            stored = {rel: self.objects.put_file(p, sha256=hashes[rel][0], size=hashes[rel][1])
                      for rel, p in files.items()}
            return Ingested(stored, skipped=skipped, fingerprint=tree_fingerprint(hashes))
        return Ingested(stored, skipped=skipped)

    def _store_single(self, path: Path, name: str, uri: str, scratch: Path, move: bool) -> Ingested:
        kind = archive_kind(path)
        if kind in ("zip", "tar"):
            target = scratch / "unpacked"
            target.mkdir()
            extract_archive(path, target, uri, kind)
            return self._store_tree(target, move=True, strip=True)
        if kind == "gzip" and not name.endswith(("-ubyte.gz", ".idx.gz")):
            target = scratch / "gunzip"
            name = name[:-3] if name.endswith(".gz") else name
            try:
                with gzip.open(path) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1024 * 1024)
            except (OSError, EOFError) as exc:
                raise PermanentEngineError(f"source {uri}: not a valid gzip file ({exc})", reason="BadArchive")
            return Ingested({name: self.objects.put_file(target, move=True)})
        if move:
            return Ingested({name: self.objects.put_file(path, move=True)})
        sha, _ = self.stat_cache.sha256(path)
        return Ingested({name: self.objects.put_file(path, sha256=sha)})

    def _ingest_file(self, path: Path, uri: str, scratch: Path) -> Ingested:
        if path.is_dir():
            return self._store_tree(path, move=False, strip=False)
        if path.is_file():
            fingerprint = self._file_fingerprint(path, uri)
            result = self._store_single(path, path.name, uri, scratch, move=False)
            result.fingerprint = fingerprint
            return result
        raise PermanentEngineError(f"source {uri}: no such file or directory ({path})", reason="SourceMissing")

    def _gunzip_idx(self, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        out: dict[str, FileEntry] = {}
        for rel, entry in files.items():
            if rel.endswith(".gz"):
                with gzip.open(self.objects.ensure_local(entry.sha256)) as f:
                    try:
                        data = f.read()
                    except (OSError, EOFError) as exc:
                        raise PermanentEngineError(f"source file {rel}: not a valid gzip file ({exc})",
                                                   reason="BadArchive")
                out[rel[:-3]] = self.objects.put_bytes(data)
            else:
                out[rel] = entry
        return out

    # ------------------------------------------------------------------ s3

    def _s3_client(self, source: Source, secrets: dict[str, str]):  # -> minio.Minio
        from minio import Minio

        from cdl.stores.artifacts import s3_settings

        endpoint = self.s3_endpoint or os.environ.get("CDL_S3_ENDPOINT", "")
        if not endpoint:
            raise PermanentEngineError(
                f"spec.source.uri {source.uri}: no S3 endpoint configured (set CDL_S3_ENDPOINT for the operator)",
                reason="NoS3Endpoint")
        access, secret = os.environ.get("CDL_S3_ACCESS_KEY", ""), os.environ.get("CDL_S3_SECRET_KEY", "")
        ref = source.credentials_secret_ref
        if ref is not None:
            value = secrets.get(f"{ref.name}/{ref.key}")
            if value is None:
                raise PermanentEngineError(
                    f"spec.source.credentialsSecretRef: secret {ref.name} key {ref.key} was not provided",
                    reason="SecretMissing")
            if ":" not in value:
                raise PermanentEngineError(
                    f"spec.source.credentialsSecretRef: secret {ref.name} key {ref.key} must hold "
                    "ACCESS_KEY:SECRET_KEY", reason="BadSecret")
            access, secret = value.split(":", 1)
        settings = s3_settings(endpoint, access, secret)
        host, secure = settings.host_and_secure()
        return Minio(host, access_key=access or None, secret_key=secret or None, secure=secure)

    @staticmethod
    def _split_s3(uri: str) -> tuple[str, str]:
        parts = urlsplit(uri)
        return parts.netloc, parts.path.strip("/")

    def _s3_listing(self, source: Source, secrets: dict[str, str]) -> list[tuple[str, str, int]]:
        """(key, etag, size) of the object the uri names, or of every object under its prefix."""
        from minio.error import S3Error

        bucket, prefix = self._split_s3(source.uri)
        client = self._s3_client(source, secrets)
        try:
            if prefix:
                with contextlib.suppress(S3Error):
                    st = client.stat_object(bucket, prefix)
                    return [(prefix, st.etag or "", st.size or 0)]
            listing = [
                (o.object_name, o.etag or "", o.size or 0)
                for o in client.list_objects(bucket, prefix=f"{prefix}/" if prefix else None, recursive=True)
                if not o.is_dir
            ]
        except S3Error as exc:
            if exc.code in ("NoSuchBucket", "NoSuchKey"):
                return []
            if exc.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise PermanentEngineError(f"source {source.uri}: access refused by S3 ({exc.code})",
                                           reason="AccessDenied")
            raise TransientEngineError(f"source {source.uri}: S3 error {exc.code}")
        except Exception as exc:  # urllib3 raises its own connection errors
            raise TransientEngineError(f"source {source.uri}: S3 endpoint unreachable ({type(exc).__name__})")
        return sorted(listing)

    def _ingest_s3(self, source: Source, secrets: dict[str, str], scratch: Path) -> Ingested:
        from minio.error import S3Error

        bucket, prefix = self._split_s3(source.uri)
        listing = self._s3_listing(source, secrets)
        if not listing:
            raise PermanentEngineError(f"source {source.uri}: no such bucket or no objects under that prefix",
                                       reason="SourceMissing")
        client = self._s3_client(source, secrets)
        etags = self._load_json("s3-etags.json")
        if len(listing) == 1 and listing[0][0] == prefix:
            key = prefix
            target = scratch / "object"
            client.fget_object(bucket, key, str(target))
            result = self._store_single(target, PurePosixPath(key).name, source.uri, scratch, move=True)
            result.fingerprint = listing_fingerprint(listing)
            return result
        files: dict[str, FileEntry] = {}
        skipped: list[str] = []
        try:
            for key, etag, size in listing:
                rel = key[len(prefix) + 1:] if prefix else key
                if hidden(rel):
                    skipped.append(rel)
                    continue
                known = etags.get(f"{bucket}/{key}")
                if known and known[0] == etag and known[1] == size and self.objects.has(known[2]):
                    files[rel] = FileEntry(known[2], size)
                    continue
                target = scratch / "download"
                client.fget_object(bucket, key, str(target))
                entry = self.objects.put_file(target, move=True)
                etags[f"{bucket}/{key}"] = [etag, size, entry.sha256]
                files[rel] = entry
        except S3Error as exc:
            raise TransientEngineError(f"source {source.uri}: S3 error {exc.code} while downloading")
        finally:
            self._save_json("s3-etags.json", etags)
        return Ingested(files, skipped=skipped, fingerprint=listing_fingerprint(listing))

    # ------------------------------------------------------------------ http(s)

    def _request(self, uri: str, method: str = "GET"):
        req = urllib.request.Request(uri, method=method, headers={"User-Agent": USER_AGENT})
        try:
            return urllib.request.urlopen(req, timeout=HTTP_TIMEOUT)  # noqa: S310 (http(s) only by the schema)
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 410):
                raise FileNotFoundError(uri)
            if exc.code in (401, 403):
                raise PermanentEngineError(f"source {uri}: access refused (HTTP {exc.code})", reason="AccessDenied")
            if exc.code == 405 and method == "HEAD":
                raise _HeadNotAllowed(uri)
            if 400 <= exc.code < 500:
                raise PermanentEngineError(f"source {uri}: HTTP {exc.code} {exc.reason}", reason="SourceMissing")
            raise TransientEngineError(f"source {uri}: HTTP {exc.code} {exc.reason}")
        except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TransientEngineError(f"source {uri}: unreachable ({reason})")

    def _http_fingerprint(self, uri: str) -> str:
        try:
            with self._request(uri, "HEAD") as resp:
                headers = resp.headers
                validators = [headers.get("ETag", ""), headers.get("Last-Modified", ""),
                              headers.get("Content-Length", "")]
        except FileNotFoundError:
            return missing_fingerprint(uri)
        except _HeadNotAllowed:
            validators = ["", "", ""]
        if validators[0] or validators[1]:
            return _digest(["http", uri, *validators])
        # No validators: the content is the fingerprint (downloaded, and kept for the ingest).
        try:
            path = self._download(uri)
        except FileNotFoundError:
            return missing_fingerprint(uri)
        return _digest(["http-body", uri, sha256_file(path)[0]])

    def _download_path(self, uri: str) -> Path:
        return self.state_dir / "http" / hashlib.sha256(uri.encode()).hexdigest()[:32]

    def _download(self, uri: str) -> Path:
        target = self._download_path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out, self._request(uri) as resp:
                shutil.copyfileobj(resp, out, 1024 * 1024)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return target

    def _ingest_http(self, uri: str, scratch: Path) -> Ingested:
        name = PurePosixPath(unquote(urlsplit(uri).path)).name or "download"
        try:
            fingerprint = self._http_fingerprint(uri)
        except FileNotFoundError:
            fingerprint = missing_fingerprint(uri)
        manifests = self._load_json("http-manifests.json")
        known = manifests.get(uri)
        if known and known["fingerprint"] == fingerprint and not is_missing(fingerprint):
            files = {rel: FileEntry.from_wire(v) for rel, v in known["files"].items()}
            if all(self.objects.has(e.sha256) for e in files.values()):
                return Ingested(files, fingerprint=fingerprint)
        cached = self._download_path(uri)  # left by a body-hash fingerprint a moment ago
        try:
            path = cached if cached.exists() else self._download(uri)
        except FileNotFoundError:
            raise PermanentEngineError(f"source {uri}: not found (HTTP 404)", reason="SourceMissing")
        result = self._store_single(path, name, uri, scratch, move=True)
        cached.unlink(missing_ok=True)
        manifests[uri] = {"fingerprint": fingerprint, "files": {r: e.wire() for r, e in result.files.items()}}
        self._save_json("http-manifests.json", manifests)
        result.fingerprint = fingerprint
        return result

    # ------------------------------------------------------------------ small state files

    def _load_json(self, name: str) -> dict:
        path = self.state_dir / name
        if path.exists():
            with contextlib.suppress(ValueError, OSError):
                return json.loads(path.read_text())
        return {}

    def _save_json(self, name: str, data: dict) -> None:
        write_atomic(self.state_dir / name, json.dumps(data, separators=(",", ":")))

