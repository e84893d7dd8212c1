"""The content-addressed object store under the data engine: a file's bytes are kept once, named
by their sha256, however many commits, repos or pipelines hold the file.

Objects are read-only files at `objects/<sha[:2]>/<sha>`; checkouts and datum inputs are
hardlinks to them (copies where the filesystem refuses links). With an `ArtifactStore` given,
every new object is also written through it under `data/objects/<sha[:2]>/<sha>` (so an S3
store holds the data too) and an object missing locally is fetched back from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdl.stores.artifacts import sha256_file

CHUNK = 1024 * 1024
READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
ARTIFACT_PREFIX = "data/objects"


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit: the object holding its bytes and its size."""

    sha256: str
    size: int

    def wire(self) -> list[Any]:
        return [self.sha256, self.size]

    @classmethod
    def from_wire(cls, value: list[Any]) -> FileEntry:
        return cls(str(value[0]), int(value[1]))




class ObjectStore:
    """Put files in by content; link them out by sha256.

    The hot paths (ten thousand files per commit) use string paths and `os` calls: pathlib's
    object creation cost more than the filesystem work."""

    def __init__(self, root: Path, artifacts: Any | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp = root / ".tmp"
        self.tmp.mkdir(exist_ok=True)
        self._root = str(root)
        self._tmp = str(self.tmp)
        self.artifacts = artifacts
        self._lock = threading.Lock()
        self.created = 0  # objects written by this process (dedup checks in tests and the bench)

    def path(self, sha256: str) -> Path:
        return Path(self.where(sha256))

    def where(self, sha256: str) -> str:
        return f"{self._root}/{sha256[:2]}/{sha256}"

    def has(self, sha256: str) -> bool:
        return os.path.exists(self.where(sha256))

    def _artifact_key(self, sha256: str) -> str:
        return f"{ARTIFACT_PREFIX}/{sha256[:2]}/{sha256}"

    def _temp_name(self, sha256: str) -> str:
        return f"{self._tmp}/{sha256}.{os.getpid()}.{threading.get_ident()}"

    def _admit(self, tmp: str, sha256: str) -> bool:
        """Move a finished temporary file into place unless the object exists; True if it was new."""
        dest = self.where(sha256)
        if os.path.exists(dest):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            return False
        os.chmod(tmp, READ_ONLY)
        try:
            os.replace(tmp, dest)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.replace(tmp, dest)
        with self._lock:
            self.created += 1
        if self.artifacts is not None:
            self.artifacts.put_file(self._artifact_key(sha256), Path(dest))
        return True

    def put_file(self, src: Path | str, sha256: str | None = None, move: bool = False,
                 size: int | None = None) -> FileEntry:
        """Store a file's bytes; with `move` the file itself becomes the object (no copy)."""
        if sha256 is None:
            sha256, size = sha256_file(Path(src))
        elif size is None:
            size = os.stat(src).st_size
        if self.has(sha256):
            if move:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(src)
            return FileEntry(sha256, size)
        tmp = self._temp_name(sha256)
        if move:
            os.replace(src, tmp)
        else:
            shutil.copyfile(src, tmp)
        self._admit(tmp, sha256)
        return FileEntry(sha256, size)

    def put_bytes(self, data: bytes) -> FileEntry:
        sha256 = hashlib.sha256(data).hexdigest()
        if not self.has(sha256):
            tmp = self._temp_name(sha256)
            with open(tmp, "wb") as f:
                f.write(data)
            self._admit(tmp, sha256)
        return FileEntry(sha256, len(data))

    def ensure_local(self, sha256: str) -> Path:
        """The object's local path, fetched from the artifact store when only that holds it."""
        return Path(self._ensure_local(sha256))

    def _ensure_local(self, sha256: str) -> str:
        path = self.where(sha256)
        if os.path.exists(path):
            return path
        if self.artifacts is None:
            raise FileNotFoundError(f"object {sha256} is missing from the data store {self.root}")
        tmp = self._temp_name(sha256)
        self.artifacts.get_file(self._artifact_key(sha256), Path(tmp), sha256)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.chmod(tmp, READ_ONLY)
        os.replace(tmp, path)
        return path

    def link(self, sha256: str, dest: Path | str) -> None:
        """Make `dest` hold the object: a hardlink, or a read-only copy across filesystems."""
        src = self.where(sha256)
        try:
            os.link(src, dest)
        except FileNotFoundError:
            src = self._ensure_local(sha256)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.link(src, dest)
        except FileExistsError:
            os.unlink(dest)
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)
            os.chmod(dest, READ_ONLY)

    def all(self) -> set[str]:
        return {name for d in os.scandir(self._root) if d.is_dir() and d.name != ".tmp" for name in os.listdir(d.path)}

    def count(self) -> int:
        return len(self.all())

    def remove(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.where(sha256))
        if self.artifacts is not None:
            with contextlib.suppress(Exception):
                self.artifacts.delete(self._artifact_key(sha256))
