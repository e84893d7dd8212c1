"""Unpacked local copies of model packages, one per sha256, shared by whoever needs to open one
(evaluation and compression of a ModelVersion, the local serving engine's model servers).

A package is downloaded once (from the artifact store when the URI is one of its keys, else
through `download_uri`), checked against its sha256 and unpacked; a later call finds the copy. An
unpacked package folder given as a file URI is used in place. Failures come back as cdl's error
kinds: a missing or corrupt package is permanent, an unreachable store transient.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cdl.errors import PermanentEngineError, TransientEngineError
from cdl.runtime import package


class PackageCache:
    def __init__(self, root: Path, artifacts: Any | None = None, s3: Any | None = None) -> None:
        self.root = root
        self.artifacts = artifacts
        self.s3 = s3

    def get(self, uri: str, sha256: str = "", what: str = "the package") -> Path:
        """The unpacked package at `uri`; `what` names it in error messages (which resource, which
        version)."""
        local = self._local_dir(uri)
        if local is not None:
            try:
                package.load_package(local)
            except package.PackageError as exc:
                raise PermanentEngineError(f"{what}: {exc}", reason="BadPackage") from None
            return local
        target = self.root / (sha256[:16] or hashlib.sha256(uri.encode()).hexdigest()[:16])
        if (target / package.MANIFEST).is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        archive = target.with_name(target.name + ".tar.gz")
        try:
            self._download(uri, archive, sha256 or None)
            package.unpack(archive, target)
        except FileNotFoundError as exc:
            raise PermanentEngineError(f"{what} is missing: {exc}", reason="ArtifactNotFound") from None
        except package.PackageError as exc:
            raise PermanentEngineError(f"{what}: {exc}", reason="BadPackage") from None
        except (ConnectionError, TimeoutError) as exc:
            raise TransientEngineError(f"{what}: cannot fetch {uri}: {exc}") from None
        except (PermanentEngineError, TransientEngineError):
            raise
        except Exception as exc:
            if getattr(exc, "reason", "") in ("StoreUnavailable", "TransientError"):
                raise TransientEngineError(f"{what}: cannot fetch {uri}: {exc}") from None
            raise PermanentEngineError(f"{what}: cannot fetch {uri}: {exc}", reason="ArtifactUnavailable") from None
        finally:
            archive.unlink(missing_ok=True)
        return target

    @staticmethod
    def _local_dir(uri: str) -> Path | None:
        if not (uri.startswith("file://") or uri.startswith("/")):
            return None
        from cdl.stores.artifacts import file_uri_path

        local = file_uri_path(uri) if uri.startswith("file://") else Path(uri)
        return local if local.is_dir() else None

    def _download(self, uri: str, dest: Path, sha256: str | None) -> None:
        from cdl.stores.opener import download_uri

        if self.artifacts is not None:
            try:
                key = self.artifacts.key_for(uri)
            except ValueError:
                key = None
            if key is not None:
                self.artifacts.get_file(key, dest, sha256)
                return
        download_uri(uri, dest, sha256=sha256, s3=self.s3)
