"""The trial bootstrap: `python -m cdl.runtime.launch` (one per rank under torchrun).

Runs one segment of one trial in the current directory (a copy of the model code) the way a
Determined cluster would run it, then exits:

- `module:Class` naming a `det.pytorch.PyTorchTrial`: `det.pytorch.init(...)` and
  `det.pytorch.Trainer(trial, context).fit(max_length=..., validation_period=...,
  checkpoint_period=..., latest_checkpoint=...)`;
- `module:function`: called inside `det.core.init()` with the arguments it names among
  `core_context`, `hparams`, `info`, `max_length`, `latest_checkpoint`, `data_dir` (a function of
  one other positional parameter gets the core context); a Keras function builds its model and
  fits it with `cdl.runtime.trial.keras_callback(core_context)`;
- `script.py` or `module`: run as `__main__`; the script uses the Core API itself.

Exit status: 0 when the segment finished or stopped on request, 1 when user code raised (the
traceback goes to stderr, which is the trial's log), 3 when the entrypoint itself is unusable.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import random
import runpy
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cdl.runtime import data, determined_hooks, trial_events
from cdl.runtime.env import ENV_CONFIG, ENV_STOP
from cdl.runtime.stopping import guard as stopping_guard
from cdl.runtime.trial import TrialInfo, info

EXIT_OK = 0
EXIT_USER_ERROR = 1
EXIT_ENTRYPOINT = 3

logger = logging.getLogger("cdl.trial")


class EntrypointError(Exception):
    """spec.model.entrypoint names something that cannot be run; every trial would fail alike."""


def _config() -> dict[str, Any]:
    """The local engine's trial config file; on a Determined cluster there is none (the trial's
    settings come from `det.get_cluster_info()` and the experiment config's environment)."""
    path = os.environ.get(ENV_CONFIG)
    return json.loads(Path(path).read_text()) if path else {}


