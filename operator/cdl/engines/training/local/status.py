"""A run as the engine-neutral `TrainingStatus`: trials, best trial, counts and progress."""

from __future__ import annotations

from pathlib import Path

import cdl.engines.training.local.searchers as searchers
from cdl.engines.base import CheckpointInfo, JobState, TrainingStatus, TrialReport
from cdl.engines.training.local.state import (
    CANCELED,
    FAILED,
    PAUSED,
    RUNNING,
    SUCCEEDED,
    RunState,
    TrialState,
)


def _trial_report(run: RunState, trial: TrialState, smaller: bool, metric: str, run_dir: Path) -> TrialReport:
    state = {
        RUNNING: JobState.RUNNING, PAUSED: JobState.PENDING, SUCCEEDED: JobState.SUCCEEDED,
        FAILED: JobState.FAILED, CANCELED: JobState.CANCELED,
    }.get(trial.state, JobState.PENDING)
    best = trial.best_validation(smaller)
    ckpt = trial.best_checkpoint(smaller)
    checkpoint = None
    if ckpt is not None:
        local = run_dir / "trials" / trial.id / "xdg" / "determined" / ckpt.uuid
        uri = (trial.uploaded or {}).get("uri") if (trial.uploaded or {}).get("uuid") == ckpt.uuid else None
        checkpoint = CheckpointInfo(uuid=ckpt.uuid, uri=uri or local.resolve().as_uri(), path=str(local))
    return TrialReport(
        id=trial.id,
        state=state,
        hparams=trial.hparams,
        metrics=dict(best.metrics) if best else {},
        stop_reason=trial.stop_reason or (trial.error if trial.state == FAILED else None),
        checkpoint=checkpoint,
        length_done=trial.units_done,
        wall_seconds=round(trial.wall_seconds, 3) if trial.wall_seconds else None,
        cpu_seconds=round(trial.cpu_seconds, 3) if trial.cpu_seconds else None,
        peak_rss_bytes=trial.peak_rss_bytes or None,
        gpu_utilization=trial.gpu_utilization,
    )


def build_status(run: RunState, searcher: searchers.SearchMethod, run_dir: Path) -> TrainingStatus:
    """The engine-neutral status of a run (works for running and finished runs alike)."""
    spec = searcher.spec
    smaller, metric = spec.searcher.smaller_is_better, spec.searcher.metric
    reports = [_trial_report(run, t, smaller, metric, run_dir) for t in run.trials]
    scored = [(t, r) for t, r in zip(run.trials, reports, strict=True) if t.best_validation(smaller) is not None
              and t.state in (SUCCEEDED, RUNNING, PAUSED)]
    best = None
    if scored:
        best = min(scored, key=lambda tr: searchers.sort_key(tr[0].best_validation(smaller).value, smaller))[1]  # type: ignore[union-attr]
    state = JobState(run.state)
    message = run.message
    if not state.finished:
        counts = {s: sum(1 for t in run.trials if t.state == s) for s in (RUNNING, PAUSED, SUCCEEDED, FAILED)}
        message = (
            f"{searcher.describe()}; {counts[RUNNING]} running, {counts[SUCCEEDED]} finished, "
            f"{counts[FAILED]} failed" + (f", {counts[PAUSED]} waiting for promotion" if counts[PAUSED] else "")
        )
    if run.notes:
        message = f"{message} ({'; '.join(run.notes)})"
    return TrainingStatus(state=state, message=message, progress=progress(run, searcher), trials=reports, best=best)


def progress(run: RunState, searcher: searchers.SearchMethod) -> float:
    """Units done / units planned (a stopped or failed trial counts as done for its segment)."""
    if JobState(run.state).finished:
        return 1.0
    planned = searcher.planned_units()
    if not planned:
        done = sum(1 for t in run.trials if t.finished_state)
        return min(0.99, done / max(1, searcher.planned_trials()))
    accounted = 0
    for t in run.trials:
        if t.state in (SUCCEEDED, FAILED, CANCELED, PAUSED) and t.target is not None:
            accounted += t.target
        else:
            accounted += t.units_done
    return round(min(0.99, accounted / planned), 4)
