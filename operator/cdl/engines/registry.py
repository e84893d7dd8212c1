"""Which engine drives a resource: `spec.engine`, else the operator configuration's default.

Engines are built lazily, once, from the configuration (the local ones under `data_dir`, the
cluster ones from `config.cluster`). Tests hand in their own engines through `overrides`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cdl.config import OperatorConfig
from cdl.engines.local.jobs import JobRunner
from cdl.errors import PermanentEngineError

ALLOWED = {
    "data": ("local", "pachyderm"),
    "training": ("local", "determined"),
    "registry": ("local", "determined"),
    "serving": ("local", "seldon"),
}


class EngineRegistry:
    def __init__(
        self,
        config: OperatorConfig,
        artifacts: Any | None = None,
        database: Any | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.config = config
        self.artifacts = artifacts
        self.database = database
        self._built: dict[tuple[str, str], Any] = {}
        for role, engines in (overrides or {}).items():
            for name, engine in engines.items():
                self._built[(role, name)] = engine
        self._lock = threading.Lock()
        self.jobs = JobRunner(config.data_dir / "jobs")
        self._listener: Callable[[str, Any], None] | None = None
        self._unsubscribe: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[str, Any], None]) -> None:
        """Call `listener(role, key)` when an engine reports a change of a resource's work: every
        engine that reports changes (`base.ReportsChanges`), built now or later, one channel each."""
        with self._lock:
            self._listener = listener
            built = list(self._built.items())
        for (role, _), engine in built:
            self._connect(role, engine)

    def _connect(self, role: str, engine: Any) -> None:
        listener = self._listener
        if listener is not None and callable(getattr(engine, "subscribe", None)):
            self._unsubscribe.append(engine.subscribe(lambda key, _role=role: listener(_role, key)))

    def _get(self, role: str, name: str) -> Any:
        with self._lock:
            if (role, name) not in self._built:
                allowed = ALLOWED.get(role, ())
                if name not in allowed:
                    raise PermanentEngineError(
                        f"engine {name!r} cannot drive {role}; allowed: {', '.join(allowed)}", reason="UnknownEngine")
                self._built[(role, name)] = engine = getattr(self, f"_build_{role}_{name}")()
                self._connect(role, engine)
            return self._built[(role, name)]

    def data(self, name: str) -> Any:
        return self._get("data", name)

    def training(self, name: str) -> Any:
        return self._get("training", name)

    def registry(self, name: str) -> Any:
        return self._get("registry", name)

    def serving(self, name: str) -> Any:
        return self._get("serving", name)

    def labeling(self) -> Any:
        with self._lock:
            if ("labeling", "labelstudio") not in self._built:
                from cdl.engines.labelstudio import LabelStudioEngine

                self._built[("labeling", "labelstudio")] = LabelStudioEngine()
            return self._built[("labeling", "labelstudio")]

    def close(self) -> None:
        """Operator shutdown: stop following engine work. Trials are stopped (a restarted
        operator resumes them from their checkpoints); model servers keep serving and are
        adopted by the next operator (`cdl down` stops them)."""
        with self._lock:
            built = dict(self._built)
            unsubscribe, self._unsubscribe = self._unsubscribe, []
        for stop in unsubscribe:
            stop()
        for (role, _), engine in built.items():
            close = getattr(engine, "close", None)
            if close is None:
                continue
            if role == "training":
                close(kill_trials=True)
            elif role == "serving":
                close(stop_servers=False)
            else:
                close()

    def package_dir(self, uri: str, sha256: str) -> Path:
        """A local unpacked copy of a ModelVersion package (downloaded once, checked by sha256)."""
        from cdl.runtime.package import unpack
        from cdl.stores.artifacts import download_uri

        target = self.config.data_dir / "packages" / sha256[:16]
        if (target / "cdl-package.json").exists():
            return target
        archive = self.config.data_dir / "packages" / f"{sha256[:16]}.tar.gz"
        archive.parent.mkdir(parents=True, exist_ok=True)
        download_uri(uri, archive, sha256=sha256, s3=self._s3())
        unpack(archive, target)
        return target

    # ------------------------------------------------------------------ builders

    def _root(self, name: str) -> Path:
        path = self.config.data_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _s3(self) -> Any:
        if not self.config.s3.endpoint:
            return None
        from cdl.stores.artifacts import S3Settings

        s3 = self.config.s3
        return S3Settings(endpoint=s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key,
                          secure=s3.secure, region=s3.region)

    def _build_data_local(self) -> Any:
        from cdl.engines.local.data import LocalDataEngine

        shared = self.artifacts if (self.config.artifact_url or "").startswith("s3://") else None
        return LocalDataEngine(self._root("data"), artifacts=shared, s3_endpoint=self.config.s3.endpoint or None)

    def _build_training_local(self) -> Any:
        from cdl.engines.local.training import LocalTrainingEngine

        shared = self.artifacts if (self.config.artifact_url or "").startswith("s3://") else None
        return LocalTrainingEngine(self._root("training"), artifacts=shared, database=self.database)

    def _build_registry_local(self) -> Any:
        from cdl.engines.local.registry import LocalRegistryEngine

        return LocalRegistryEngine(self._root("registry"), self.artifacts)

    def _build_serving_local(self) -> Any:
        from cdl.engines.local.serving import LocalServingEngine

        return LocalServingEngine(self._root("serving"), database=self.database, artifacts=self.artifacts)

    def _cluster(self) -> Any:
        from cdl.engines.cluster_settings import ClusterSettings

        return ClusterSettings.model_validate(self.config.cluster)

    def _build_data_pachyderm(self) -> Any:
        from cdl.engines.pachyderm import PachydermDataEngine

        cluster = self._cluster()
        return PachydermDataEngine(cluster.pachyderm, work_dir=self._root("pachyderm"), gpu=cluster.gpu)

    def _build_training_determined(self) -> Any:
        from cdl.engines.determined import DeterminedTrainingEngine

        return DeterminedTrainingEngine(self._cluster().determined, poll_seconds=self.config.poll_seconds)

    def _build_registry_determined(self) -> Any:
        from cdl.engines.determined import DeterminedRegistryEngine

        return DeterminedRegistryEngine(self._cluster().determined, self.artifacts,
                                        root=self._root("registry-determined"))

    def _build_serving_seldon(self) -> Any:
        from cdl.engines.seldon import SeldonServingEngine

        cluster = self._cluster()
        return SeldonServingEngine(cluster.seldon, gpu=cluster.gpu, poll_seconds=self.config.poll_seconds)
