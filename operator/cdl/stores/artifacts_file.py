"""The filesystem artifact store: the embedded platform's default.

Layout under the root directory: each artifact at `<root>/<key>`; its sha256 and size in
`<root>/.cdl-meta/<key>.json`; files being written in `<root>/.cdl-tmp/` until they are complete,
then renamed into place, so a reader sees either the old artifact or the new one, never half of
one. A file that was put there by other means (no checksum file, or one recorded for the file it
replaced) gets its sha256 computed on `stat`, and is not checked on read unless the caller gives
a sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from cdl.stores.artifacts import (
    CHUNK,
    RESERVED_PREFIX,
    StoredArtifact,
    copy_hashing,
    file_uri_path,
    join_key,
    local_files,
    receive_verified,
    sha256_file,
    validate_key,
    validate_prefix,
    verifying_stream,
)
from cdl.stores.errors import ArtifactError, ArtifactIntegrityError, ArtifactNotFound

META_DIR = RESERVED_PREFIX + "meta"
TMP_DIR = RESERVED_PREFIX + "tmp"


class FileArtifactStore:
    """Artifacts as files under one directory (created if missing)."""

    def __init__(self, root: Path | str) -> None:
        root = Path(root).expanduser()
        if not root.is_absolute():
            root = Path.cwd() / root
        self.root = Path(os.path.normpath(root))
        self.root.mkdir(parents=True, exist_ok=True)
        self._real_root = os.path.realpath(self.root)
        self.base_uri = self.root.as_uri()

    def __repr__(self) -> str:
        return f"FileArtifactStore({self.base_uri})"

    # -- writing -----------------------------------------------------------------------------

    def put_file(self, key: str, path: Path) -> StoredArtifact:
        with open(path, "rb") as src:
            return self._put_stream(key, src)

    def put_bytes(self, key: str, data: bytes) -> StoredArtifact:
        return self._put_stream(key, io.BytesIO(data))

    def put_dir(self, prefix: str, directory: Path) -> list[StoredArtifact]:
        prefix = validate_prefix(prefix)
        return [self.put_file(join_key(prefix, rel), path) for rel, path in local_files(Path(directory))]

    def _put_stream(self, key: str, src: BinaryIO) -> StoredArtifact:
        target = self._path(key)
        tmp_dir = self.root / TMP_DIR
        tmp_dir.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="put-", dir=tmp_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                sha256, size = copy_hashing(src, out)
                out.flush()
                os.fsync(out.fileno())
                inode = os.fstat(out.fileno()).st_ino  # kept by the rename below
            # The old checksum goes first: a crash between the two renames leaves an artifact
            # without a checksum (recomputed on stat), never one with a wrong checksum.
            self._meta_path(key).unlink(missing_ok=True)
            self._make_parent(key, target)
            if target.is_dir():
                raise ArtifactError(f"cannot store {self.uri_for(key)}: a folder of that name exists")
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._write_meta(key, sha256, size, inode)
        return StoredArtifact(uri=self.uri_for(key), key=key, sha256=sha256, bytes=size)

    def _make_parent(self, key: str, target: Path) -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ArtifactError(
                f"cannot store {self.uri_for(key)}: a part of its folder path is an artifact (a file)") from None

    def _write_meta(self, key: str, sha256: str, size: int, inode: int) -> None:
        meta = self._meta_path(key)
        meta.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".meta-", dir=meta.parent)
        with os.fdopen(fd, "w") as out:
            json.dump({"sha256": sha256, "bytes": size, "inode": inode}, out)
        os.replace(tmp, meta)

    # -- reading -----------------------------------------------------------------------------

    def get_file(self, key: str, dest: Path, sha256: str | None = None) -> Path:
        path = self._existing(key)
        expected = sha256 or self._recorded(key)
        with open(path, "rb") as src:
            return receive_verified(iter(lambda: src.read(CHUNK), b""), Path(dest), self.uri_for(key), expected)

    def get_bytes(self, key: str) -> bytes:
        data = self._existing(key).read_bytes()
        expected = self._recorded(key)
        if expected:
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise ArtifactIntegrityError(self.uri_for(key), expected, actual)
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
        path = self._existing(key)
        return verifying_stream(open(path, "rb", buffering=0), self.uri_for(key), self._recorded(key))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> StoredArtifact | None:
        path = self._path(key)
        try:
            size = path.stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not path.is_file():
            return None
        sha256 = self._recorded(key)
        if not sha256:
            sha256, size = sha256_file(path)
        return StoredArtifact(uri=self.uri_for(key), key=key, sha256=sha256, bytes=size)

    def list(self, prefix: str = "") -> list[str]:
        prefix = validate_prefix(prefix)
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for root, dirs, files in os.walk(base):
            if Path(root) == self.root:
                dirs[:] = [d for d in dirs if not d.startswith(RESERVED_PREFIX)]
                files = [f for f in files if not f.startswith(RESERVED_PREFIX)]
            rel_root = Path(root).relative_to(self.root).as_posix()
            for name in files:
                keys.append(name if rel_root == "." else f"{rel_root}/{name}")
        return sorted(keys)

    # -- deleting ----------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        path = self._path(key)
        self._meta_path(key).unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            path.unlink()
        self._prune(path.parent)
        self._prune(self._meta_path(key).parent)

    def delete_prefix(self, prefix: str) -> int:
        prefix = validate_prefix(prefix)
        keys = self.list(prefix)
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                (self.root / key).unlink()
            self._meta_path(key).unlink(missing_ok=True)
        for base in (self.root / prefix, self.root / META_DIR / prefix):
            if base.is_dir() and prefix:
                _remove_empty_dirs(base, keep=False)
                self._prune(base.parent)
            elif base.is_dir():
                _remove_empty_dirs(base, keep=True)
        return len(keys)

    def _prune(self, folder: Path) -> None:
        """Remove empty folders from `folder` up to (not including) the root and its reserved dirs."""
        stops = {self.root, self.root / META_DIR}
        while folder not in stops and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    # -- uris --------------------------------------------------------------------------------

    def uri_for(self, key: str) -> str:
        return (self.root / validate_key(key)).as_uri()

    def key_for(self, uri: str) -> str:
        try:
            path = file_uri_path(uri) if "://" in uri else Path(uri)
        except ValueError:
            raise ValueError(f"{uri} is not in the artifact store {self.base_uri}") from None
        path = Path(os.path.normpath(path))
        if not path.is_absolute() or self.root not in path.parents:
            raise ValueError(f"{uri} is not in the artifact store {self.base_uri}")
        return validate_key(path.relative_to(self.root).as_posix())

    # -- internals ---------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        path = self.root / validate_key(key)
        real = os.path.realpath(path.parent)
        if real != self._real_root and not real.startswith(self._real_root + os.sep):
            raise ArtifactError(f"artifact key {key!r} leads outside the store {self.base_uri} (a symbolic link)")
        return path

    def _existing(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise ArtifactNotFound(f"no artifact {self.uri_for(key)}")
        return path

    def _meta_path(self, key: str) -> Path:
        return self.root / META_DIR / (key + ".json")

    def _recorded(self, key: str) -> str | None:
        return _read_meta(self._meta_path(key), self.root / key)


def _read_meta(meta: Path, path: Path) -> str | None:
    """The recorded sha256 of `path`, if the checksum file describes this very file.

    Every put renames a new file into place, so the checksum file names the inode it was
    computed for: one left behind by a racing writer (or a file replaced by other means) does not
    apply and is ignored, while bytes changed in place are still caught.
    """
    try:
        recorded = json.loads(meta.read_text())
        if recorded.get("inode") not in (None, path.stat().st_ino):
            return None
        return str(recorded["sha256"]) or None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _remove_empty_dirs(base: Path, keep: bool) -> None:
    for root, _dirs, _files in os.walk(base, topdown=False):
        if keep and Path(root) == base:
            continue
        with contextlib.suppress(OSError):
            os.rmdir(root)


def recorded_sha256(path: Path) -> str | None:
    """The sha256 a FileArtifactStore recorded for the file at `path`, if it lives in one."""
    path = Path(os.path.normpath(Path(path).absolute()))
    for ancestor in path.parents:
        meta_root = ancestor / META_DIR
        if meta_root.is_dir():
            return _read_meta(meta_root / (path.relative_to(ancestor).as_posix() + ".json"), path)
    return None
