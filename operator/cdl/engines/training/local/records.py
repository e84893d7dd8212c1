"""Where a run's results go besides run.json: checkpoints to the artifact store, and the
Experiment Registry (runs, trials, metrics per validation, automatic metadata, lineage) to
PostgreSQL.

Recording never stops training: a store that is down is logged and caught up later. Rows are
upserts, so a trial's metrics are written live and once more, complete, when it finishes; the
run row is rewritten when the run ends.

Lineage edges: ("data-commit", "repo@commit") -input-> ("experiment-run", run_id)
-trial-> ("trial", "run_id/trial_id") -checkpoint-> ("checkpoint", uuid).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cdl.engines.training.local.hparams as hp
from cdl.engines.training.local.state import RunState, TrialState, Validation

logger = logging.getLogger("cdl.engines.training.local")


def checkpoint_prefix(run: RunState, trial: TrialState, uuid: str) -> str:
    return f"checkpoints/{run.namespace}/{run.name}/{run.id}/trial-{trial.id}/{uuid}"


def trial_key(run: RunState, trial: TrialState) -> str:
    return f"{run.id}/{trial.id}"


def _when(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts else None


def _smaller(run: RunState) -> bool:
    return bool(run.spec.get("searcher", {}).get("smallerIsBetter", False))


def _unit(run: RunState) -> str:
    length = run.spec.get("searcher", {}).get("maxLength") or {}
    return "batches" if "batches" in length else "epochs"


class Recorder:
    def __init__(self, database: Any | None, artifacts: Any | None) -> None:
        self.database = database
        self.artifacts = artifacts
        self._run_dirs: dict[str, Path] = {}

    # ------------------------------------------------------------------ driver hooks

    def run_started(self, run: RunState, run_dir: Path) -> None:
        self._run_dirs[run.id] = run_dir
        self._record_run(run)

    def event(self, run: RunState, trial: TrialState, kind: str, ev: dict[str, Any]) -> None:
        if self.database is None:
            return
        if kind in ("created", "start", "model", "data", "segment_end"):
            self._record_trial(run, trial)
        elif kind == "metrics" and ev.get("group") in ("training", "validation"):
            if not self._ensure_trial(run, trial):
                return
            from cdl.stores.records import TrialMetric

            metrics = {k: v for k, v in (ev.get("metrics") or {}).items() if k not in ("epochs", "batches")}
            epoch = ev.get("epochs", (ev.get("metrics") or {}).get("epochs"))
            self._safely(
                "metrics",
                lambda: self.database.record_metrics([TrialMetric(
                    run_id=run.id, trial_id=trial.id, kind=ev["group"], batches=int(ev.get("steps_completed") or 0),
                    metrics=metrics, epoch=float(epoch) if epoch is not None else None,
                    recorded_at=_when(ev.get("time")),
                )]),
            )
            if ev["group"] == "validation":  # the best metric and resource series, while it runs
                self._record_trial(run, trial)

    def trial_finished(self, run: RunState, trial: TrialState) -> None:
        self.upload_checkpoint(run, trial)
        if self.database is None:
            return
        if self._record_trial(run, trial):
            self._record_validations(run, trial, trial.validations)
            ckpt = trial.best_checkpoint(_smaller(run))
            if ckpt is not None:
                uri = (trial.uploaded or {}).get("uri") if (trial.uploaded or {}).get("uuid") == ckpt.uuid else None
                self._safely("lineage", lambda: self.database.add_lineage(
                    "trial", trial_key(run, trial), "checkpoint", ckpt.uuid, "checkpoint",
                    {"uri": uri or self._local_uri(run, trial, ckpt.uuid), "units": ckpt.units}))

    def run_finished(self, run: RunState) -> None:
        for trial in run.trials:
            if trial.finished_state and trial.checkpoints and not trial.uploaded:
                self.upload_checkpoint(run, trial)
        if self.database is None:
            return
        self._record_run(run)
        for trial in run.trials:
            self._record_trial(run, trial)

    # ------------------------------------------------------------------ artifacts

    def _local_uri(self, run: RunState, trial: TrialState, uuid: str) -> str:
        run_dir = self._run_dirs.get(run.id)
        if run_dir is None:
            return ""
        return (run_dir / "trials" / trial.id / "xdg" / "determined" / uuid).resolve().as_uri()

    def upload_checkpoint(self, run: RunState, trial: TrialState) -> None:
        """Store the trial's best checkpoint; `trial.uploaded` then names its uri."""
        if self.artifacts is None:
            return
        ckpt = trial.best_checkpoint(_smaller(run))
        if ckpt is None or (trial.uploaded or {}).get("uuid") == ckpt.uuid:
            return
        run_dir = self._run_dirs.get(run.id)
        if run_dir is None:
            return
        local = run_dir / "trials" / trial.id / "xdg" / "determined" / ckpt.uuid
        if not local.is_dir():
            return
        prefix = checkpoint_prefix(run, trial, ckpt.uuid)
        try:
            self.artifacts.put_dir(prefix, local)
        except Exception as exc:  # noqa: BLE001 - retried when the run finishes
            logger.warning("uploading checkpoint %s of trial %s failed: %s", ckpt.uuid, trial.id, exc)
            return
        trial.uploaded = {"uuid": ckpt.uuid, "uri": self.artifacts.uri_for(prefix)}

    # ------------------------------------------------------------------ database

    def _safely(self, what: str, fn: Any) -> bool:
        try:
            fn()
            return True
        except Exception as exc:  # noqa: BLE001 - the registry is caught up later
            logger.warning("recording %s in the database failed: %s", what, exc)
            return False

    def _record_run(self, run: RunState) -> bool:
        if self.database is None:
            return False
        from cdl.stores.records import ExperimentRun

        data = run.data or {}
        record = ExperimentRun(
            run_id=run.id, namespace=run.namespace, experiment=run.name, engine="local", state=run.state,
            generation=run.generation, spec=run.spec, data_repo=data.get("repo"), data_commit=data.get("commit"),
            started_at=_when(run.created), finished_at=_when(run.finished),
        )
        ok = self._safely("experiment run", lambda: self.database.record_run(record))
        if ok and not run.recorded:
            run.recorded = True
            if data.get("repo") and data.get("commit"):
                self._safely("lineage", lambda: self.database.add_lineage(
                    "data-commit", f"{data['repo']}@{data['commit']}", "experiment-run", run.id, "input",
                    {"branch": data.get("branch"), "files": data.get("files"), "bytes": data.get("bytes")}))
        return ok

    def _ensure_trial(self, run: RunState, trial: TrialState) -> bool:
        if not run.recorded and not self._record_run(run):
            return False
        return True

    def _record_trial(self, run: RunState, trial: TrialState) -> bool:
        if self.database is None or not self._ensure_trial(run, trial):
            return False
        from cdl.stores.records import TrialRecord

        smaller = _smaller(run)
        best = trial.best_validation(smaller)
        ckpt = trial.best_checkpoint(smaller)
        uri = None
        if ckpt is not None:
            uploaded = trial.uploaded or {}
            uri = uploaded.get("uri") if uploaded.get("uuid") == ckpt.uuid else self._local_uri(run, trial, ckpt.uuid)
        metadata = {
            **{k: v for k, v in trial.metadata.items() if k != "current_rss_bytes"},
            "seed": trial.seed,
            "units_done": trial.units_done,
            "unit": _unit(run),
            "segments": trial.segments,
            "validations": len(trial.validations),
            "best_metrics": best.metrics if best else {},
            "error": trial.error,
            # The resource series: cumulative figures at each validation (what `cdl experiments
            # study` replays the resource rules and compute totals on).
            "resources_at_validations": [
                {"batches": v.steps, "units": v.units, **v.resources} for v in trial.validations if v.resources
            ],
        }
        record = TrialRecord(
            run_id=run.id, trial_id=trial.id, state=trial.state, hparams=trial.hparams,
            stop_reason=trial.stop_reason or (trial.error if trial.state == "failed" else None), metadata=metadata,
            wall_seconds=trial.wall_seconds or None, cpu_seconds=trial.cpu_seconds or None,
            peak_rss_bytes=trial.peak_rss_bytes or None, gpu_utilization=trial.gpu_utilization,
            best_metric=best.value if best else None, checkpoint_uuid=ckpt.uuid if ckpt else None,
            checkpoint_uri=uri,
        )
        ok = self._safely(f"trial {trial.id}", lambda: self.database.record_trial(record))
        if ok:
            self._safely("lineage", lambda: self.database.add_lineage(
                "experiment-run", run.id, "trial", trial_key(run, trial), "trial", {"hparams": trial.hparams}))
        return ok

    def _record_validations(self, run: RunState, trial: TrialState, validations: list[Validation]) -> None:
        from cdl.stores.records import TrialMetric

        unit = _unit(run)
        rows = [
            TrialMetric(run_id=run.id, trial_id=trial.id, kind="validation", batches=v.steps, metrics=v.metrics,
                        epoch=float(v.units) if unit == "epochs" else None, recorded_at=_when(v.time))
            for v in validations
        ]
        self._safely("metrics", lambda: self.database.record_metrics(rows))


