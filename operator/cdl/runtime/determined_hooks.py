"""Connect Determined's off-cluster ("dummy") contexts to the local training engine.

Off-cluster, Determined's core contexts talk to no master: metrics are logged, preemption never
comes and checkpoints are only logged. The local engine needs what a master would get, so the
trial bootstrap wraps those few methods before any user code runs:

- validation/training metrics and checkpoints are also written as events (`trial_events`),
  with the trial's epoch and batch counts at that moment (and a validation with the peak GPU
  memory where the trial uses one);
- `should_preempt()` answers True once the engine has asked the trial to stop (a stop file),
  keeping Determined's chief-broadcast protocol so every rank of a distributed trial stops at
  the same step (early stopping and ASHA stop trials cleanly, with a checkpoint);
- a resumed PyTorchTrial continues counting from its checkpoint's batch, as on a cluster, so
  `max_length` is an absolute length (off-cluster Determined would otherwise count from 0).

Nothing here changes on-cluster behaviour: only the Dummy* classes and local-mode paths are wrapped.
The private parts of determined are reached through `cdl.runtime.determined_private` only.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from typing import Any

from cdl.runtime import determined_private as private
from cdl.runtime import trial_events
from cdl.runtime.stopping.curves import gpu_peak_bytes

_PROGRESS: dict[str, int] = {}  # epochs/batches of the PyTorchTrial controller at the last report
_INSTALLED = False


def stop_reason(stop_file: str | None) -> str | None:
    """Why the engine asked this trial to stop, or None while it should keep going."""
    if not stop_file or not os.path.exists(stop_file):
        return None
    try:
        with open(stop_file) as fh:
            return fh.read().strip() or "stop requested"
    except OSError:
        return "stop requested"


def install(stop_file: str | None, resume_steps: int | None = None) -> None:
    """Wrap Determined's dummy contexts (idempotent; call before user code builds a context)."""
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True

    PreemptMode = private.preempt_mode()  # noqa: N806 - the enum's own name
    train_cls = private.dummy_train_context()
    original_report = train_cls._report_trial_metrics

    def report_trial_metrics(
        self: Any, group: str, steps_completed: int, metrics: dict[str, Any], batch_metrics: Any = None
    ) -> None:
        original_report(self, group, steps_completed, metrics, batch_metrics)
        # Peak GPU memory is only known inside the trial (torch's allocator): it rides along.
        gpu = gpu_peak_bytes() if group == "validation" else None
        trial_events.emit("metrics", group=group, steps_completed=steps_completed, metrics=metrics, **_PROGRESS,
                          **({"gpu_peak_bytes": gpu} if gpu is not None else {}))

    train_cls._report_trial_metrics = report_trial_metrics  # type: ignore[method-assign]

    def report_early_exit(self: Any, reason: Any) -> None:
        trial_events.emit("early_exit", reason=getattr(reason, "value", str(reason)))

    train_cls.report_early_exit = report_early_exit  # type: ignore[method-assign]

    def should_preempt(self: Any, auto_ack: bool = True) -> bool:
        if not self._started:
            raise RuntimeError("you cannot call PreemptContext.should_preempt() before PreemptContext.start()")
        dist, mode = self._dist, self._preempt_mode
        if dist.rank == 0 or mode == PreemptMode.WorkersAskMaster:
            out = stop_reason(stop_file) is not None
            if mode == PreemptMode.WorkersAskChief and dist.rank == 0:
                dist.broadcast(out)
            return out
        if mode == PreemptMode.ChiefOnly:
            raise RuntimeError(
                "PreemptContext was configured with preempt_mode=ChiefOnly but .should_preempt() was "
                f"called from non-chief worker of rank={dist.get_rank()}"
            )
        return bool(dist.broadcast(None))

    private.dummy_preempt_context().should_preempt = should_preempt  # type: ignore[method-assign]

    ckpt_cls = private.dummy_checkpoint_context()
    original_ckpt = ckpt_cls._report_checkpoint

    def report_checkpoint(
        self: Any, storage_id: str, resources: dict[str, int] | None = None, metadata: dict[str, Any] | None = None
    ) -> None:
        original_ckpt(self, storage_id, resources, metadata)
        steps = (metadata or {}).get("steps_completed")
        trial_events.emit(
            "checkpoint", uuid=storage_id, steps_completed=steps, resources=resources or {}, **_PROGRESS
        )

    ckpt_cls._report_checkpoint = report_checkpoint  # type: ignore[method-assign]

    _install_pytorch(resume_steps)
    _install_keras()


def _install_pytorch(resume_steps: int | None) -> None:
    ctl = private.pytorch_trial_controller()
    if ctl is None:  # torch is not installed: a Keras-only image
        return
    original_init = ctl.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        if resume_steps and kwargs.get("local_training") and kwargs.get("latest_checkpoint"):
            kwargs["steps_completed"] = resume_steps
        original_init(self, *args, **kwargs)

    ctl.__init__ = init  # type: ignore[method-assign]

    def tracking(name: str) -> None:
        original = getattr(ctl, name)

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            if self.state is not None:
                _PROGRESS.update(epochs=self.state.epochs_trained, batches=self.state.batches_trained)
            return original(self, *args, **kwargs)

        setattr(ctl, name, wrapper)

    tracking("_validate")
    tracking("_checkpoint")


def _install_keras() -> None:
    """Record the Keras model's description when a DeterminedCallback starts training.

    Hooked when `determined.keras` is first imported, so a PyTorch trial never pays for
    importing TensorFlow."""
    if private.KERAS_CALLBACK_MODULE in sys.modules:
        keras_callback_loaded(sys.modules[private.KERAS_CALLBACK_MODULE])
    else:
        sys.meta_path.insert(0, _AfterImport(private.KERAS_CALLBACK_MODULE, keras_callback_loaded))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Run `action(module)` right after the module `name` is executed for the first time."""

    def __init__(self, name: str, action: Any) -> None:
        self.name = name
        self.action = action

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module
        action = self.action

        def exec_module(module: Any) -> None:
            original(module)
            action(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def keras_callback_loaded(module: Any) -> None:
    """Describe the model when a DeterminedCallback starts training (once per class; only
    after `install`, i.e. inside a trial the local engine launched)."""
    if not _INSTALLED:
        return
    cls = module.DeterminedCallback
    if getattr(cls, "_cdl_hooked", False):
        return
    cls._cdl_hooked = True
    original = cls.on_train_begin

    def on_train_begin(self: Any, logs: Any = None) -> None:
        if getattr(self, "_is_chief", True):
            from cdl.runtime.model_metadata import describe_model

            try:
                trial_events.emit("model", **describe_model(self.model))
            except Exception as exc:  # noqa: BLE001 - metadata must never break training
                trial_events.emit("warning", message=f"could not describe the Keras model: {exc}")
        original(self, logs)

    cls.on_train_begin = on_train_begin  # type: ignore[method-assign]
