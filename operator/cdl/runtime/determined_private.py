"""The one place cdl touches private parts of the determined package (written against 0.38.1).

Off-cluster, the local engine needs what a Determined master would get from a trial (metrics,
checkpoints, preemption, the PyTorch controller's progress, the Keras callback), and determined
exposes those only through private modules. Every private name cdl uses is reached through this
adapter, so an upgrade of determined has one file to check, and `tests/unit/test_determined_private.py`
fails naming the version this was written against when a name moves.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

WRITTEN_FOR = "0.38.1"
KERAS_CALLBACK_MODULE = "determined.keras._callback"

# (module, attribute) pairs this adapter hands out; the test checks each still exists.
PRIVATE_NAMES = (
    ("determined.core._train", "TrainContext"),
    ("determined.core._preempt", "PreemptContext"),
    ("determined.core._train", "DummyTrainContext"),
    ("determined.core._preempt", "DummyPreemptContext"),
    ("determined.core._preempt", "PreemptMode"),
    ("determined.core._checkpoint", "DummyCheckpointContext"),
    ("determined.pytorch._pytorch_trial", "_PyTorchTrialController"),
)
# methods cdl wraps on those classes
WRAPPED_METHODS = (
    ("determined.core._train", "TrainContext", "_report_trial_metrics"),
    ("determined.core._preempt", "PreemptContext", "should_preempt"),
    ("determined.core._train", "DummyTrainContext", "_report_trial_metrics"),
    ("determined.core._train", "DummyTrainContext", "report_early_exit"),
    ("determined.core._preempt", "DummyPreemptContext", "should_preempt"),
    ("determined.core._checkpoint", "DummyCheckpointContext", "_report_checkpoint"),
    ("determined.pytorch._pytorch_trial", "_PyTorchTrialController", "_validate"),
    ("determined.pytorch._pytorch_trial", "_PyTorchTrialController", "_checkpoint"),
)


def installed_version() -> str:
    import determined

    return str(getattr(determined, "__version__", "unknown"))


def _get(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


def train_context() -> type:
    """The on-cluster TrainContext (early stopping inside a trial on Determined wraps its reports)."""
    return _get("determined.core._train", "TrainContext")


def preempt_context() -> type:
    """The on-cluster PreemptContext (early stopping answers its `should_preempt`)."""
    return _get("determined.core._preempt", "PreemptContext")


def dummy_train_context() -> type:
    return _get("determined.core._train", "DummyTrainContext")


def dummy_preempt_context() -> type:
    return _get("determined.core._preempt", "DummyPreemptContext")


def preempt_mode() -> Any:
    return _get("determined.core._preempt", "PreemptMode")


def dummy_checkpoint_context() -> type:
    return _get("determined.core._checkpoint", "DummyCheckpointContext")


def pytorch_trial_controller() -> type | None:
    """The PyTorchTrial controller class, or None in an image without torch (Keras only)."""
    try:
        return _get("determined.pytorch._pytorch_trial", "_PyTorchTrialController")
    except ImportError:
        return None


def keras_callback_source() -> Path:
    """The file of determined's Keras callback (loaded by path on Keras 3, where importing
    `determined.keras` itself fails)."""
    import determined

    return Path(determined.__file__).parent / "keras" / "_callback.py"
