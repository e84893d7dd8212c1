"""The evaluation runner: `python -m cdl.runtime.evaluate` (one process per evaluation).

Calls the model's evaluation entrypoint `function(model_dir, data_dir)` on an unpacked
ModelVersion package and writes what it returned, normalised, as JSON to `--out`:

    {"metrics": {name: float}, "labels": [...]|null, "predictions": [...]|null,
     "classNames": [...]|null, "examples": int|null,
     "timing": {"evalSeconds": s, "forwardSeconds": s|null, "forwardCalls": n,
                "steady": {"module", "batch", "runs", "msPerExample"}|null}}

The entrypoint may return `{"metrics": {...}, "labels": [...], "predictions": [...],
"class_names": [...]}` or a flat `{metric: value}` dict. For PyTorch packages the runner also
times the model itself: global forward hooks add up the time spent in outermost
`nn.Module.__call__`s, then re-runs the busiest module on the first batch it saw (after a warm-up)
for a steady-state median, so the latency of a model and of its compressed variant are measured
the same way, without the data loading around them.

Exit status: 0 done, 1 the user's code raised (traceback on stderr and in `--out`), 3 the
entrypoint or package is unusable. Runs in the user's environment: standard library only here.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import random
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from cdl.runtime.package import (
    MANIFEST,
    PackageError,
    PackageInfo,
    import_from_package,
    load_package,
    prepare_process,
)

EXIT_OK = 0
EXIT_USER_ERROR = 1
EXIT_ENTRYPOINT = 3
DEFAULT_FUNCTION = "evaluate"


class ForwardTimer:
    """Time spent in outermost torch module calls (nested submodule calls are not counted twice),
    and a steady-state latency figure.

    The first-call costs of a model (lazy kernel set-up, e.g. for quantized layers) land in the
    total; `benchmark()` then re-runs the module that took the most time on the first batch it
    saw, after a warm-up, and reports the median milliseconds per example."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._local = threading.local()
        self._handles: list[Any] = []
        self._by_module: dict[int, list[Any]] = {}  # id -> [module, first args, total seconds]
        self._paused = False

    def install(self) -> None:
        from torch.nn.modules import module as torch_module

        def pre(mod: Any, args: Any) -> None:
            if self._paused:
                return
            depth = getattr(self._local, "depth", 0)
            if depth == 0:
                self._local.start = time.perf_counter()
                self._local.module = mod
                if id(mod) not in self._by_module:
                    self._by_module[id(mod)] = [mod, _detached(args), 0.0]
            self._local.depth = depth + 1

        def post(mod: Any, args: Any, output: Any) -> None:
            if self._paused:
                return
            depth = getattr(self._local, "depth", 1) - 1
            self._local.depth = max(depth, 0)
            if depth == 0:
                spent = time.perf_counter() - self._local.start
                self.seconds += spent
                self.calls += 1
                entry = self._by_module.get(id(self._local.module))
                if entry is not None:
                    entry[2] += spent

        self._handles = [
            torch_module.register_module_forward_pre_hook(pre),
            torch_module.register_module_forward_hook(post),
        ]

    def benchmark(self, budget: float = 0.3, min_runs: int = 5, max_runs: int = 200) -> dict[str, Any] | None:
        """Median ms per example of the busiest module on its first batch (None if nothing ran)."""
        if not self._by_module:
            return None
        import torch

        module, args, _ = max(self._by_module.values(), key=lambda e: e[2])
        batch = _batch_size(args)
        self._paused = True
        try:
            with torch.no_grad():
                for _ in range(2):
                    module(*args)
                times: list[float] = []
                deadline = time.perf_counter() + budget
                while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() < deadline):
                    start = time.perf_counter()
                    module(*args)
                    times.append(time.perf_counter() - start)
        except Exception as exc:  # noqa: BLE001 - a model that cannot be re-run gives no figure
            print(f"cdl: latency benchmark skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
            return None
        finally:
            self._paused = False
        times.sort()
        median = times[len(times) // 2]
        return {"module": type(module).__name__, "batch": batch, "runs": len(times),
                "msPerExample": median * 1000.0 / max(batch, 1)}


def _detached(args: Any) -> Any:
    if hasattr(args, "detach"):
        return args.detach().clone()
    if isinstance(args, tuple | list):
        return type(args)(_detached(a) for a in args)
    return args


def _batch_size(args: Any) -> int:
    for arg in args if isinstance(args, tuple | list) else (args,):
        shape = getattr(arg, "shape", None)
        if shape is not None and len(shape) >= 1:
            return int(shape[0])
    return 1


def _plain(value: Any) -> Any:
    """JSON-safe copies of numbers, numpy/torch scalars and arrays, and containers."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return _plain(value.tolist())
    if hasattr(value, "item"):
        return _plain(value.item())
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def _number(name: str, value: Any) -> float | None:
    value = _plain(value)
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    print(f"cdl: metric {name!r} is not a number ({type(value).__name__}); left out of the metrics", file=sys.stderr)
    return None


def normalise(result: Any) -> dict[str, Any]:
    """The runner's JSON shape from whatever the entrypoint returned."""
    if not isinstance(result, dict):
        raise TypeError(f"the evaluation entrypoint must return a dict, got {type(result).__name__}")
    if "metrics" in result and isinstance(result["metrics"], dict):
        raw_metrics = result["metrics"]
        extra = result
    else:
        skip = {"labels", "predictions", "class_names", "classNames", "examples"}
        raw_metrics = {k: v for k, v in result.items() if k not in skip}
        extra = result
    metrics = {}
    for name, value in raw_metrics.items():
        number = _number(str(name), value)
        if number is not None:
            metrics[str(name)] = number
    labels = _plain(extra.get("labels"))
    predictions = _plain(extra.get("predictions"))
    if labels is not None and predictions is not None and len(labels) != len(predictions):
        raise ValueError(f"the evaluation returned {len(labels)} labels but {len(predictions)} predictions")
    names = extra.get("class_names", extra.get("classNames"))
    examples = extra.get("examples")
    if examples is None:
        examples = len(predictions) if predictions is not None else (len(labels) if labels is not None else None)
    return {
        "metrics": metrics,
        "labels": labels,
        "predictions": predictions,
        "classNames": [str(n) for n in _plain(names)] if names is not None else None,
        "examples": int(examples) if examples is not None else None,
    }


def _seed(info: PackageInfo | None) -> None:
    seed = int(os.environ.get("CDL_SEED", "0") or 0)
    random.seed(seed)
    if "numpy" in sys.modules or (info is not None and info.framework in ("pytorch", "keras", "tensorflow")):
        try:
            import numpy

            numpy.random.seed(seed)
        except ImportError:
            pass
    if info is not None and info.framework == "pytorch":
        import torch

        torch.manual_seed(seed)


def _write(out: Path, body: dict[str, Any]) -> None:
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(body, allow_nan=True))
    tmp.replace(out)


def run(package_dir: Path, entrypoint: str, data_dir: Path, out: Path) -> int:
    info = load_package(package_dir) if (package_dir / MANIFEST).is_file() else None
    timer: ForwardTimer | None = None
    try:
        if info is not None:
            prepare_process(info)
        target = import_from_package(package_dir, entrypoint)
        if inspect.ismodule(target):
            target = getattr(target, DEFAULT_FUNCTION, None)
        if not callable(target):
            raise PackageError(f"entrypoint {entrypoint!r} names no function; expected module:function(model_dir, data_dir)")
        if info is not None and info.framework == "pytorch":
            timer = ForwardTimer()  # global hooks: they see every module called from here on
            timer.install()
    except PackageError as exc:
        traceback.print_exc()
        _write(out, {"error": str(exc), "kind": "entrypoint", "traceback": traceback.format_exc()})
        return EXIT_ENTRYPOINT
    except BaseException as exc:  # noqa: BLE001 - the user's import failed: report it whole
        traceback.print_exc()
        _write(out, {"error": f"importing {entrypoint} failed: {type(exc).__name__}: {exc}", "kind": "user",
                     "traceback": traceback.format_exc()})
        return EXIT_USER_ERROR
    try:
        _seed(info)
        print(f"cdl: evaluating {entrypoint} on {data_dir}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        raw = target(str(package_dir), str(data_dir))
        elapsed = time.perf_counter() - started
        body = normalise(raw)
    except BaseException as exc:  # noqa: BLE001
        traceback.print_exc()
        _write(out, {"error": f"{type(exc).__name__}: {exc}", "kind": "user", "traceback": traceback.format_exc()})
        return EXIT_USER_ERROR
    body["timing"] = {
        "evalSeconds": elapsed,
        "forwardSeconds": timer.seconds if timer is not None and timer.calls else None,
        "forwardCalls": timer.calls if timer is not None else 0,
        "steady": timer.benchmark() if timer is not None else None,
    }
    shown = ", ".join(f"{k}={v:.4g}" for k, v in body["metrics"].items() if math.isfinite(v))
    print(f"cdl: done in {elapsed:.2f}s: {shown}", file=sys.stderr, flush=True)
    _write(out, body)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cdl.runtime.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--package", required=True, type=Path, help="unpacked ModelVersion package directory")
    parser.add_argument("--entrypoint", required=True, help="module:function in the package's model code")
    parser.add_argument("--data", required=True, type=Path, help="evaluation data directory")
    parser.add_argument("--out", required=True, type=Path, help="where to write the result JSON")
    args = parser.parse_args(argv)
    return run(args.package.resolve(), args.entrypoint, args.data.resolve(), args.out)


if __name__ == "__main__":
    sys.exit(main())
