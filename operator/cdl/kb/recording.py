"""Keeping the experiment registry complete for training engines that do not write it
themselves (Determined on a cluster): the Experiment reconciler hands each TrainingStatus it
reads to `record_training_status`, which upserts the run and its trials (hyperparameters, state,
best metrics, checkpoint, wall time) so the knowledge base, `cdl experiments compare` and the
dashboard see cluster runs as they see local ones. Metric series stay in the engine's own UI.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("cdl.kb")


def record_training_status(database: Any, *, run_id: str, namespace: str, experiment: str, engine: str,
                           generation: int, spec: dict[str, Any], data: dict[str, Any] | None,
                           status: Any) -> None:
    """Upsert the run and every trial of `status` (a TrainingStatus); never raises (logged)."""
    from cdl.stores.records import ExperimentRun, TrialRecord

    metric = (spec.get("searcher") or {}).get("metric")
    try:
        database.record_run(ExperimentRun(
            run_id=run_id, namespace=namespace, experiment=experiment, engine=engine, state=status.state.value,
            generation=generation, spec=spec, data_repo=(data or {}).get("repo"),
            data_commit=(data or {}).get("commit")))
        if status.state.finished:
            database.set_run_state(run_id, status.state.value, finished=True)
        for trial in status.trials:
            database.record_trial(TrialRecord(
                run_id=run_id, trial_id=str(trial.id), state=trial.state.value, hparams=dict(trial.hparams or {}),
                stop_reason=trial.stop_reason,
                metadata={"best_metrics": dict(trial.metrics or {}), "units_done": trial.length_done,
                          "engine": engine},
                wall_seconds=trial.wall_seconds, cpu_seconds=trial.cpu_seconds,
                peak_rss_bytes=trial.peak_rss_bytes, gpu_utilization=trial.gpu_utilization,
                best_metric=(trial.metrics or {}).get(metric) if metric else None,
                checkpoint_uuid=trial.checkpoint.uuid if trial.checkpoint else None,
                checkpoint_uri=trial.checkpoint.uri if trial.checkpoint else None))
    except Exception as exc:  # noqa: BLE001 - the registry is a record; reconciling must go on
        log.warning("could not record run %s of %s/%s in the experiment registry: %s", run_id, namespace,
                    experiment, exc)
