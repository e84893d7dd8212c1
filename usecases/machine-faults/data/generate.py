"""Generate the machine-faults sensor log as one CSV file, deterministic by seed.

    python usecases/machine-faults/data/generate.py --out DIR --per-class 100 --seed 42

Writes `DIR/readings.csv`: one row per reading of a pump's sensors (temperature in degrees C,
vibration in mm/s, pressure in bar, speed in rpm) and its `label`, the condition a maintenance
engineer recorded: `normal`, `overheating`, `bearing_wear` or `cavitation`. Each condition moves
two sensors away from normal operation, with noise that makes a few readings ambiguous, so a small
network scores high but not perfectly. Standard library only.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

COLUMNS = ("temperature", "vibration", "pressure", "rpm")
# mean and standard deviation of each sensor per condition
CONDITIONS: dict[str, tuple[tuple[float, float], ...]] = {
    "normal": ((60.0, 4.0), (2.0, 0.5), (6.0, 0.4), (1450.0, 30.0)),
    "overheating": ((82.0, 5.0), (2.4, 0.6), (5.6, 0.5), (1480.0, 40.0)),
    "bearing_wear": ((66.0, 5.0), (6.5, 1.2), (6.0, 0.5), (1420.0, 40.0)),
    "cavitation": ((62.0, 5.0), (3.5, 0.8), (3.8, 0.6), (1500.0, 40.0)),
}


def rows(per_class: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    out = []
    for label, sensors in CONDITIONS.items():
        for _ in range(per_class):
            out.append([f"{rng.gauss(mu, sd):.2f}" for mu, sd in sensors] + [label])
    rng.shuffle(out)
    return out


def write(out_dir: Path, per_class: int, seed: int) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "readings.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([*COLUMNS, "label"])
        writer.writerows(rows(per_class, seed))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    print(write(args.out, args.per_class, args.seed))


if __name__ == "__main__":
    main()
