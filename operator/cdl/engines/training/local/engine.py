"""`LocalTrainingEngine`: Experiments on this machine, with Determined's semantics.

Each (resource, generation, run) is one run under `<root>/runs/<run-id>/`, driven by a
background thread (`runner.RunDriver`) that launches every trial segment as its own process
group. Everything is persisted, so `status()` on a new engine instance resumes a run whose
driver died, without re-running finished trials.

On-disk layout of a run:

    <root>/runs/<namespace>--<name>-g<generation>-r<run>/
      run.json          request, trials (hyperparameters, validations, checkpoints, resources)
      run.log           the driver's log: trials started, promoted, stopped, finished
      run.lock          held (flock) by the live driver
      code/             snapshot of spec.model.path taken at submit (.detignore honoured)
      trials/<id>/
        config.json     what the bootstrap reads (CDL_TRIAL_CONFIG): hparams, length, checkpoint
        events.jsonl    what the trial reports (CDL_TRIAL_EVENTS): metrics, checkpoints, errors
        trial.log       stdout and stderr of every segment, tracebacks included
        stop            written to ask the trial to stop at its next validation (CDL_TRIAL_STOP)
        work/           the trial's working directory: a copy of code/
        xdg/determined/<uuid>/   checkpoints (XDG_DATA_HOME=xdg): state_dict.pth, metadata.json,
                                 code/, load_data.json, trial_state.pkl (PyTorchTrial) or
                                 model_checkpoint*, callback_state (Keras) or the script's files
"""

from __future__ import annotations

import ast
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import cdl.engines.training.local.hparams as hp
import cdl.engines.training.local.searchers as searchers
from cdl.api.experiment import ExperimentSpec
from cdl.engines.base import EngineRef, JobState, ResourceKey, TrainingRequest, TrainingStatus
from cdl.engines.changes import ChangeFeed
from cdl.engines.training.local.records import Recorder
from cdl.engines.training.local.runner import DriverSettings, RunDriver
from cdl.engines.training.local.slots import Slots
from cdl.engines.training.local.state import (
    CANCELED,
    PAUSED,
    PENDING,
    RUNNING,
    RunState,
    TrialState,
    load,
    save,
)
from cdl.engines.training.local.status import build_status
from cdl.engines.training.local.trial_process import TrialProcess, gpu_count
from cdl.errors import InvalidSpec, PermanentEngineError, TransientEngineError

ENGINE = "local"


def run_id_for(key: ResourceKey, generation: int, run: int) -> str:
    return f"{key.slug}-g{generation}-r{run}"


def _ignore_for(model_dir: Path) -> Any:
    """Determined's .detignore rules (with its defaults: .git/, __pycache__/ ...) for copies of
    the model code; the .detignore file itself is kept so checkpoints' code/ honours it too."""
    import pathspec
    from determined.common.constants import DEFAULT_DETIGNORE

    lines = list(DEFAULT_DETIGNORE)
    if (model_dir / ".detignore").is_file():
        lines += (model_dir / ".detignore").read_text().splitlines()
    spec = pathspec.GitIgnoreSpec.from_lines(lines)

    def ignore(path: str, names: list[str]) -> set[str]:
        out = set()
        for name in names:
            full = Path(path) / name
            rel = full.relative_to(model_dir).as_posix()
            if name != ".detignore" and (spec.match_file(rel) or (full.is_dir() and spec.match_file(rel + "/"))):
                out.add(name)
        return out

    return ignore


def check_entrypoint(model_dir: Path, entrypoint: str, resource: str, *, has_max_length: bool = True) -> None:
    """Refuse, before anything runs, an entrypoint whose file, module or top-level name is
    missing from the model code (names bound dynamically are left to the trial to find), and a
    PyTorchTrial class without spec.searcher.maxLength (Trainer.fit needs a length)."""
    field = "spec.model.entrypoint"
    if entrypoint.endswith(".py"):
        if not (model_dir / entrypoint).is_file():
            raise InvalidSpec(resource, [(field, f"{entrypoint!r}: no such file in {model_dir}")])
        return
    module, _, attr = entrypoint.partition(":")
    rel = Path(*module.split("."))
    source = model_dir / rel.with_suffix(".py")
    package = model_dir / rel / "__init__.py"
    if not source.is_file() and not package.is_file():
        if (model_dir / rel).is_dir():
            return  # a namespace package: let Python decide
        raise InvalidSpec(resource, [(field, f"{entrypoint!r}: module {module!r} not found in {model_dir}")])
    if not attr:
        return
    path = source if source.is_file() else package
    try:
        tree = ast.parse(path.read_text(), str(path))
    except SyntaxError as exc:
        raise InvalidSpec(resource, [(field, f"{entrypoint!r}: {path.name} does not parse: {exc}")]) from exc
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == attr and not has_max_length:
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
            if "PyTorchTrial" in bases:
                raise InvalidSpec(resource, [("spec.searcher.maxLength",
                                              f"Required value: {entrypoint} is a PyTorchTrial, which trains "
                                              "for maxLength epochs or batches")])
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            if any(a.name == "*" for a in node.names):
                return
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.If | ast.Try | ast.With):
            return  # conditional definitions: don't guess
    if attr not in names:
        raise InvalidSpec(resource, [(field, f"{entrypoint!r}: module {module} has no attribute {attr!r}")])


