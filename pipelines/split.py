"""A reproducible, optionally stratified train/test split by seed.

Each item is ranked by a keyed hash of (seed, item key) within its stratum (its label, or one
stratum when not stratifying), and the first ones of each stratum go to test: round(n * test)
in all, shared between strata by largest remainder, and at least one item on each side of a
stratum of two or more. So the
same seed and items give the same split on any machine, and adding an item moves at most one
other item per stratum between the outputs (a re-run after new data keeps the test set stable).

Items are files (`files`, label = parent folder), rows of CSV files (`csv`, label = the
`--label-column`, default the first of label/category/class/target present) or the images of IDX
pairs (`idx`, label = the labels file). As a step (glob `/`) it writes `/pfs/out/train/...` and
`/pfs/out/test/...`; the local data engine uses the same functions for `spec.split`. IDX outputs
hold one pair per side: `train-images-idx3-ubyte` + `train-labels-idx1-ubyte` in train,
`test-images-...` + `test-labels-...` in test (the names the Pachyderm engine writes too).

    python -m pipelines.split --test 0.2 --seed 42 [--no-stratify] [--format files|csv|idx]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

TRAIN, TEST = "train", "test"
LABEL_COLUMNS = ("label", "labels", "category", "class", "target")


def idx_names(side: str, image_dims: int = 2) -> tuple[str, str]:
    """The images and labels file names of one side's IDX pair (`train-images-idx3-ubyte`, ...)."""
    return f"{side}-images-idx{image_dims + 1}-ubyte", f"{side}-labels-idx1-ubyte"


