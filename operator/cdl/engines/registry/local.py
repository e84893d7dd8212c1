"""The local Model Registry: a checkpoint, its code and its requirements as one reproducible package.

`LocalRegistryEngine.register` builds the package described in `cdl.runtime.package`
(`model/`, `checkpoint/`, pinned `requirements.txt`, `cdl-package.json`), writes it as a
reproducible tar.gz (the same inputs give the same sha256, so a restarted operator that registers
again gets the same artifact back) and stores it through the ArtifactStore at
`models/<name>/<version>/package.tar.gz`. A small JSON index under the engine's root keeps each
version's artifact and stage; PostgreSQL keeps the platform-wide record (the reconciler's job).

What goes in:
- `model/`: the model code directory, without what `.gitignore`/`.detignore` exclude and without
  caches (`__pycache__`, `*.pyc`, `.git`, virtual environments);
- `checkpoint/`: the Determined checkpoint directory (state_dict.pth, metadata.json and the
  assets the trial saved), from `CheckpointInfo.path` or downloaded from `CheckpointInfo.uri`;
  Determined's `code/` copy is left out (it is `model/` again) and only its hash is recorded;
- `requirements.txt`: the model's own requirements.txt with every requirement pinned to the
  version the training recorded (`metadata["packages"]`) or, failing that, the version installed
  here; without one, the third-party packages the model code imports (found by reading its
  import statements) and the framework, pinned the same way.

`requirements_site` builds a directory holding only a package's requirements (and their
dependencies), linked from this environment, so a package can be run isolated from everything
else installed here (see `cdl.quality.evaluation`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cdl.api.modelversion import MODEL_NAME, STAGES
from cdl.engines.base import RegisteredModel, RegistrationRequest
from cdl.engines.registry.packaging import (
    CHECKPOINT_EXCLUDES,
    IgnoreRules,
    copy_filtered,
    detect_framework,
    discover_entrypoints,
    pin_requirements,
    tree_sha256,
)
from cdl.errors import PermanentEngineError, TransientEngineError
from cdl.runtime.package import (
    CHECKPOINT_DIR,
    FORMAT,
    MODEL_DIR,
    REQUIREMENTS,
    load_package,
    pack,
    write_manifest,
)

KEY_TEMPLATE = "models/{name}/{version}/package.tar.gz"
VARIANT_KEY_TEMPLATE = "models/{name}/{version}/{variant}/package.tar.gz"
PASSED_METADATA = ("model", "training", "trials", "packages", "environment", "data", "evaluation", "description")


def _created(metadata: Mapping[str, Any], checkpoint_dir: Path, local: bool) -> str | None:
    """When the checkpoint was made: the caller's value, else a local checkpoint's file time.

    A downloaded copy's file times are the download's, which would make the package differ
    between two registrations of the same checkpoint, so none is recorded then."""
    if metadata.get("created"):
        return str(metadata["created"])
    if not local:
        return None
    times = [p.stat().st_mtime for p in checkpoint_dir.rglob("*")
             if p.is_file() and p.relative_to(checkpoint_dir).parts[0] != "code"]
    if not times:
        return None
    return datetime.fromtimestamp(int(max(times)), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


# --------------------------------------------------------------------------- the engine


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LocalRegistryEngine:
    """Model packages in an ArtifactStore, stages in a JSON index under `root`."""

    name = "local"

    def __init__(self, root: Path, artifacts: Any, s3: Any | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.artifacts = artifacts  # cdl.stores.artifacts.ArtifactStore
        self.s3 = s3  # cdl.stores.artifacts.S3Settings for checkpoints in another bucket
        self._index_path = self.root / "index.json"

    # ------------------------------------------------------------------ index

    @contextlib.contextmanager
    def _index(self) -> Iterator[dict[str, Any]]:
        """The index, locked across processes for the block and written back atomically."""
        with open(self.root / ".index.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = json.loads(self._index_path.read_text()) if self._index_path.is_file() else {}
                data.setdefault("models", {})
                before = json.dumps(data, sort_keys=True)
                yield data
                if json.dumps(data, sort_keys=True) != before:
                    tmp = self._index_path.with_suffix(".tmp")
                    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
                    tmp.replace(self._index_path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def get(self, model_name: str, version: int) -> dict[str, Any] | None:
        """The index record of one version (artifact, stage, variants), or None."""
        with self._index() as index:
            record = index["models"].get(model_name, {}).get(str(version))
            return dict(record) if record else None

    def versions(self, model_name: str) -> dict[int, dict[str, Any]]:
        with self._index() as index:
            return {int(v): dict(r) for v, r in index["models"].get(model_name, {}).items()}

    def stages(self, model_name: str) -> dict[int, str]:
        return {v: r.get("stage", "candidate") for v, r in self.versions(model_name).items()}

    def package_path(self, model_name: str, version: int) -> Path:
        """Where this engine keeps the unpacked copy of a version."""
        return self.root / "packages" / model_name / str(version)

    # ------------------------------------------------------------------ register

    def register(self, request: RegistrationRequest) -> RegisteredModel:
        name, version = request.model_name, int(request.version)
        if not re.match(MODEL_NAME, name) or version < 1:
            raise PermanentEngineError(f"registry: invalid model name {name!r} or version {version}")
        model_dir = Path(request.model_dir)
        if not model_dir.is_dir():
            raise PermanentEngineError(f"registry: model code directory {model_dir} does not exist")
        staging_root = self.root / "staging"
        staging_root.mkdir(exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{name}-{version}-", dir=staging_root))
        try:
            pkg = staging / "package"
            pkg.mkdir()
            manifest = self._build(request, pkg, staging)
            archive = staging / "package.tar.gz"
            sha256, size = pack(pkg, archive)
            key = KEY_TEMPLATE.format(name=name, version=version)
            existing = self.get(name, version)
            if existing and existing.get("sha256") != sha256:
                raise PermanentEngineError(
                    f"registry: {name} version {version} is already registered with a different package "
                    f"(sha256 {existing.get('sha256', '')[:12]}, now {sha256[:12]}); versions are immutable: "
                    f"delete it first or register a new version")
            stored = self._put(key, archive)
            target = self.package_path(name, version)
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            pkg.replace(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        with self._index() as index:
            versions = index["models"].setdefault(name, {})
            record = versions.get(str(version)) or {"stage": "candidate", "registered": _now(),
                                                    "stageHistory": [{"stage": "candidate", "at": _now()}]}
            record.update(uri=stored.uri, key=key, sha256=sha256, bytes=size, format=FORMAT,
                          resource=str(request.key), framework=manifest["framework"])
            versions[str(version)] = record
        return RegisteredModel(
            version=version, artifact_uri=stored.uri, sha256=sha256, bytes=size, format=FORMAT,
            registry={"engine": self.name, "id": f"{name}/{version}", "url": stored.uri},
            package_dir=str(self.package_path(name, version)),
        )

    def _put(self, key: str, archive: Path) -> Any:
        try:
            return self.artifacts.put_file(key, archive)
        except PermanentEngineError:
            raise
        except Exception as exc:  # noqa: BLE001 - the store's own errors: unreachable S3 is transient
            from cdl.errors import TransientError

            if isinstance(exc, TransientError):
                raise TransientEngineError(f"registry: cannot store {key}: {exc}") from exc
            raise PermanentEngineError(f"registry: cannot store {key}: {exc}") from exc

    def _checkpoint(self, request: RegistrationRequest, staging: Path) -> tuple[Path, bool]:
        """(a local directory holding the checkpoint, whether it is the original rather than a download)."""
        ck = request.checkpoint
        if ck.path and Path(ck.path).is_dir():
            return Path(ck.path), True
        if ck.uri.startswith("file://") or ck.uri.startswith("/"):
            from cdl.stores.artifacts import file_uri_path

            path = file_uri_path(ck.uri) if ck.uri.startswith("file://") else Path(ck.uri)
            if path.is_dir():
                return path, True
            raise PermanentEngineError(f"registry: checkpoint {ck.uuid or ck.uri}: {path} is not a directory")
        download = staging / "download"
        try:
            try:
                key = self.artifacts.key_for(ck.uri)
            except ValueError:
                key = None
            if key is not None:
                self.artifacts.get_dir(key, download)
            else:
                from cdl.stores.opener import download_uri

                download_uri(ck.uri, download, s3=self.s3)
        except (PermanentEngineError, TransientEngineError):
            raise
        except Exception as exc:  # noqa: BLE001
            from cdl.errors import TransientError

            cls = TransientEngineError if isinstance(exc, TransientError) else PermanentEngineError
            raise cls(f"registry: cannot fetch checkpoint {ck.uri}: {exc}") from exc
        return download, False

    def _build(self, request: RegistrationRequest, pkg: Path, staging: Path) -> dict[str, Any]:
        model_dir = Path(request.model_dir)
        copy_filtered(model_dir, pkg / MODEL_DIR, IgnoreRules.for_directory(model_dir))
        source, local = self._checkpoint(request, staging)
        if not (source / "state_dict.pth").is_file() and not any(source.iterdir()):
            raise PermanentEngineError(f"registry: checkpoint {request.checkpoint.uri} is empty")
        copy_filtered(source, pkg / CHECKPOINT_DIR, IgnoreRules(CHECKPOINT_EXCLUDES))
        framework, framework_version = detect_framework(pkg / CHECKPOINT_DIR, pkg / MODEL_DIR)
        metadata = dict(request.metadata or {})
        lines, notes = pin_requirements(model_dir, metadata.get("packages"), framework)
        header = [f"# pinned by cdl for {request.model_name} version {request.version}"]
        (pkg / REQUIREMENTS).write_text("\n".join(header + lines) + "\n")
        experiment = metadata.get("experiment") or {}
        entrypoints = discover_entrypoints(pkg / MODEL_DIR)
        trial_entry = (experiment.get("model") or {}).get("entrypoint") if isinstance(experiment, dict) else None
        if trial_entry:
            entrypoints["trial"] = trial_entry
        entrypoints.update(metadata.get("entrypoints") or {})
        checkpoint_meta: dict[str, Any] = {"uuid": request.checkpoint.uuid, "uri": request.checkpoint.uri}
        det_meta = pkg / CHECKPOINT_DIR / "metadata.json"
        if det_meta.is_file():
            with contextlib.suppress(ValueError):
                checkpoint_meta["determined"] = json.loads(det_meta.read_text())
        if (source / "code").is_dir():
            checkpoint_meta["codeSha256"] = tree_sha256(source / "code")
        manifest: dict[str, Any] = {
            "name": request.model_name,
            "version": int(request.version),
            "resource": str(request.key),
            "framework": framework,
            "frameworkVersion": framework_version,
            "entrypoints": dict(sorted(entrypoints.items())),
            "hparams": request.hparams or {},
            "lineage": metadata.get("lineage") or {},
            "created": _created(metadata, source, local),
            "checkpoint": checkpoint_meta,
            "codeSha256": tree_sha256(pkg / MODEL_DIR, IgnoreRules(())),
            "requirements": lines,
            "requirementNotes": notes,
            "experiment": {"spec": experiment} if experiment else {},
            "python": ".".join(map(str, sys.version_info[:3])),
            "variant": None,
        }
        if request.experiment_ref is not None:
            manifest["experiment"]["engineRef"] = request.experiment_ref.wire()
        for key in PASSED_METADATA:
            if metadata.get(key) is not None:
                manifest[key] = metadata[key]
        return write_manifest(pkg, _plain(manifest))

    # ------------------------------------------------------------------ variants, stages, delete

    def store_variant(self, model_name: str, version: int, variant: str, package_dir: Path) -> RegisteredModel:
        """Store a derived package (e.g. the dynamic-int8 compression) beside the version."""
        info = load_package(package_dir)
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            archive = Path(tmp) / "package.tar.gz"
            sha256, size = pack(info.root, archive)
            key = VARIANT_KEY_TEMPLATE.format(name=model_name, version=version, variant=variant)
            stored = self._put(key, archive)
        with self._index() as index:
            record = index["models"].get(model_name, {}).get(str(version))
            if record is not None:
                record.setdefault("variants", {})[variant] = {"uri": stored.uri, "key": key, "sha256": sha256,
                                                            "bytes": size, "format": FORMAT}
        return RegisteredModel(version=version, artifact_uri=stored.uri, sha256=sha256, bytes=size, format=FORMAT,
                               registry={"engine": self.name, "id": f"{model_name}/{version}/{variant}",
                                         "url": stored.uri})

    def set_stage(self, model_name: str, version: int, stage: str) -> None:
        if stage not in STAGES:
            raise PermanentEngineError(f"registry: unknown stage {stage!r}; allowed: {', '.join(STAGES)}")
        with self._index() as index:
            record = index["models"].get(model_name, {}).get(str(version))
            if record is None:
                raise PermanentEngineError(f"registry: {model_name} version {version} is not registered")
            if record.get("stage") != stage:
                record["stage"] = stage
                record.setdefault("stageHistory", []).append({"stage": stage, "at": _now()})

    def delete(self, model_name: str, version: int) -> None:
        """Remove the version's artifacts (package and variants), local copy and index entry.
        Deleting what is not there is not an error."""
        try:
            self.artifacts.delete_prefix(f"models/{model_name}/{version}")
        except Exception as exc:  # noqa: BLE001
            from cdl.errors import TransientError

            if isinstance(exc, TransientError):
                raise TransientEngineError(f"registry: cannot delete {model_name} version {version}: {exc}") from exc
            raise PermanentEngineError(f"registry: cannot delete {model_name} version {version}: {exc}") from exc
        shutil.rmtree(self.package_path(model_name, version), ignore_errors=True)
        with self._index() as index:
            versions = index["models"].get(model_name, {})
            versions.pop(str(version), None)
            if not versions:
                index["models"].pop(model_name, None)
