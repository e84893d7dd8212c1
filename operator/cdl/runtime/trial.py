"""What trial code may ask the platform: hyperparameters, training length, data, seed, checkpoint.

The same calls work under the local training engine (which writes a trial config file named by
`CDL_TRIAL_CONFIG`) and on a Determined cluster (where they read `det.get_cluster_info()` and the
experiment config's environment variables, docs/cluster-path.md), so a
model's code runs unchanged in both places. Only the standard library is imported at module
level; Determined, torch and Keras are imported when a helper needs them.

Environment a trial process gets (the runtime contract):
  CDL_DATA_DIR      local directory holding the bound data commit's files (the local engine sets
                    it; on a cluster `cdl.runtime.launch` sets it after copying CDL_DATA_URI)
  CDL_DATA_URI      where the data version is on a cluster: `pfs://project/repo@branch=commit`,
                    `s3://bucket/prefix/` or `file:///dir` (see cdl.runtime.data)
  CDL_DATA_REPO, CDL_DATA_COMMIT   the exact data version trained on
  CDL_SEED          this trial's seed (the experiment's seed for trial 1, +1 per further trial)
  CDL_TRIAL_ID, CDL_EXPERIMENT (namespace/name), CDL_RUN_DIR (the run's directory),
  CDL_TRIAL_DIR     this trial's own directory (logs, checkpoints, events)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdl.runtime.env import (  # noqa: F401  (re-exported: user code reads them as trial.ENV_*)
    ENV_CONFIG,
    ENV_DATA_COMMIT,
    ENV_DATA_DIR,
    ENV_DATA_REPO,
    ENV_DATA_URI,
    ENV_ENTRYPOINT,
    ENV_EVENTS,
    ENV_EXPERIMENT,
    ENV_MAX_LENGTH,
    ENV_METRIC,
    ENV_RUN_DIR,
    ENV_SEED,
    ENV_STOP,
    ENV_TRIAL_DIR,
    ENV_TRIAL_ID,
)

UNITS = ("epochs", "batches")


@dataclass(frozen=True)
class TrainLength:
    """A training length in Determined's units: so many epochs or so many batches."""

    value: int
    unit: str = "epochs"

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, not {self.unit!r}")

    @classmethod
    def parse(cls, text: str) -> TrainLength:
        unit, _, value = text.partition(":")
        return cls(int(value), unit)

    def to_determined(self) -> Any:
        """The `det.pytorch.Epoch`/`Batch` object `Trainer.fit` expects."""
        from determined import pytorch

        return pytorch.Epoch(self.value) if self.unit == "epochs" else pytorch.Batch(self.value)

    def wire(self) -> dict[str, Any]:
        return {"value": self.value, "unit": self.unit}

    def __str__(self) -> str:
        return f"{self.value} {self.unit}"


@dataclass
class TrialInfo:
    """Everything the platform decided for this trial."""

    trial_id: str
    experiment: str = ""
    hparams: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    max_length: TrainLength | None = None
    latest_checkpoint: str | None = None
    metric: str | None = None
    smaller_is_better: bool = True
    slots: int = 1
    validation_period: TrainLength | None = None
    checkpoint_period: TrainLength | None = None
    entrypoint: str = ""
    data_dir: str | None = None
    data_uri: str | None = None
    data_repo: str | None = None
    data_commit: str | None = None
    run_dir: str | None = None
    trial_dir: str | None = None
    on_cluster: bool = False


_INFO: TrialInfo | None = None


def _length(raw: Any) -> TrainLength | None:
    if not raw:
        return None
    if isinstance(raw, str):
        return TrainLength.parse(raw)
    return TrainLength(int(raw["value"]), raw.get("unit", "epochs"))


def _from_config(path: Path) -> TrialInfo:
    raw = json.loads(path.read_text())
    return TrialInfo(
        trial_id=str(raw.get("trial_id", os.environ.get(ENV_TRIAL_ID, "0"))),
        experiment=raw.get("experiment", os.environ.get(ENV_EXPERIMENT, "")),
        hparams=raw.get("hparams") or {},
        seed=int(raw.get("seed", os.environ.get(ENV_SEED, 0))),
        max_length=_length(raw.get("max_length")),
        latest_checkpoint=raw.get("latest_checkpoint"),
        metric=raw.get("metric"),
        smaller_is_better=bool(raw.get("smaller_is_better", True)),
        slots=int(raw.get("slots", 1)),
        validation_period=_length(raw.get("validation_period")),
        checkpoint_period=_length(raw.get("checkpoint_period")),
        entrypoint=raw.get("entrypoint", ""),
    )


