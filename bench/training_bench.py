"""Benchmark of the local training engine (not a test).

1. Search: ASHA, random and grid search on one problem with the same number of trials, side
   by side: trial-epochs spent, best validation loss reached, the best learning rate, and wall
   time. The problem is the toy linear regression of tests/fixtures/training/linreg (SGD on
   y = X·w*; the best learning rate is the largest that does not diverge, about 0.5).
2. Overhead: the same trial (PyTorchTrial, 16 epochs) run through the engine (submit to
   finished: code snapshot, process launch, event tailing, resource sampling, checkpoint GC,
   state persistence) against the same trial run directly (`det.pytorch.init` + `Trainer.fit`
   in a fresh Python process, as a user would run it off-cluster). Medians of --repeats runs
   and their ratio.

Usage: .venv/bin/python bench/training_bench.py [--trials 16] [--epochs 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cdl.api.experiment import ExperimentSpec
from cdl.engines.base import ResourceKey, TrainingRequest, TrainingStatus
from cdl.engines.training.local import LocalTrainingEngine

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "tests" / "fixtures" / "training" / "linreg"
LR = {"type": "log", "minval": -3.0, "maxval": -0.3}

DIRECT = """
import sys, determined as det
sys.path.insert(0, {model_dir!r})
from model_def import LinRegTrial
with det.pytorch.init(hparams={{"lr": 0.1}}, enable_tensorboard_logging=False) as ctx:
    det.pytorch.Trainer(LinRegTrial(ctx), ctx).fit(
        max_length=det.pytorch.Epoch({epochs}), validation_period=det.pytorch.Epoch(1),
        checkpoint_period=det.pytorch.Epoch(1), checkpoint_policy="all")
"""


def spec(searcher: dict[str, Any], hparams: dict[str, Any]) -> ExperimentSpec:
    return ExperimentSpec.model_validate({
        "model": {"path": "linreg", "entrypoint": "model_def:LinRegTrial"},
        "hyperparameters": hparams,
        "searcher": {"metric": "validation_loss", "smallerIsBetter": True, **searcher},
        "seed": 11,
    })


def run(engine: LocalTrainingEngine, name: str, s: ExperimentSpec) -> tuple[TrainingStatus, float]:
    start = time.perf_counter()
    ref = engine.submit(TrainingRequest(ResourceKey("bench", name), s, 1, 1, MODEL_DIR))
    status = engine.wait(ref, 3600, poll=0.05)
    return status, time.perf_counter() - start


def search_table(root: Path, trials: int, epochs: int, concurrency: int) -> list[tuple[Any, ...]]:
    engine = LocalTrainingEngine(root, max_parallel=concurrency)
    common = {"maxConcurrentTrials": concurrency, "maxLength": {"epochs": epochs}}
    grid_lr = {"type": "log", "minval": -3.0, "maxval": -0.3, "count": trials}
    searches = [
        ("asha", spec({"name": "asha", "maxTrials": trials, "asha": {"divisor": 4, "maxRungs": 3}, **common},
                      {"lr": LR})),
        ("random", spec({"name": "random", "maxTrials": trials, **common}, {"lr": LR})),
        ("grid", spec({"name": "grid", **common}, {"lr": grid_lr})),
    ]
    rows = []
    try:
        for name, s in searches:
            status, wall = run(engine, name, s)
            assert status.state.value == "succeeded", status.message
            best = status.best
            assert best is not None
            rows.append((name, len(status.trials), sum(t.length_done for t in status.trials),
                         sum(1 for t in status.trials if t.stop_reason), best.metrics["validation_loss"],
                         best.hparams["lr"], wall))
    finally:
        engine.close()
    return rows


def overhead(root: Path, epochs: int, repeats: int) -> tuple[list[float], list[float]]:
    engine = LocalTrainingEngine(root, max_parallel=1)
    platform_walls, direct_walls = [], []
    s = spec({"name": "single", "maxLength": {"epochs": epochs}}, {"lr": 0.1})
    try:
        for i in range(repeats):
            status, wall = run(engine, f"overhead-{i}", s)
            assert status.state.value == "succeeded", status.message
            platform_walls.append(wall)
            with tempfile.TemporaryDirectory() as xdg, tempfile.TemporaryDirectory() as cwd:
                # cwd apart from XDG_DATA_HOME: Determined copies the working directory into each checkpoint.
                env = {**os.environ, "XDG_DATA_HOME": xdg, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
                start = time.perf_counter()
                subprocess.run([sys.executable, "-c", DIRECT.format(model_dir=str(MODEL_DIR), epochs=epochs)],
                               env=env, cwd=cwd, check=True, capture_output=True)
                direct_walls.append(time.perf_counter() - start)
    finally:
        engine.close()
    return platform_walls, direct_walls


def search(root: Path, args: argparse.Namespace) -> None:
    rows = search_table(root, args.trials, args.epochs, args.concurrency)
    print(f"## Search: {args.trials} trials, up to {args.epochs} epochs each, {args.concurrency} at a time\n")
    print("| searcher | trials | trial-epochs | stopped early | best validation_loss | best lr | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, n, units, stopped, best, lr, wall in rows:
        print(f"| {name} | {n} | {units} | {stopped} | {best:.5f} | {lr:.4g} | {wall:.1f} |")
    random_units = next(r[2] for r in rows if r[0] == "random")
    asha_units = next(r[2] for r in rows if r[0] == "asha")
    print(f"\nASHA spent {asha_units / random_units:.0%} of random search's trial-epochs.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["search", "overhead"], help="run one part")
    args = parser.parse_args()
    print(f"# training_bench {datetime.date.today()} on {platform.node()} ({os.cpu_count()} CPUs, "
          f"Python {platform.python_version()})\n")
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "overhead":
            search(Path(tmp) / "search", args)
        if args.only == "search":
            return
        platform_walls, direct_walls = overhead(Path(tmp) / "overhead", args.epochs, args.repeats)
        p, d = statistics.median(platform_walls), statistics.median(direct_walls)
        print(f"## Overhead: one trial of {args.epochs} epochs, median of {args.repeats}\n")
        print("| how | median wall s | runs |")
        print("|---|---|---|")
        print(f"| trial run directly (det.pytorch.init + Trainer.fit, fresh process) | {d:.2f} | "
              f"{', '.join(f'{w:.2f}' for w in direct_walls)} |")
        print(f"| through LocalTrainingEngine (submit to finished) | {p:.2f} | "
              f"{', '.join(f'{w:.2f}' for w in platform_walls)} |")
        print(f"| ratio | {p / d:.2f}x | |")


if __name__ == "__main__":
    main()