def compare_from_database(database: Any, run_id: str) -> tuple[list[dict[str, Any]], str, bool]:
    """Rows like `engine.trial_row`, read from the Experiment Registry; (rows, metric, smaller)."""
    from cdl.errors import PermanentEngineError

    run = database.get_run(run_id)
    if run is None:
        raise PermanentEngineError(f"experiment run {run_id!r} is not recorded in the database", reason="RunNotFound")
    searcher = (run.spec or {}).get("searcher", {})
    metric = searcher.get("metric", "")
    smaller = bool(searcher.get("smallerIsBetter", False))
    rows = []
    for t in database.trials(run_id):
        meta = t.metadata or {}
        model = meta.get("model") or {}
        rows.append({
            "trial": t.trial_id,
            "state": t.state,
            "stop_reason": t.stop_reason,
            **{f"hp.{k}": v for k, v in hp.flatten(t.hparams or {}).items()},
            metric: t.best_metric,
            **{f"metric.{k}": v for k, v in (meta.get("best_metrics") or {}).items() if k != metric},
            "length_done": meta.get("units_done"),
            "unit": meta.get("unit"),
            "validations": meta.get("validations"),
            "segments": meta.get("segments"),
            "wall_seconds": round(t.wall_seconds, 2) if t.wall_seconds else t.wall_seconds,
            "cpu_seconds": round(t.cpu_seconds, 2) if t.cpu_seconds else t.cpu_seconds,
            "peak_rss_bytes": t.peak_rss_bytes,
            "gpu_utilization": t.gpu_utilization,
            "parameters": model.get("parameters"),
            "checkpoint": t.checkpoint_uuid,
            "seed": meta.get("seed"),
        })
    return rows, metric, smaller
