"""Local data engine: what a first run costs, and what dedup and incremental re-runs save.

Scenarios (each in a fresh engine root):
- `10k small files`: ingest and commit 10,000 text files of about 1 KB (no steps);
- `100 MB images`: ingest and commit about 100 MB of PNG images (no steps);
- `1k files + step`: 1,000 text files through `pipelines.text.validate` (one datum per file).

For each: the first run; a re-commit of the unchanged source (a forced re-run: no new objects,
every datum skipped); an incremental run after adding one file. Re-runs are repeated and their
median is shown with the ratio to the first run (the baseline, measured in the same process).

    .venv/bin/python bench/data_bench.py [--files 10000] [--image-mb 100] [--step-files 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdl.api.datapipeline import DataPipelineSpec  # noqa: E402
from cdl.engines.base import DataRunRequest, JobState, ResourceKey  # noqa: E402
from cdl.engines.data.local import LocalDataEngine  # noqa: E402

KEY = ResourceKey("bench", "data")
LABELS = ("business", "entertainment", "politics", "sport", "tech")


@dataclass
class Row:
    scenario: str
    files: int
    megabytes: float
    first: float
    recommit: list[float]
    recommit_new_objects: int
    incremental: list[float]
    incremental_datums: str


def make_text(root: Path, n: int, size: int = 1000) -> None:
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        path = root / label / f"{i:05d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        words = " ".join(f"{label}{i}w{j}" for j in range(size // 12))
        path.write_text(f"Story {i}. {words}\n")


def make_images(root: Path, megabytes: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    side = 512  # ~256 KiB per grayscale PNG of noise
    n = max(1, megabytes * 1024 * 1024 // (side * side))
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        path = root / label / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(side, side), dtype=np.uint8)).save(path, compress_level=0)


def timed_run(engine: LocalDataEngine, spec: DataPipelineSpec, generation: int, force: bool = False) -> tuple[float, object]:
    start = time.perf_counter()
    ref = engine.start_run(DataRunRequest(KEY, spec, generation, base_dir=ROOT, force=force))
    status = engine.wait(KEY, ref.id, timeout=3600)
    elapsed = time.perf_counter() - start
    if status.state != JobState.SUCCEEDED:
        raise SystemExit(f"run failed: {status.message}")
    return elapsed, status


def scenario(name: str, work: Path, make, steps: list[dict], repeat: int, new_file) -> Row:
    src = work / "src"
    make(src)
    files = sum(1 for p in src.rglob("*") if p.is_file())
    megabytes = sum(p.stat().st_size for p in src.rglob("*") if p.is_file()) / 1e6
    spec = DataPipelineSpec.model_validate({
        "source": {"uri": src.as_uri()}, "split": {"test": 0.2, "seed": 42}, "steps": steps})
    engine = LocalDataEngine(work / "engine")
    try:
        first, _ = timed_run(engine, spec, 1)
        recommit, new_objects = [], 0
        for _ in range(repeat):
            before = engine.objects.created
            elapsed, _ = timed_run(engine, spec, 1, force=True)
            recommit.append(elapsed)
            new_objects += engine.objects.created - before
        incremental, datums = [], ""
        for i in range(repeat):
            new_file(src, i)
            elapsed, status = timed_run(engine, spec, 1)
            incremental.append(elapsed)
            if status.lineage and steps:
                step = status.lineage[0]
                datums = f"{step.datums_processed} run, {step.datums_skipped} skipped"
            else:
                datums = "no steps"
    finally:
        engine.close()
    return Row(name, files, megabytes, first, recommit, new_objects, incremental, datums)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--image-mb", type=int, default=100)
    parser.add_argument("--step-files", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    def add_text(src: Path, i: int) -> None:
        (src / "tech" / f"new-{i}.txt").write_text("A new technology story. " * 20)

    def add_image(src: Path, i: int) -> None:
        shutil.copy(next((src / "tech").glob("*.png")), src / "tech" / f"new-{i}.png")
        with open(src / "tech" / f"new-{i}.png", "ab") as f:
            f.write(bytes([i]))

    validate = {"name": "validate", "glob": "/*/*",
                "command": ["python", "-m", "pipelines.text.validate", "--min-chars", "100"]}
    rows = []
    with tempfile.TemporaryDirectory(prefix="cdl-data-bench-") as tmp:
        plan = [
            (f"{args.files:,} small files", lambda p: make_text(p, args.files), [], add_text),
            (f"{args.image_mb} MB images", lambda p: make_images(p, args.image_mb), [], add_image),
            (f"{args.step_files:,} files + step", lambda p: make_text(p, args.step_files), [validate], add_text),
        ]
        for i, (name, make, steps, new_file) in enumerate(plan):
            print(f"running: {name} ...", file=sys.stderr, flush=True)
            rows.append(scenario(name, Path(tmp) / str(i), make, steps, args.repeat, new_file))

    load = os.getloadavg()[0]
    print(f"\nlocal data engine, {os.cpu_count()} cores (load {load:.1f}), repeat {args.repeat}, medians\n")
    print("| scenario | files | MB | first run | re-commit unchanged | ratio | new objects | +1 file | ratio "
          "| datums on +1 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        rc, inc = statistics.median(r.recommit), statistics.median(r.incremental)
        print(f"| {r.scenario} | {r.files:,} | {r.megabytes:.0f} | {r.first:.2f} s | {rc:.2f} s | {rc / r.first:.3f} "
              f"| {r.recommit_new_objects} | {inc:.2f} s | {inc / r.first:.3f} | {r.incremental_datums} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