def _rank(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{key}".encode()).digest()


def assign(items: Iterable[tuple[str, str | None]], test: float, seed: int, stratify: bool = True) -> dict[str, str]:
    """`{key: "train"|"test"}` for `(key, label)` items; keys must be unique."""
    if not 0 < test < 1:
        raise ValueError(f"test fraction must lie strictly between 0 and 1, not {test}")
    strata: dict[str | None, list[str]] = defaultdict(list)
    for key, label in items:
        strata[label if stratify else None].append(key)
    quotas = _quotas({label: len(keys) for label, keys in strata.items()}, test, seed)
    out: dict[str, str] = {}
    for label, keys in strata.items():
        ranked = sorted(keys, key=lambda k: _rank(seed, k))
        for i, key in enumerate(ranked):
            out[key] = TEST if i < quotas[label] else TRAIN
    return out


def _quotas(sizes: dict[str | None, int], test: float, seed: int) -> dict[str | None, int]:
    """Test items per stratum: the total is round(n * test), shared by largest remainder (so many
    small strata do not all round down), with one item on each side of a stratum of two or more."""
    exact = {label: n * test for label, n in sizes.items()}
    quotas = {label: int(q) for label, q in exact.items()}
    spare = int(round(sum(sizes.values()) * test)) - sum(quotas.values())
    by_remainder = sorted(exact, key=lambda lab: (-(exact[lab] - quotas[lab]), _rank(seed, str(lab))))
    for label in by_remainder[:max(spare, 0)]:
        quotas[label] += 1
    for label, n in sizes.items():
        if n >= 2:
            quotas[label] = min(max(quotas[label], 1), n - 1)
    return quotas


def file_label(rel: str) -> str | None:
    """The automatic label of a file: its parent folder's name (None at the top level)."""
    parts = rel.strip("/").rsplit("/", 2)
    return parts[-2] if len(parts) >= 2 else None


def is_data_file(rel: str) -> bool:
    """Hidden files (reports, `.DS_Store`) are never split."""
    return not any(part.startswith(".") for part in rel.split("/"))


def split_files(paths: Sequence[str], test: float, seed: int, stratify: bool, labels_from_dirs: bool = True
                ) -> dict[str, str]:
    """Train/test side of each path. With labels from folders, a file outside any label folder (a
    README at the top of an archive) has no class and belongs to neither output."""
    items = [(p, file_label(p) if labels_from_dirs else None) for p in paths if is_data_file(p)]
    if labels_from_dirs:
        items = [(p, label) for p, label in items if label is not None]
    return assign(items, test, seed, stratify)


def _keys(values: Iterable[bytes]) -> list[str]:
    """Content keys with an occurrence number, so duplicates stay distinct and order does not matter."""
    seen: dict[str, int] = defaultdict(int)
    keys = []
    for value in values:
        digest = hashlib.sha256(value).hexdigest()
        keys.append(f"{digest}#{seen[digest]}")
        seen[digest] += 1
    return keys


def split_csv(data: bytes, test: float, seed: int, stratify: bool, label_column: str | None = None
              ) -> tuple[bytes, bytes, int, int]:
    """(train CSV, test CSV, train rows, test rows); the header goes to both."""
    text = data.decode("utf-8-sig")
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = list(reader)
    if not rows:
        return data, data, 0, 0
    header, body = rows[0], [r for r in rows[1:] if r]
    lowered = [h.strip().lower() for h in header]
    column = None
    if label_column:
        if label_column.lower() not in lowered:
            raise ValueError(f"label column {label_column!r} not in CSV header {header}")
        column = lowered.index(label_column.lower())
    else:
        column = next((lowered.index(c) for c in LABEL_COLUMNS if c in lowered), None)
    keys = _keys(("\x1f".join(r)).encode() for r in body)
    labels = [r[column] if column is not None and column < len(r) else None for r in body]
    where = assign(zip(keys, labels, strict=True), test, seed, stratify and column is not None)
    outs = {TRAIN: io.StringIO(newline=""), TEST: io.StringIO(newline="")}
    writers = {k: csv.writer(v, lineterminator="\n") for k, v in outs.items()}
    counts = {TRAIN: 0, TEST: 0}
    for w in writers.values():
        w.writerow(header)
    for key, row in zip(keys, body, strict=True):
        writers[where[key]].writerow(row)
        counts[where[key]] += 1
    return outs[TRAIN].getvalue().encode(), outs[TEST].getvalue().encode(), counts[TRAIN], counts[TEST]


def split_idx(images: np.ndarray, labels: np.ndarray, test: float, seed: int, stratify: bool) -> np.ndarray:
    """A boolean mask over the items: True = test."""
    keys = _keys(images[i].tobytes() for i in range(images.shape[0]))
    where = assign(((k, str(int(lab))) for k, lab in zip(keys, labels, strict=True)), test, seed, stratify)
    return np.array([where[k] == TEST for k in keys], dtype=bool)


# --------------------------------------------------------------------------- the step


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipelines.split", description=__doc__.split("\n")[0])
    parser.add_argument("--test", type=float, default=0.2, help="fraction for the test output (default 0.2)")
    parser.add_argument("--seed", type=int, default=42, help="seed; the same seed gives the same split")
    parser.add_argument("--no-stratify", dest="stratify", action="store_false", help="ignore labels")
    parser.add_argument("--format", choices=("files", "csv", "idx"), default="files")
    parser.add_argument("--label-column", default=None, help="CSV label column (default: label/category/...)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from cdl.runtime.pfs import Report, datum_files, output_path
    from pipelines.image.idx import decode_idx, encode_idx, find_pairs

    args = parse_args(argv)
    files = {f.rel: f for f in datum_files()}
    counts = {TRAIN: 0, TEST: 0}
    if args.format == "files":
        where = split_files(list(files), args.test, args.seed, args.stratify)
        for rel, side in where.items():
            output_path(f"{side}/{rel}").write_bytes(files[rel].path.read_bytes())
            counts[side] += 1
    elif args.format == "csv":
        for rel, item in files.items():
            if not rel.lower().endswith(".csv"):
                continue
            train, test, n_train, n_test = split_csv(item.path.read_bytes(), args.test, args.seed, args.stratify,
                                                     args.label_column)
            output_path(f"{TRAIN}/{rel}").write_bytes(train)
            output_path(f"{TEST}/{rel}").write_bytes(test)
            counts[TRAIN] += n_train
            counts[TEST] += n_test
    else:
        pairs = find_pairs(list(files))
        if not pairs:
            print("no IDX images/labels pair in the input", file=sys.stderr)
            return 1
        images = np.concatenate([decode_idx(files[i].path.read_bytes()) for i, _ in pairs])
        labels = np.concatenate([decode_idx(files[lab].path.read_bytes()) for _, lab in pairs])
        mask = split_idx(images, labels, args.test, args.seed, args.stratify)
        for side, sel in ((TRAIN, ~mask), (TEST, mask)):
            images_name, labels_name = idx_names(side, images.ndim - 1)
            output_path(f"{side}/{images_name}").write_bytes(encode_idx(images[sel]))
            output_path(f"{side}/{labels_name}").write_bytes(encode_idx(labels[sel]))
            counts[side] = int(sel.sum())
    report = Report(step="split", kept=counts[TRAIN] + counts[TEST])
    data = report.to_dict() | {"train": counts[TRAIN], "test": counts[TEST]}
    import json

    output_path(".cdl-report.json").write_text(json.dumps(data, indent=1))
    print(f"train {counts[TRAIN]}, test {counts[TEST]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
