"""Which engine drives a resource: `spec.engine`, else the operator configuration's default.

Engines are built lazily, once, from the configuration (the local ones under `data_dir`, the
cluster ones from `config.cluster`). Tests hand in their own engines through `overrides`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdl.config import OperatorConfig
from cdl.engines.base import DataEngine, LabelingEngine, RegistryEngine, ServingEngine, TrainingEngine
from cdl.engines.jobs import JobRunner
from cdl.errors import PermanentEngineError

if TYPE_CHECKING:
    from cdl.quality.evaluation_job import Evaluator

ALLOWED = {
    "data": ("local", "pachyderm"),
    "training": ("local", "determined"),
    "registry": ("local", "determined"),
    "serving": ("local", "seldon"),
    "evaluation": ("local", "kubernetes"),  # subprocesses here, or Jobs on the cluster
}


class EngineChooser:
    """Builds each engine once and hands it out by role and name, typed by its protocol, so a reader
    can follow a reconciler's call into `cdl.engines.base` and from there to the engine."""

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
        self.job_launcher: Any | None = None  # the controller's Kubernetes client, for evaluation Jobs
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

    def data(self, name: str) -> DataEngine:
        return self._get("data", name)

    def training(self, name: str) -> TrainingEngine:
        return self._get("training", name)

    def registry(self, name: str) -> RegistryEngine:
        return self._get("registry", name)

    def serving(self, name: str) -> ServingEngine:
        return self._get("serving", name)

    def evaluation(self, name: str) -> Evaluator:
        return self._get("evaluation", name)

    def labeling(self) -> LabelingEngine:
        with self._lock:
            if ("labeling", "labelstudio") not in self._built:
                from cdl.engines.labeling.labelstudio import LabelStudioEngine

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
        from cdl.engines.registry.cache import PackageCache

        return PackageCache(self.config.data_dir / "packages", s3=self._s3()).get(uri, sha256)

    def code_dir(self, uri: str, sha256: str) -> Path:
        """A local unpacked copy of a code bundle (spec.model.bundle), fetched once and checked by
        sha256: the model directory on a cluster, where the operator has no checkout."""
        from cdl.engines.training.code_bundle import unpack
        from cdl.stores.opener import download_uri

        target = self.config.data_dir / "code" / sha256[:16]
        if target.is_dir():
            return target
        archive = self.config.data_dir / "code" / f"{sha256[:16]}.tar.gz"
        archive.parent.mkdir(parents=True, exist_ok=True)
        try:
            download_uri(uri, archive, sha256=sha256, s3=self._s3())
            return unpack(archive, sha256, target)
        finally:
            archive.unlink(missing_ok=True)

    # ------------------------------------------------------------------ builders

    def _root(self, name: str) -> Path:
        path = self.config.data_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _s3(self) -> Any:
        return self.config.s3_settings()

    def _build_data_local(self) -> Any:
        from cdl.engines.data.local import LocalDataEngine

        shared = self.artifacts if (self.config.artifact_url or "").startswith("s3://") else None
        return LocalDataEngine(self._root("data"), artifacts=shared, s3_endpoint=self.config.s3.endpoint or None)

    def _build_training_local(self) -> Any:
        from cdl.engines.training.local import LocalTrainingEngine

        shared = self.artifacts if (self.config.artifact_url or "").startswith("s3://") else None
        return LocalTrainingEngine(self._root("training"), artifacts=shared, database=self.database)

    def _build_registry_local(self) -> Any:
        from cdl.engines.registry.local import LocalRegistryEngine

        return LocalRegistryEngine(self._root("registry"), self.artifacts)

    def _build_serving_local(self) -> Any:
        from cdl.engines.serving.local import LocalServingEngine

        return LocalServingEngine(self._root("serving"), database=self.database, artifacts=self.artifacts)

    def _cluster(self) -> Any:
        from cdl.engines.settings import ClusterSettings

        return ClusterSettings.model_validate(self.config.cluster)

    def _build_data_pachyderm(self) -> Any:
        from cdl.engines.data.pachyderm import PachydermDataEngine

        cluster = self._cluster()
        return PachydermDataEngine(cluster.pachyderm, work_dir=self._root("pachyderm"), gpu=cluster.gpu)

    def _build_evaluation_local(self) -> Any:
        from cdl.quality.evaluation_job import LocalEvaluator

        return LocalEvaluator(self.jobs)

    def _build_evaluation_kubernetes(self) -> Any:
        from cdl.quality.evaluation_job import JobEvaluator

        if self.job_launcher is None or self.artifacts is None:
            raise PermanentEngineError("evaluation Jobs need the Kubernetes API and an artifact store",
                                       reason="UnknownEngine")
        cluster = self._cluster()
        updates: dict[str, Any] = {}
        if cluster.evaluation.pachd_address is None:
            updates["pachd_address"] = cluster.pachyderm.address
        if cluster.evaluation.s3_endpoint is None and self.config.s3.endpoint:
            updates["s3_endpoint"] = self.config.s3.endpoint
        return JobEvaluator(self.job_launcher, self.artifacts, cluster.evaluation.model_copy(update=updates))

    def _build_training_determined(self) -> Any:
        from cdl.engines.training.determined import DeterminedTrainingEngine

        cluster = self._cluster()
        settings = cluster.determined
        if "CDL_PACHD_ADDRESS" not in settings.trial_env:  # trials copy Pachyderm data themselves
            settings = settings.model_copy(
                update={"trial_env": {**settings.trial_env, "CDL_PACHD_ADDRESS": cluster.pachyderm.address}})
        return DeterminedTrainingEngine(settings, poll_seconds=self.config.poll_seconds)

    def _build_registry_determined(self) -> Any:
        from cdl.engines.registry.determined import DeterminedRegistryEngine

        return DeterminedRegistryEngine(self._cluster().determined, self.artifacts,
                                        root=self._root("registry-determined"))

    def _build_serving_seldon(self) -> Any:
        from cdl.engines.serving.seldon import SeldonServingEngine

        cluster = self._cluster()
        return SeldonServingEngine(cluster.seldon, gpu=cluster.gpu, poll_seconds=self.config.poll_seconds)
