"""The experiment driver: one background thread per run that asks the searcher what to run,
launches trial segments, follows their events and resources, enforces early stopping and
budgets, and persists everything after each change so a new engine resumes where it stopped.

Resuming (a new engine instance on the same root) keeps finished trials as they are; a trial
that was running when its driver died is killed by process group (if its process survived) and
relaunched from its latest checkpoint, dropping validations reported after that checkpoint.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cdl.engines.training.local.searchers as searchers
from cdl.api.experiment import ExperimentSpec
from cdl.engines.base import JobState, TrainingStatus
from cdl.engines.training.curves import curve_of
from cdl.engines.training.local.slots import Slots
from cdl.engines.training.local.state import (
    CANCELED,
    FAILED,
    PAUSED,
    RUNNING,
    SUCCEEDED,
    Checkpoint,
    RunState,
    TrialState,
    Validation,
    save,
)
from cdl.engines.training.local.status import build_status
from cdl.engines.training.local.trial_process import Segment, TrialProcess, free_ports, read_events
from cdl.runtime.stopping import StoppingRules, StoppingSettings
from cdl.runtime.stopping.curves import metric_lookup
from cdl.runtime.stopping.settings import human_bytes, parse_quantity

__all__ = ["DriverSettings", "RunDriver", "human_bytes", "metric_lookup", "parse_quantity"]

logger = logging.getLogger("cdl.engines.training.local")

EXIT_ENTRYPOINT = 3  # cdl.runtime.launch's code for an unusable entrypoint
UNIT_KEYS = ("epochs", "batches")
RESOURCE_SAMPLE_SECONDS = 2.0  # a trial's memory/CPU/GPU over time, for the knowledge base's curves
RESOURCE_MAX_POINTS = 300  # beyond this the series keeps every other point


@dataclass
class DriverSettings:
    """Knobs of the driver loop (tests shorten them)."""

    poll_seconds: float = 0.25
    stop_grace_seconds: float = 60.0  # a stop request unanswered this long becomes SIGTERM
    persist_seconds: float = 2.0  # rewrite run.json at least this often while trials run


class RunDriver:
    """Drives one run to completion in a background thread; `snapshot()` is safe from any thread."""

    def __init__(
        self,
        run: RunState,
        run_dir: Path,
        *,
        slots: Slots,
        settings: DriverSettings,
        threads_per_process: int,
        on_trial_finished: Callable[[RunState, TrialState], None] | None = None,
        on_event: Callable[[RunState, TrialState, str, dict[str, Any]], None] | None = None,
        on_run_finished: Callable[[RunState], None] | None = None,
        on_change: Callable[[RunState], None] | None = None,
    ) -> None:
        self.run = run
        self.on_change = on_change  # called after each saved state: the engine reports it
        self.run_dir = run_dir
        self.spec = ExperimentSpec.model_validate(run.spec)
        self.searcher = searchers.make(self.spec)
        self.metric = self.spec.searcher.metric
        self.smaller = self.spec.searcher.smaller_is_better
        self.slots = slots
        self.settings = settings
        self.threads_per_process = threads_per_process
        self.on_trial_finished = on_trial_finished
        self.on_event = on_event
        self.on_run_finished = on_run_finished
        self.procs: dict[str, TrialProcess] = {}
        self.trial_gpus: dict[str, list[int]] = {}
        self.lock = threading.RLock()
        self.wake = threading.Event()
        self._halt = False  # stop the thread without touching trials (engine close)
        self._halt_kill = False
        self._lock_fd: int | None = None
        self._thread: threading.Thread | None = None
        self._last_persist = 0.0
        self._fail_fast: str | None = None
        es = self.spec.searcher.early_stopping
        self.stopping = StoppingRules(
            StoppingSettings.from_wire(es.wire() if es else None), metric=self.metric, smaller_is_better=self.smaller,
            target=self.searcher.max_length, unit=self.searcher.unit,
        )
        self._noted: set[str] = set()
        res = self.spec.resources
        self.slots_per_trial = res.slots_per_trial if res else 1
        self.use_gpu = bool(res and res.gpu) and slots.gpu_total > 0
        if res and res.gpu and slots.gpu_total == 0 and "no GPU" not in " ".join(run.notes):
            run.notes.append("spec.resources.gpu is true but this machine has no GPU: training on CPU")

    # ------------------------------------------------------------------ thread control

    def start(self) -> bool:
        """Take the run's lock and start the thread; False when another driver holds the run."""
        fd = os.open(self.run_dir / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        self._thread = threading.Thread(target=self._main, name=f"cdl-train-{self.run.id}", daemon=True)
        self._thread.start()
        return True

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def cancel(self) -> None:
        with self.lock:
            self.run.canceled = True
        self.wake.set()

    def halt(self, kill_trials: bool) -> None:
        """Stop driving (operator shutdown). With kill_trials the trials' groups are stopped too;
        without, they keep running and the next engine adopts and relaunches them."""
        self._halt_kill = kill_trials
        self._halt = True
        self.wake.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _main(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a bug in the driver must not leave trials orphaned silently
            logger.exception("training driver for %s crashed", self.run.id)
            self._log(f"driver crashed: {type(exc).__name__}: {exc}")
            for proc in self.procs.values():
                proc.kill_now()
            with self.lock:
                self.run.state = JobState.FAILED.value
                self.run.message = f"the local training driver failed: {type(exc).__name__}: {exc}"
                self.run.finished = time.time()
                self._persist(force=True)
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        with self.lock:
            if self.run.state == JobState.PENDING.value:
                self.run.state = JobState.RUNNING.value
                self._log(f"run {self.run.id} started: {self.searcher.describe()}")
            self._resume_interrupted()
            self._persist(force=True)
        while True:
            if self._halt:
                if self._halt_kill:
                    for proc in self.procs.values():
                        proc.kill_now()
                for trial_id in list(self.procs):
                    self._release(trial_id)
                with self.lock:
                    self._persist(force=True)
                return
            with self.lock:
                if self.run.canceled:
                    self._cancel_all()
                    return
                self._watch()
                if self._fail_fast is not None:
                    self._abort(self._fail_fast)
                    return
                launched, waiting = self._launch_next()
                if not self.procs and not launched and not waiting:
                    self._finalize()
                    return
                self._persist()
            self.wake.wait(self.settings.poll_seconds)
            self.wake.clear()

    def _resume_interrupted(self) -> None:
        """Stop what a dead driver left running; `_launch_next` relaunches those trials first."""
        for trial in self.run.trials:
            if trial.state != RUNNING or trial.id in self.procs:
                continue
            if trial.process is not None:
                old = TrialProcess.adopt(trial.process)
                if old is not None:
                    self._log(f"trial {trial.id}: stopping process group {old.pid} left by a previous driver")
                    old.kill_now()
                trial.process = None
            # What the old segment reported after the dead driver's last read (a validation, a
            # checkpoint) is taken in now, before trimming to the checkpoint it resumes from;
            # otherwise it would be read after the trim and duplicate the relaunch's reports.
            self._consume(trial)
            latest = trial.latest_checkpoint()
            keep_to = latest.steps if latest else -1
            trial.validations = [v for v in trial.validations if v.steps <= keep_to]
            trial.units_done = latest.units if latest else 0
            trial.steps_done = latest.steps if latest else 0

    def _interrupted(self) -> list[TrialState]:
        return [t for t in self.run.trials if t.state == RUNNING and t.id not in self.procs]

    # ------------------------------------------------------------------ launching

    def _can_start(self) -> list[int] | None:
        """Take engine slots (and GPUs) for one more trial: its GPUs, or None when busy."""
        return self.slots.acquire(self.slots_per_trial, self.use_gpu)

    def _launch_next(self) -> tuple[int, bool]:
        """Start what the searcher asks for while slots allow: (segments started, whether work
        is waiting for engine slots)."""
        launched = 0
        for trial in self._interrupted():
            if len(self.procs) >= self.spec.searcher.max_concurrent_trials:
                return launched, True
            gpus = self._can_start()
            if gpus is None:
                return launched, True
            latest = trial.latest_checkpoint()
            self._log(
                f"trial {trial.id}: resuming after a driver restart from "
                f"{'checkpoint ' + latest.uuid if latest else 'the start'}"
            )
            self._start_segment(trial, latest.uuid if latest else None, gpus, resumed=True)
            launched += 1
        free = self.spec.searcher.max_concurrent_trials - len(self.procs) - len(self._interrupted())
        if free <= 0:
            return launched, bool(self._interrupted())
        for action in self.searcher.next(self.run.trials, free):
            gpus = self._can_start()
            if gpus is None:
                return launched, True
            if isinstance(action, searchers.NewTrial):
                trial = self._new_trial(action)
                self._start_segment(trial, None, gpus)
            else:
                trial = self.run.trial(action.trial_id)
                assert isinstance(self.searcher, searchers.AshaSearch)
                self.searcher.promote(trial, action)
                latest = trial.latest_checkpoint()
                self._log(f"trial {trial.id}: promoted to rung {action.rung} ({action.target} {self.searcher.unit})")
                self._start_segment(trial, latest.uuid if latest else None, gpus)
            launched += 1
        return launched, False

    def _new_trial(self, action: searchers.NewTrial) -> TrialState:
        index = len(self.run.trials)
        trial = TrialState(
            id=str(index + 1),
            index=index,
            hparams=action.hparams,
            seed=self.spec.seed + index,
            state=RUNNING,
            target=action.target,
            rung=action.rung,
            started=time.time(),
        )
        self.run.trials.append(trial)
        trial_dir = self.trial_dir(trial.id)
        work = trial_dir / "work"
        if not work.exists():
            shutil.copytree(self.run_dir / "code", work, symlinks=True)
        self._log(f"trial {trial.id}: created with hyperparameters {trial.hparams}")
        self._emit(trial, "created", {})
        return trial

    def trial_dir(self, trial_id: str) -> Path:
        return self.run_dir / "trials" / trial_id

    def _length(self, value: int | None) -> dict[str, Any] | None:
        return None if value is None else {"value": value, "unit": self.searcher.unit}

    def _periods(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Validation and checkpoint periods: spec.determined's min_*_period, else one epoch
        (or a tenth of maxLength in batches)."""
        overrides = self.spec.determined or {}

        def parse(raw: Any) -> dict[str, Any] | None:
            if isinstance(raw, dict) and len(raw) == 1:
                ((unit, value),) = raw.items()
                if unit in UNIT_KEYS and isinstance(value, int) and value > 0:
                    return {"value": value, "unit": unit}
            return None

        validation = parse(overrides.get("min_validation_period"))
        if validation is None:
            if self.searcher.unit == "batches" and self.searcher.max_length:
                validation = {"value": max(1, math.ceil(self.searcher.max_length / 10)), "unit": "batches"}
            else:
                validation = {"value": 1, "unit": "epochs"}
        checkpoint = parse(overrides.get("min_checkpoint_period")) or validation
        return validation, checkpoint

    def _start_segment(
        self, trial: TrialState, checkpoint: str | None, gpus: list[int], *, resumed: bool = False
    ) -> None:
        """Launch the trial's next segment; the caller holds its engine slots and GPUs."""
        self.trial_gpus[trial.id] = gpus
        trial_dir = self.trial_dir(trial.id)
        work = trial_dir / "work"
        trial.segments += 1
        validation, checkpoint_period = self._periods()
        config = {
            "trial_id": trial.id,
            "experiment": f"{self.run.namespace}/{self.run.name}",
            "hparams": trial.hparams,
            "seed": trial.seed,
            "max_length": self._length(trial.target),
            "latest_checkpoint": checkpoint,
            "metric": self.metric,
            "smaller_is_better": self.smaller,
            "slots": self.slots_per_trial,
            "validation_period": validation,
            "checkpoint_period": checkpoint_period,
            "entrypoint": self.spec.model.entrypoint,
            "code_dir": str(work),
            "gpu": bool(gpus),
            "dist_ports": free_ports(2) if self.slots_per_trial > 1 else None,
            "exp_conf": self._exp_conf(),
        }
        env = self._env(trial, trial_dir, gpus)
        segment = Segment(trial_dir, work, config, env, self.slots_per_trial, gpus, trial.segments, trial.target)
        proc = TrialProcess.launch(segment)
        self.procs[trial.id] = proc
        trial.state = RUNNING
        trial.process = proc.info(trial.segments, trial.target)
        trial.started = trial.started or proc.started
        self._log(
            f"trial {trial.id}: segment {trial.segments} started (pid {proc.pid}, train to "
            f"{trial.target if trial.target is not None else '?'} {self.searcher.unit}"
            f"{', from checkpoint ' + checkpoint if checkpoint else ''}{', resumed' if resumed else ''})"
        )
        self._persist(force=True)

    def _exp_conf(self) -> dict[str, Any]:
        """A Determined-shaped experiment config, for `context.get_experiment_config()`."""
        s = self.spec.searcher
        conf: dict[str, Any] = {
            "name": f"{self.run.namespace}/{self.run.name}",
            "hyperparameters": self.spec.hyperparameters,
            "searcher": {"name": s.name, "metric": s.metric, "smaller_is_better": s.smaller_is_better,
                         "max_trials": s.max_trials},
            "resources": {"slots_per_trial": self.slots_per_trial},
            "reproducibility": {"experiment_seed": self.spec.seed},
        }
        if s.max_length:
            conf["searcher"]["max_length"] = {s.max_length.unit: s.max_length.units}
        return {**conf, **(self.spec.determined or {})}

    def _env(self, trial: TrialState, trial_dir: Path, gpus: list[int]) -> dict[str, str]:
        env = {
            "CDL_TRIAL_CONFIG": str(trial_dir / "config.json"),
            "CDL_TRIAL_EVENTS": str(trial_dir / "events.jsonl"),
            "CDL_TRIAL_STOP": str(trial_dir / "stop"),
            "CDL_TRIAL_ID": trial.id,
            "CDL_TRIAL_DIR": str(trial_dir),
            "CDL_EXPERIMENT": f"{self.run.namespace}/{self.run.name}",
            "CDL_RUN_DIR": str(self.run_dir),
            "CDL_SEED": str(trial.seed),
            "XDG_DATA_HOME": str(trial_dir / "xdg"),
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
            "PYTHONUNBUFFERED": "1",
            "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus),
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",  # the indices nvidia-smi reports
            "DET_CHIEF_IP": "127.0.0.1",
        }
        if "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(self.threads_per_process)
        data = self.run.data or {}
        if data.get("path"):
            env["CDL_DATA_DIR"] = str(data["path"])
        if data.get("uri"):
            env["CDL_DATA_URI"] = str(data["uri"])
        if data.get("repo"):
            env["CDL_DATA_REPO"] = str(data["repo"])
        if data.get("commit"):
            env["CDL_DATA_COMMIT"] = str(data["commit"])
        return env

    # ------------------------------------------------------------------ watching

    def _watch(self) -> None:
        for trial_id, proc in list(self.procs.items()):
            trial = self.run.trial(trial_id)
            usage = proc.sample()  # first, so validations read now carry fresh resource figures
            self._consume(trial)
            self._check_budgets(trial, proc)
            proc.escalate(self.settings.stop_grace_seconds)
            code = proc.poll()
            if code is not None:
                self._consume(trial)
                self._resource_point(trial, usage, final=True)
                self._segment_ended(trial, proc, code)
            else:
                trial.process = proc.info(trial.segments, trial.target)
                trial.metadata["current_rss_bytes"] = usage.rss_bytes
                self._resource_point(trial, usage)

    def _resource_point(self, trial: TrialState, usage: Any, final: bool = False) -> None:
        """Append (at most every RESOURCE_SAMPLE_SECONDS) the trial's memory, CPU time and GPU use;
        the `final` point of a segment is always taken, at the segment's peak memory, so a trial
        shorter than the sampling interval still shows what it used."""
        series = trial.metadata.setdefault("resource_series", [])
        now = time.time()
        if not final and series and now - series[-1]["at"] < RESOURCE_SAMPLE_SECONDS:
            return
        rss = max(int(usage.rss_bytes), int(usage.peak_rss_bytes)) if final else int(usage.rss_bytes)
        series.append({"at": round(now, 2), "rssBytes": rss,
                       "cpuSeconds": round(trial.cpu_seconds + usage.cpu_seconds, 2),
                       "gpuUtilization": usage.gpu_utilization})
        if len(series) > RESOURCE_MAX_POINTS:
            trial.metadata["resource_series"] = series[:-1:2] + series[-1:]

    def _consume(self, trial: TrialState) -> None:
        events, offset = read_events(self.trial_dir(trial.id) / "events.jsonl", trial.events_offset)
        trial.events_offset = offset
        for event in events:
            self._handle(trial, event)

    def _handle(self, trial: TrialState, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        if kind == "start":
            meta = trial.metadata
            meta.setdefault("packages", ev.get("packages") or {})
            meta.setdefault("environment", ev.get("environment") or {})
            meta["seed"] = trial.seed
            meta["entrypoint"] = ev.get("entrypoint")
            if ev.get("world_size"):
                meta["world_size"] = ev["world_size"]
            if self.run.data:
                meta["data"] = {k: self.run.data.get(k) for k in ("repo", "commit", "branch") if self.run.data.get(k)}
        elif kind == "model":
            trial.metadata["model"] = {k: v for k, v in ev.items() if k not in ("event", "time", "rank")}
        elif kind == "data":  # what the bound commit holds: type, examples per label
            trial.metadata.setdefault("data", {}).update(
                {k: v for k, v in ev.items() if k not in ("event", "time", "rank")})
        elif kind == "metrics":
            self._metrics(trial, ev)
        elif kind == "checkpoint":
            steps = int(ev.get("steps_completed") or ev.get("batches") or 0)
            units = self._checkpoint_units(trial, ev, steps)
            if not any(c.uuid == ev["uuid"] for c in trial.checkpoints):
                trial.checkpoints.append(Checkpoint(str(ev["uuid"]), units, steps, float(ev.get("time", time.time()))))
            trial.units_done = max(trial.units_done, units)
        elif kind == "entrypoint_error":
            trial.error = str(ev.get("message"))
            self._fail_fast = trial.error
        elif kind == "error" and trial.error is None:
            trial.error = f"{ev.get('type')}: {ev.get('message')}"
        elif kind == "warning":
            trial.metadata.setdefault("warnings", []).append(ev.get("message"))
        self._emit(trial, str(kind), ev)

    def _units(self, ev: dict[str, Any], metrics: dict[str, Any]) -> int:
        """Units done at an event, in the searcher's unit (epochs or batches)."""
        unit = self.searcher.unit
        for source in (ev, metrics):
            if source.get(unit) is not None:
                try:
                    return int(float(source[unit]))
                except (TypeError, ValueError):
                    continue
        return int(ev.get("steps_completed") or 0)

    def _checkpoint_units(self, trial: TrialState, ev: dict[str, Any], steps: int) -> int:
        """A checkpoint's length in the searcher's unit: its own count when it has one, else the
        validation at the same step (Keras and scripts report only steps_completed)."""
        unit = self.searcher.unit
        if ev.get(unit) is not None:
            return int(ev[unit])
        same = [v.units for v in trial.validations if v.steps == steps]
        if same:
            return same[-1]
        if unit == "batches":
            return steps
        earlier = [v.units for v in trial.validations if v.steps <= steps]
        return max(earlier, default=0)

    def _metrics(self, trial: TrialState, ev: dict[str, Any]) -> None:
        raw = ev.get("metrics") or {}
        if ev.get("group") != "validation":
            if ev.get("group") == "training":
                trial.metadata["last_training_metrics"] = {
                    k: v for k, v in raw.items() if k not in UNIT_KEYS and isinstance(v, int | float | str)
                }
            return
        metrics: dict[str, float] = {}
        for k, v in raw.items():
            if k in UNIT_KEYS:
                continue
            try:
                metrics[k] = float(v)
            except (TypeError, ValueError):
                continue
        value = metric_lookup(metrics, self.metric)
        if value is not None:
            metrics[self.metric] = value
        elif trial.error is None:
            trial.error = (
                f"the trial reported validation metrics {sorted(metrics)} but not spec.searcher.metric "
                f"{self.metric!r}"
            )
            proc = self.procs.get(trial.id)
            if proc is not None:
                proc.request_stop("missing searcher metric")
        units = self._units(ev, raw)
        steps = int(ev.get("steps_completed") or 0)
        trial.validations.append(
            Validation(steps, units, value, metrics, float(ev.get("time", time.time())),
                       self._resources_now(trial, ev.get("gpu_peak_bytes")))
        )
        trial.units_done = max(trial.units_done, units)
        trial.steps_done = max(trial.steps_done, steps)
        self._early_stopping(trial)

    def _resources_now(self, trial: TrialState, gpu_peak: float | None = None) -> dict[str, float]:
        """The trial's cumulative resource figures (earlier segments plus the running one; the
        peak GPU memory as the trial reported it, where it has a GPU)."""
        proc = self.procs.get(trial.id)
        usage = proc.usage if proc is not None else None
        return {
            "cpu_seconds": round(trial.cpu_seconds + (usage.cpu_seconds if usage else 0.0), 3),
            "wall_seconds": round(trial.wall_seconds + (usage.wall_seconds if usage else 0.0), 3),
            "peak_rss_bytes": float(max(trial.peak_rss_bytes, usage.peak_rss_bytes if usage else 0)),
            **({"gpu_peak_bytes": float(gpu_peak)} if isinstance(gpu_peak, int | float) else {}),
        }

    def _early_stopping(self, trial: TrialState) -> None:
        """Apply spec.searcher.earlyStopping at the trial's new validation (cdl.runtime.stopping)."""
        proc = self.procs.get(trial.id)
        if proc is None or proc.stop_reason is not None or proc.killed is not None:
            return
        peers = [curve_of(t) for t in self.run.trials if t.id != trial.id] if self.stopping.settings.compares else []
        outcome = self.stopping.check(curve_of(trial), peers)
        for note in outcome.notes:
            rule = note.split(":", 1)[0]
            if rule not in self._noted:  # said once per rule: the log would drown otherwise
                self._noted.add(rule)
                self._log(f"trial {trial.id}: {note}")
        decision = outcome.decision
        if decision is None:
            return
        trial.metadata["early_stopping"] = {"rule": decision.rule, "units": decision.units, **decision.detail}
        if decision.detail.get("killed"):
            proc.terminate(decision.reason, hard=True)
            self._log(f"trial {trial.id}: {decision.reason}; killed its process group")
        else:
            proc.request_stop(decision.reason)
            self._log(f"trial {trial.id}: {decision.reason}")

    def _check_budgets(self, trial: TrialState, proc: TrialProcess) -> None:
        """Absolute budgets between validations too (a memory hog may never reach one)."""
        if proc.killed is None and (reason := self.stopping.memory_budget(proc.usage.peak_rss_bytes)):
            proc.terminate(reason, hard=True)
            self._log(f"trial {trial.id}: {reason}; killed its process group")
        if proc.stop_reason is None and proc.killed is None:
            if reason := self.stopping.wall_budget(trial.wall_seconds + proc.usage.wall_seconds):
                proc.request_stop(reason)
                self._log(f"trial {trial.id}: {reason}; asked it to stop")

    # ------------------------------------------------------------------ segment end

    def _release(self, trial_id: str) -> None:
        if self.procs.pop(trial_id, None) is not None:
            self.slots.release(self.slots_per_trial, self.trial_gpus.pop(trial_id, []))

    def _segment_ended(self, trial: TrialState, proc: TrialProcess, code: int) -> None:
        self._release(trial.id)
        usage = proc.usage
        trial.wall_seconds += usage.wall_seconds
        trial.cpu_seconds += usage.cpu_seconds
        trial.peak_rss_bytes = max(trial.peak_rss_bytes, usage.peak_rss_bytes)
        if usage.gpu_utilization is not None:
            n = trial.gpu_samples
            trial.gpu_utilization = ((trial.gpu_utilization or 0.0) * n + usage.gpu_utilization * usage.gpu_samples) / (
                n + usage.gpu_samples
            )
            trial.gpu_samples = n + usage.gpu_samples
        trial.process = None
        has_value = trial.best_validation(self.smaller) is not None
        stopped = proc.killed or (proc.stop_reason if proc.stop_reason != "missing searcher metric" else None)
        if stopped and not proc.killed and code == 0 and trial.target is not None and trial.units_done >= trial.target:
            stopped = None  # the stop came too late: the segment had already trained to its target
        if self.run.canceled:
            trial.state = CANCELED
        elif code == EXIT_ENTRYPOINT and self._fail_fast is not None:
            trial.state = FAILED
        elif trial.error and code == 0 and not has_value:
            trial.state = FAILED  # finished without the searcher metric
        elif stopped:
            trial.stop_reason = stopped
            if has_value:
                trial.state = SUCCEEDED
            else:
                trial.state = FAILED
                trial.error = trial.error or stopped
        elif code == 0:
            trial.state = self.searcher.segment_done(trial)
        else:
            trial.state = FAILED
            if trial.error is None:
                trial.error = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        verb = {PAUSED: "paused", SUCCEEDED: "finished", FAILED: "failed", CANCELED: "canceled"}.get(trial.state)
        detail = trial.stop_reason or trial.error or ""
        self._log(
            f"trial {trial.id}: segment {trial.segments} ended (exit {code}); trial {verb}"
            f"{': ' + detail if detail else ''}; {trial.units_done} {self.searcher.unit} done, "
            f"peak RSS {human_bytes(trial.peak_rss_bytes)}"
        )
        self._gc_checkpoints(trial)
        if trial.finished_state:
            trial.finished = time.time()
            if self.on_trial_finished is not None:
                self.on_trial_finished(self.run, trial)
        self._emit(trial, "segment_end", {"exit_code": code})
        self._persist(force=True)

    def _gc_checkpoints(self, trial: TrialState) -> None:
        """Keep the trial's best and latest checkpoints (Determined's default policy)."""
        keep = {c.uuid for c in (trial.best_checkpoint(self.smaller), trial.latest_checkpoint()) if c}
        root = self.trial_dir(trial.id) / "xdg" / "determined"
        for ckpt in list(trial.checkpoints):
            if ckpt.uuid not in keep:
                shutil.rmtree(root / ckpt.uuid, ignore_errors=True)
                trial.checkpoints.remove(ckpt)

    # ------------------------------------------------------------------ ending the run

    def _cancel_all(self) -> None:
        for trial_id, proc in list(self.procs.items()):
            proc.kill_now()
            trial = self.run.trial(trial_id)
            self._segment_ended(trial, proc, proc.returncode if proc.returncode is not None else -9)
        for trial in self.run.trials:
            if not trial.finished_state:
                trial.state = CANCELED
                trial.finished = trial.finished or time.time()
        self.run.state = JobState.CANCELED.value
        self.run.message = "canceled"
        self.run.finished = time.time()
        self._log("run canceled; every trial process group stopped")
        self._persist(force=True)
        if self.on_run_finished is not None:
            self.on_run_finished(self.run)

    def _abort(self, message: str) -> None:
        for trial_id, proc in list(self.procs.items()):
            proc.kill_now()
            trial = self.run.trial(trial_id)
            trial.error = trial.error or "stopped: the entrypoint is unusable"
            self._segment_ended(trial, proc, proc.returncode if proc.returncode is not None else -9)
            if trial.state != FAILED:
                trial.state = CANCELED
        for trial in self.run.trials:
            if not trial.finished_state:
                trial.state = CANCELED
        self.run.state = JobState.FAILED.value
        self.run.message = message
        self.run.finished = time.time()
        self._log(f"run failed: {message}")
        self._persist(force=True)
        if self.on_run_finished is not None:
            self.on_run_finished(self.run)

    def _finalize(self) -> None:
        self.searcher.finish(self.run.trials)
        for trial in self.run.trials:
            if trial.finished is None and trial.finished_state:
                trial.finished = time.time()
                if self.on_trial_finished is not None:
                    self.on_trial_finished(self.run, trial)
        trials = self.run.trials
        failed = [t for t in trials if t.state == FAILED]
        scored = [t for t in trials if t.state == SUCCEEDED and t.best_validation(self.smaller) is not None]
        if not trials:
            self.run.state, self.run.message = JobState.FAILED.value, "the searcher created no trials"
        elif not scored:
            first = failed[0] if failed else trials[0]
            if len(failed) == len(trials):
                self.run.message = f"all {len(trials)} trial(s) failed; trial {first.id}: {first.error}"
            else:
                self.run.message = (
                    f"no trial reported spec.searcher.metric {self.metric!r}; trial {first.id}: "
                    f"{first.error or first.stop_reason or 'no validation'}"
                )
            self.run.state = JobState.FAILED.value
        else:
            best = min(scored, key=lambda t: searchers.sort_key(t.best_validation(self.smaller).value, self.smaller))  # type: ignore[union-attr]
            value = best.best_validation(self.smaller).value  # type: ignore[union-attr]
            stopped = sum(1 for t in trials if t.state == SUCCEEDED and t.stop_reason)
            self.run.state = JobState.SUCCEEDED.value
            self.run.message = (
                f"{len(trials)} trial(s): {len(scored) - stopped} completed, {stopped} stopped early, "
                f"{len(failed)} failed; best trial {best.id} {self.metric}={value:.6g}"
            )
        self.run.finished = time.time()
        self._log(f"run {self.run.state}: {self.run.message}")
        self._persist(force=True)
        if self.on_run_finished is not None:
            self.on_run_finished(self.run)

    # ------------------------------------------------------------------ persistence, log

    def _persist(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._last_persist >= self.settings.persist_seconds:
            save(self.run, self.run_dir / "run.json")
            self._last_persist = now
            if self.on_change is not None:
                try:
                    self.on_change(self.run)
                except Exception:  # reporting must never stop training
                    logger.exception("reporting a change of run %s failed", self.run.id)

    def _log(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with (self.run_dir / "run.log").open("a") as fh:
            fh.write(f"{stamp} {line}\n")

    def _emit(self, trial: TrialState, kind: str, ev: dict[str, Any]) -> None:
        if self.on_event is not None:
            try:
                self.on_event(self.run, trial, kind, ev)
            except Exception:  # recording must never stop training
                logger.exception("recording %s of trial %s failed", kind, trial.id)

    # ------------------------------------------------------------------ status

    def snapshot(self) -> TrainingStatus:
        with self.lock:
            return build_status(self.run, self.searcher, self.run_dir)