class LocalTrainingEngine:
    """The TrainingEngine of the embedded platform (see the module docstring for the layout)."""

    name = ENGINE
    records_registry = True  # writes runs, trials and metric series to PostgreSQL itself (records.py)

    def __init__(
        self,
        root: Path,
        artifacts: Any | None = None,
        database: Any | None = None,
        max_parallel: int | None = None,
        *,
        settings: DriverSettings | None = None,
        gpus: list[int] | None = None,
    ) -> None:
        self.root = Path(root)
        (self.root / "runs").mkdir(parents=True, exist_ok=True)
        self.artifacts = artifacts
        self.database = database
        self.max_parallel = max_parallel or (os.cpu_count() or 1)
        self.settings = settings or DriverSettings()
        if gpus is None:
            gpus = list(range(gpu_count()))
        self.slots = Slots(self.max_parallel, gpus)
        self.recorder = Recorder(database, artifacts)
        self._drivers: dict[str, RunDriver] = {}
        self._lock = threading.RLock()
        self.changes = ChangeFeed()  # saved run states (trials reporting, finishing), for the operator
        self.subscribe = self.changes.subscribe

    # ------------------------------------------------------------------ paths

    def run_dir(self, run_id: str) -> Path:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise PermanentEngineError(f"invalid local training run id {run_id!r}")
        return self.root / "runs" / run_id

    def _ref(self, run_id: str) -> EngineRef:
        return EngineRef(id=run_id, url=self.run_dir(run_id).resolve().as_uri(), engine=ENGINE)

    def _load(self, run_id: str) -> RunState:
        path = self.run_dir(run_id) / "run.json"
        if not path.exists():
            raise PermanentEngineError(f"no local training run {run_id!r} under {self.root}", reason="RunNotFound")
        return load(path)

    # ------------------------------------------------------------------ TrainingEngine

    def submit(self, request: TrainingRequest) -> EngineRef:
        run_id = run_id_for(request.key, request.generation, request.run)
        run_dir = self.run_dir(run_id)
        resource = f"Experiment {request.key}"
        with self._lock:
            if (run_dir / "run.json").exists():
                self._ensure_driver(run_id)
                return self._ref(run_id)
            spec = request.spec
            self._validate(spec, request.model_dir, resource)
            run_dir.mkdir(parents=True, exist_ok=True)
            code = run_dir / "code"
            if code.exists():
                shutil.rmtree(code)
            shutil.copytree(request.model_dir, code, ignore=_ignore_for(request.model_dir), symlinks=True)
            data = None
            if request.data is not None:
                data = {**request.data.wire(), "path": request.data.path, "uri": request.data.uri}
            run = RunState(
                id=run_id,
                namespace=request.key.namespace,
                name=request.key.name,
                uid=request.key.uid,
                generation=request.generation,
                run=request.run,
                spec=spec.model_dump(by_alias=True, exclude_unset=True, mode="json"),  # unset stays unset
                model_dir=str(request.model_dir),
                data=data,
            )
            save(run, run_dir / "run.json")
            self._ensure_driver(run_id, run)
            return self._ref(run_id)

    def _validate(self, spec: ExperimentSpec, model_dir: Path, resource: str) -> None:
        """What only this engine can check: the entrypoint in the model code, the searcher's plan and
        the GPUs of this machine (the spec's own rules were checked once, when it was parsed)."""
        check_entrypoint(Path(model_dir), spec.model.entrypoint, resource,
                         has_max_length=spec.searcher.max_length is not None)
        try:
            searchers.make(spec)
        except hp.GridError as exc:
            raise InvalidSpec(resource, [(exc.field, exc.message)]) from exc
        if spec.searcher.name == "grid" and searchers.make(spec).planned_trials() == 0:
            raise InvalidSpec(resource, [("spec.hyperparameters", "the grid is empty")])
        res = spec.resources
        if res and res.gpu and res.slots_per_trial > 1 and 0 < self.slots.gpu_total < res.slots_per_trial:
            raise PermanentEngineError(
                f"{resource}: spec.resources.slotsPerTrial {res.slots_per_trial} needs as many GPUs; this "
                f"machine has {self.slots.gpu_total}"
            )

    def _ensure_driver(self, run_id: str, run: RunState | None = None) -> RunDriver | None:
        """The live driver of an unfinished run, started (resuming) when there is none."""
        with self._lock:
            driver = self._drivers.get(run_id)
            if driver is not None and driver.alive:
                return driver
            run = run or self._load(run_id)
            if JobState(run.state).finished:
                return None
            driver = RunDriver(
                run,
                self.run_dir(run_id),
                slots=self.slots,
                settings=self.settings,
                threads_per_process=max(1, (os.cpu_count() or 1) // self.max_parallel),
                on_trial_finished=self.recorder.trial_finished,
                on_event=self.recorder.event,
                on_run_finished=self.recorder.run_finished,
                on_change=lambda r: self.changes.emit(ResourceKey(r.namespace, r.name)),
            )
            self.recorder.run_started(run, self.run_dir(run_id))
            if not driver.start():
                return None  # another engine (process) drives it; read its state from disk
            self._drivers[run_id] = driver
            return driver

    def status(self, ref: EngineRef) -> TrainingStatus:
        with self._lock:
            driver = self._drivers.get(ref.id)
            if driver is None or not driver.alive:
                driver = self._ensure_driver(ref.id)
        if driver is not None:
            return driver.snapshot()
        run = self._load(ref.id)
        spec = ExperimentSpec.model_validate(run.spec)
        return build_status(run, searchers.make(spec), self.run_dir(ref.id))

    def kill(self, ref: EngineRef) -> None:
        """Cancel the run: every trial's process group is stopped (SIGTERM, then SIGKILL)."""
        with self._lock:
            driver = self._drivers.get(ref.id)
        if driver is not None and driver.alive:
            driver.cancel()
            driver.join(30)
            if not driver.alive:
                return
        path = self.run_dir(ref.id) / "run.json"
        if not path.exists():
            return
        run = load(path)
        if JobState(run.state).finished:
            return
        for trial in run.trials:
            if trial.process is not None:
                proc = TrialProcess.adopt(trial.process)
                if proc is not None:
                    proc.kill_now()
                trial.process = None
            if trial.state in (RUNNING, PAUSED, PENDING):
                trial.state = CANCELED
                trial.finished = time.time()
        run.canceled = True
        run.state = JobState.CANCELED.value
        run.message = "canceled"
        run.finished = time.time()
        save(run, path)

    def delete(self, ref: EngineRef) -> None:
        """Cancel the run and remove its directory and the checkpoints it stored in the artifact
        store. The Experiment Registry rows stay: ModelVersions' lineage points at them."""
        self.kill(ref)
        with self._lock:
            self._drivers.pop(ref.id, None)
        run_dir = self.run_dir(ref.id)
        path = run_dir / "run.json"
        if self.artifacts is not None and path.exists():
            run = load(path)
            try:
                self.artifacts.delete_prefix(f"checkpoints/{run.namespace}/{run.name}/{run.id}")
            except Exception as exc:  # noqa: BLE001 - the store may be down; the directory still goes
                raise TransientEngineError(f"could not delete the checkpoints of run {ref.id}: {exc}") from exc
        shutil.rmtree(run_dir, ignore_errors=True)

    def logs(self, ref: EngineRef | str, trial_id: str | None = None) -> str:
        return logs(self.root, ref, trial_id)

    def compare(self, ref: EngineRef | str) -> list[dict[str, Any]]:
        return compare(self.root, ref)

    def close(self, kill_trials: bool = True) -> None:
        """Stop every driver thread (operator shutdown). Without kill_trials the trial processes
        keep running; the next engine on this root stops and relaunches them from checkpoints."""
        with self._lock:
            drivers = list(self._drivers.values())
            self._drivers.clear()
        for driver in drivers:
            driver.halt(kill_trials)
        for driver in drivers:
            driver.join(30)

    def wait(self, ref: EngineRef, timeout: float = 600.0, poll: float = 0.2) -> TrainingStatus:
        """Block until the run finishes (tests, the CLI's --wait, benchmarks)."""
        deadline = time.time() + timeout
        while True:
            status = self.status(ref)
            if status.state.finished:
                return status
            if time.time() > deadline:
                raise TimeoutError(f"run {ref.id} still {status.state.value} after {timeout} s: {status.message}")
            with self._lock:
                driver = self._drivers.get(ref.id)
            if driver is not None:
                driver.join(poll)
            else:
                time.sleep(poll)


# ---------------------------------------------------------------------- CLI helpers


def _run_id(ref: EngineRef | str) -> str:
    return ref.id if isinstance(ref, EngineRef) else str(ref)


def read_status(root: Path, ref: EngineRef | str) -> TrainingStatus:
    """A run's status from its persisted state, never resuming it (for the CLI and dashboards,
    which must not become a run's driver)."""
    path = Path(root) / "runs" / _run_id(ref) / "run.json"
    if not path.exists():
        raise PermanentEngineError(f"no local training run {_run_id(ref)!r} under {root}", reason="RunNotFound")
    run = load(path)
    return build_status(run, searchers.make(ExperimentSpec.model_validate(run.spec)), path.parent)


def logs(root: Path, ref: EngineRef | str, trial_id: str | None = None) -> str:
    """A trial's stdout and stderr (every segment, tracebacks included), or the run's log."""
    run_dir = Path(root) / "runs" / _run_id(ref)
    if not run_dir.is_dir():
        raise PermanentEngineError(f"no local training run {_run_id(ref)!r} under {root}", reason="RunNotFound")
    if trial_id is None:
        path = run_dir / "run.log"
    else:
        path = run_dir / "trials" / str(trial_id) / "trial.log"
        if not path.parent.is_dir():
            known = sorted((p.name for p in (run_dir / "trials").glob("*")), key=lambda n: (len(n), n))
            raise PermanentEngineError(
                f"run {_run_id(ref)} has no trial {trial_id!r}; trials: {', '.join(known) or 'none yet'}",
                reason="TrialNotFound",
            )
    return path.read_text(errors="replace") if path.exists() else ""


def trial_row(trial: TrialState, spec: ExperimentSpec) -> dict[str, Any]:
    """One trial as a flat row for `cdl experiments compare`."""
    smaller = spec.searcher.smaller_is_better
    best = trial.best_validation(smaller)
    ckpt = trial.best_checkpoint(smaller)
    model = trial.metadata.get("model") or {}
    return {
        "trial": trial.id,
        "state": trial.state,
        "stop_reason": trial.stop_reason or (trial.error if trial.state == "failed" else None),
        **{f"hp.{k}": v for k, v in hp.flatten(trial.hparams).items()},
        spec.searcher.metric: best.value if best else None,
        **{f"metric.{k}": v for k, v in (best.metrics if best else {}).items() if k != spec.searcher.metric},
        "length_done": trial.units_done,
        "unit": spec.searcher.max_length.unit if spec.searcher.max_length else "steps",
        "validations": len(trial.validations),
        "segments": trial.segments,
        "wall_seconds": round(trial.wall_seconds, 2),
        "cpu_seconds": round(trial.cpu_seconds, 2),
        "peak_rss_bytes": trial.peak_rss_bytes,
        "gpu_utilization": trial.gpu_utilization,
        "parameters": model.get("parameters"),
        "checkpoint": ckpt.uuid if ckpt else None,
        "seed": trial.seed,
    }


def compare(source: Any, ref: EngineRef | str) -> list[dict[str, Any]]:
    """Trials of a run side by side, best first: from an engine root (a path) or a Database."""
    if isinstance(source, LocalTrainingEngine):
        source = source.root
    if isinstance(source, str | Path):
        run_dir = Path(source) / "runs" / _run_id(ref)
        if not (run_dir / "run.json").exists():
            raise PermanentEngineError(f"no local training run {_run_id(ref)!r} under {source}", reason="RunNotFound")
        run = load(run_dir / "run.json")
        spec = ExperimentSpec.model_validate(run.spec)
        rows = [trial_row(t, spec) for t in run.trials]
        metric, smaller = spec.searcher.metric, spec.searcher.smaller_is_better
    else:
        from cdl.engines.training.local.records import compare_from_database

        rows, metric, smaller = compare_from_database(source, _run_id(ref))
    rows.sort(key=lambda r: (searchers.sort_key(r.get(metric), smaller), int(r["trial"]) if str(r["trial"]).isdigit() else 0))
    return rows