def _from_cluster() -> TrialInfo | None:
    try:
        import determined as det
    except ImportError:
        return None
    ci = det.get_cluster_info()
    if ci is None or ci.task_type != "TRIAL":
        return None
    config = ci.trial._config
    searcher = config.get("searcher", {})
    length = None
    if isinstance(searcher.get("max_length"), dict):
        ((unit, value),) = list(searcher["max_length"].items())[:1] or [("epochs", 0)]
        if unit in UNITS and value:
            length = TrainLength(int(value), unit)
    elif searcher.get("max_time") and searcher.get("time_metric") in UNITS:
        length = TrainLength(int(searcher["max_time"]), searcher["time_metric"])
    period = config.get("min_validation_period") or {}
    validation = None
    if isinstance(period, dict) and period:
        ((unit, value),) = list(period.items())[:1]
        if unit in UNITS and value:
            validation = TrainLength(int(value), unit)
    return TrialInfo(
        trial_id=str(ci.trial.trial_id),
        experiment=os.environ.get(ENV_EXPERIMENT, str(ci.trial.experiment_id)),
        hparams=dict(ci.trial.hparams),
        seed=int(ci.trial.trial_seed),
        max_length=length,
        latest_checkpoint=ci.latest_checkpoint,
        metric=searcher.get("metric") or os.environ.get(ENV_METRIC),
        smaller_is_better=bool(searcher.get("smaller_is_better", True)),
        slots=int(config.get("resources", {}).get("slots_per_trial", 1)),
        validation_period=validation,
        entrypoint=os.environ.get(ENV_ENTRYPOINT, ""),
        on_cluster=True,
    )


def info() -> TrialInfo:
    """This trial's settings (cached): from the local engine's config file, else the cluster."""
    global _INFO
    if _INFO is None:
        config = os.environ.get(ENV_CONFIG)
        found = _from_config(Path(config)) if config else _from_cluster()
        if found is None:  # off-cluster with no local engine: a plain `python -m cdl.runtime.launch`
            found = TrialInfo(trial_id=os.environ.get(ENV_TRIAL_ID, "0"), seed=int(os.environ.get(ENV_SEED, 0)),
                              entrypoint=os.environ.get(ENV_ENTRYPOINT, ""), metric=os.environ.get(ENV_METRIC))
        if not found.entrypoint:
            found.entrypoint = os.environ.get(ENV_ENTRYPOINT, "")
        if os.environ.get(ENV_MAX_LENGTH):
            found.max_length = TrainLength.parse(os.environ[ENV_MAX_LENGTH])
        found.data_dir = os.environ.get(ENV_DATA_DIR) or None
        found.data_uri = os.environ.get(ENV_DATA_URI) or None
        found.data_repo = os.environ.get(ENV_DATA_REPO) or None
        found.data_commit = os.environ.get(ENV_DATA_COMMIT) or None
        found.run_dir = os.environ.get(ENV_RUN_DIR) or None
        found.trial_dir = os.environ.get(ENV_TRIAL_DIR) or None
        _INFO = found
    return _INFO


def hparams() -> dict[str, Any]:
    """This trial's hyperparameter values (Determined's `context.get_hparams()` gives the same)."""
    return dict(info().hparams)


def max_length() -> TrainLength | None:
    """How long to train, in absolute units: a resumed trial continues up to this length."""
    return info().max_length


def latest_checkpoint() -> str | None:
    """The checkpoint (Determined storage id) to resume from, or None for a fresh start."""
    return info().latest_checkpoint


def seed() -> int:
    return info().seed


def data_dir() -> Path:
    """The local directory holding the bound data commit's files.

    Raises a clear error when the Experiment binds no data or the data is only reachable by URI."""
    found = info()
    if found.data_dir:
        return Path(found.data_dir)
    if found.data_uri:
        raise RuntimeError(
            f"the data is at {found.data_uri} ({ENV_DATA_URI}); this trial has no local copy "
            f"({ENV_DATA_DIR} is unset): read it with the Pachyderm client"
        )
    raise RuntimeError(f"no data is bound to this trial ({ENV_DATA_DIR} is unset): set spec.data in the Experiment")


def keras_callback(core_context: Any, **kwargs: Any) -> Any:
    """A `det.keras.DeterminedCallback` that resumes from this trial's latest checkpoint.

    Pass it to `model.fit(..., epochs=max_length().value, callbacks=[...])` inside
    `det.core.init()`; it reports validation metrics, checkpoints each epoch and stops when the
    platform asks (early stopping, ASHA). Works on Keras 3, where `import determined.keras`
    fails (see `cdl.runtime.keras_compat`)."""
    from cdl.runtime.keras_compat import callback_class

    found = info()
    return callback_class()(
        core_context, checkpoint=found.latest_checkpoint, continue_id=f"trial-{found.trial_id}", **kwargs
    )


def record_model(model: Any, **extra: Any) -> dict[str, Any]:
    """Describe a model (framework, parameter count, layers) for the experiment's metadata.

    The local engine calls this itself for PyTorchTrial and Keras callbacks; scripts using the
    Core API directly may call it once their model is built. Returns the description."""
    from cdl.runtime import trial_events
    from cdl.runtime.model_metadata import describe_model

    description = {**describe_model(model), **extra}
    trial_events.emit("model", **description)
    return description