def resolve(entrypoint: str, code_dir: Path) -> tuple[str, Any]:
    """(kind, target) for an entrypoint: ("pytorch", cls) | ("function", fn) | ("script", path) |
    ("module", name). Raises EntrypointError naming spec.model.entrypoint."""
    where = f"spec.model.entrypoint {entrypoint!r}"
    if entrypoint.endswith(".py"):
        path = code_dir / entrypoint
        if not path.is_file():
            raise EntrypointError(f"{where}: no file {entrypoint} in the model code directory {code_dir}")
        return "script", path
    module_name, _, attr = entrypoint.partition(":")
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise EntrypointError(f"{where}: module {module_name!r} not found in the model code directory {code_dir}")
    if not attr:
        return "module", module_name
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is deterministic: fail fast
        traceback.print_exc()
        raise EntrypointError(f"{where}: importing {module_name} failed: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, attr):
        raise EntrypointError(f"{where}: module {module_name} has no attribute {attr!r}")
    target = getattr(module, attr)
    if inspect.isclass(target):
        from determined import pytorch

        if issubclass(target, pytorch.PyTorchTrial):
            return "pytorch", target
        raise EntrypointError(
            f"{where}: {attr} is a class but not a determined.pytorch.PyTorchTrial; "
            "name a PyTorchTrial class, a function, or a script"
        )
    if callable(target):
        return "function", target
    raise EntrypointError(f"{where}: {module_name}.{attr} is neither a PyTorchTrial class nor a function")


def _seed(value: int) -> None:
    """Identical seeds on every rank, as Determined sets them for a trial."""
    random.seed(value)
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(value % (2**32))
    if "torch" in sys.modules or importlib.util.find_spec("torch") is not None:
        import torch

        torch.manual_seed(value)


def _resume_steps(checkpoint: str | None) -> int | None:
    """Batches trained at the checkpoint (from its metadata.json), for absolute max_length."""
    if not checkpoint:
        return None
    import appdirs

    meta = Path(appdirs.user_data_dir("determined")) / checkpoint / "metadata.json"
    try:
        return int(json.loads(meta.read_text()).get("steps_completed") or 0) or None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _distributed(config: dict[str, Any]) -> Iterator[Any]:
    """A Determined DistributedContext over torch.distributed when torchrun started us."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        yield None
        return
    import torch
    import torch.distributed as dist
    from determined import core

    use_gpu = (bool(config.get("gpu")) if config else True) and torch.cuda.is_available()
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_gpu:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_gpu else "gloo")
    os.environ["USE_TORCH_DISTRIBUTED"] = "1"  # PyTorchTrialContext wraps models in DDP
    if not config:  # on a Determined cluster: its torch_distributed launcher set the rendezvous up
        context = core.DistributedContext.from_torch_distributed()
        try:
            yield context
        finally:
            context.close()
            dist.destroy_process_group()
        return
    pub_port, pull_port = config.get("dist_ports") or (0, 0)
    ports = {"pub_port": int(pub_port), "pull_port": int(pull_port)} if pub_port else {}
    context = core.DistributedContext(
        rank=int(os.environ["RANK"]),
        size=world,
        local_rank=local_rank,
        local_size=int(os.environ["LOCAL_WORLD_SIZE"]),
        cross_rank=int(os.environ.get("GROUP_RANK", 0)),
        cross_size=int(os.environ.get("GROUP_WORLD_SIZE", 1)),
        **ports,
    )
    try:
        yield context
    finally:
        context.close()
        dist.destroy_process_group()


def _run_pytorch(trial_cls: type, found: TrialInfo, config: dict[str, Any], distributed: Any) -> None:
    import determined as det
    from determined import pytorch

    if found.max_length is None:
        raise EntrypointError(
            f"spec.model.entrypoint {found.entrypoint!r} is a PyTorchTrial: spec.searcher.maxLength is "
            "required to say how long to train"
        )
    with det.pytorch.init(
        hparams=found.hparams,
        exp_conf=config.get("exp_conf"),
        distributed=distributed,
        enable_tensorboard_logging=False,
    ) as context:
        trial = trial_cls(context)
        if context.models:
            _describe_pytorch_trial(trial, context)
        period = found.validation_period.to_determined() if found.validation_period else pytorch.Epoch(1)
        checkpoint_period = found.checkpoint_period.to_determined() if found.checkpoint_period else period
        pytorch.Trainer(trial, context).fit(
            max_length=found.max_length.to_determined(),
            validation_period=period,
            checkpoint_period=checkpoint_period,
            checkpoint_policy="all",
            latest_checkpoint=found.latest_checkpoint,
        )


def _describe_pytorch_trial(trial: Any, context: Any) -> None:
    """The model description, with no code in the trial: the models and optimizers it wrapped
    (`context.wrap_model` / `wrap_optimizer`), the loss modules it holds, and, after the first
    forward pass, the input, output and per-layer shapes."""
    from cdl.runtime.model_metadata import (
        ShapeWatcher,
        describe_model,
        describe_optimizer,
        find_losses,
        with_shapes,
    )

    try:
        description = describe_model(context.models[0])
        if len(context.models) > 1:
            description["models"] = len(context.models)
        if context.optimizers:
            description.update(describe_optimizer(context.optimizers[0]))
        losses = find_losses(trial, *context.models)
        if losses:
            description["loss"] = losses[0] if len(losses) == 1 else losses
        trial_events.emit("model", **description)
        ShapeWatcher(context.models[0], lambda shapes: trial_events.emit("model", **with_shapes(description, shapes)))
    except Exception as exc:  # noqa: BLE001 - metadata must never break training
        trial_events.emit("warning", message=f"could not describe the model: {exc}")


def _call_function(fn: Callable[..., Any], found: TrialInfo, config: dict[str, Any], distributed: Any) -> None:
    from determined import core

    with core.init(distributed=distributed, tensorboard_mode=core.TensorboardMode.MANUAL) as core_context:
        offered = {
            "core_context": core_context,
            "context": core_context,
            "hparams": dict(found.hparams),
            "info": found,
            "trial": found,
            "max_length": found.max_length,
            "latest_checkpoint": found.latest_checkpoint,
            "data_dir": found.data_dir,
        }
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        params = list(inspect.signature(fn).parameters.values())
        unknown = [p for p in params if p.name not in offered and p.default is p.empty
                   and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(unknown) > 1 or (unknown and unknown[0] is not params[0]):
            names = ", ".join(p.name for p in unknown)
            raise EntrypointError(
                f"spec.model.entrypoint {found.entrypoint!r}: cannot supply parameter(s) {names}; a trial "
                f"function may take {', '.join(sorted(offered))}"
            )
        for p in params:
            if p.name in offered:
                if p.kind == p.POSITIONAL_ONLY:
                    args.append(offered[p.name])
                else:
                    kwargs[p.name] = offered[p.name]
            elif unknown and p is unknown[0]:
                args.append(core_context)
        fn(*args, **kwargs)


def run(kind: str, target: Any, found: TrialInfo, config: dict[str, Any]) -> None:
    with _distributed(config) as distributed:
        if kind == "pytorch":
            _run_pytorch(target, found, config, distributed)
        elif kind == "function":
            _call_function(target, found, config, distributed)
        elif kind == "script":
            runpy.run_path(str(target), run_name="__main__")
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=True)


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    config = _config()
    try:
        data.ensure_data_dir()  # a cluster names the data (CDL_DATA_URI); user code gets a directory
    except Exception as exc:  # noqa: BLE001 - every trial would fail alike: say why, once
        print(f"cdl: the trial's data cannot be read: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        trial_events.emit("entrypoint_error", message=f"data: {exc}")
        return EXIT_ENTRYPOINT
    found = info()
    code_dir = Path(config.get("code_dir") or os.getcwd())
    sys.path.insert(0, str(code_dir))
    resume = _resume_steps(found.latest_checkpoint)
    determined_hooks.install(os.environ.get(ENV_STOP), resume)
    guard = stopping_guard.install_from_env()  # on a cluster: searcher.earlyStopping inside the trial
    _seed(found.seed)

    from cdl.runtime.model_metadata import describe_data, environment, package_versions

    trial_events.emit(
        "start",
        pid=os.getpid(),
        entrypoint=found.entrypoint,
        seed=found.seed,
        max_length=found.max_length.wire() if found.max_length else None,
        latest_checkpoint=found.latest_checkpoint,
        resume_steps=resume,
        world_size=int(os.environ.get("WORLD_SIZE", "1") or 1),
        packages=package_versions(code_dir),
        environment=environment(),
    )
    if found.data_dir:
        try:
            trial_events.emit("data", **describe_data(found.data_dir))
        except Exception as exc:  # noqa: BLE001 - metadata must never break training
            trial_events.emit("warning", message=f"could not describe the data: {exc}")
    logger.info("trial %s: %s, hparams %s, train to %s", found.trial_id, found.entrypoint, found.hparams,
                found.max_length)
    try:
        kind, target = resolve(found.entrypoint, code_dir)
        run(kind, target, found, config)
    except EntrypointError as exc:
        print(f"cdl: {exc}", file=sys.stderr, flush=True)
        trial_events.emit("entrypoint_error", message=str(exc))
        return EXIT_ENTRYPOINT
    except SystemExit as exc:
        if exc.code in (None, 0):
            trial_events.emit("exit", status="ok")
            return EXIT_OK
        message = f"SystemExit: {exc.code}"
        trial_events.emit("error", type="SystemExit", message=str(exc.code), summary=message)
        return exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR
    except BaseException as exc:  # noqa: BLE001 - report every failure, with its traceback
        text = traceback.format_exc()
        print(text, file=sys.stderr, flush=True)
        trial_events.emit(
            "error", type=type(exc).__name__, message=str(exc)[:2000], traceback=text[-8000:], all_ranks=True
        )
        return EXIT_USER_ERROR
    stopped = determined_hooks.stop_reason(os.environ.get(ENV_STOP)) or (guard.stop_reason() if guard else None)
    trial_events.emit("exit", status="ok", stopped=stopped)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
