"""Train/test splitting: the rules (a reproducible, optionally stratified split by seed) and their
application to a commit (`spec.split`), shared by the local and the Pachyderm data engines and by the
`pipelines.split` step.

The rules: each item is ranked by a keyed hash of (seed, item key) within its stratum (its label,
or one stratum when not stratifying), and the first ones of each stratum go to test: round(n * test)
in all, shared between strata by largest remainder, and at least one item on each side of a
stratum of two or more. So the same seed and items give the same split on any machine, and adding
an item moves at most one other item per stratum between the outputs (a re-run after new data
keeps the test set stable). Items are files (label = parent folder), rows of CSV files (label = the
label column, default the first of label/category/class/target present) or the images of IDX
pairs (label = the labels file).

On a commit: files (`format: files`) are assigned whole, stratified by their automatic label (the
parent folder) when `labelsFrom: directory`. CSV files are split row by row (each output holds a
file of the same name with its share of rows). IDX images/labels pairs are pooled and written as
one pair per output (`train-images-idx3-ubyte` + `train-labels-idx1-ubyte`, `test-...`),
stratified by the label values. Hidden files (step reports) never reach train or test.

This module imports only numpy, `cdl.errors` and `cdl.runtime.idx`, so the pipelines image can
carry it for the split step.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from cdl.errors import PermanentEngineError
from cdl.runtime.idx import IdxError, decode_idx, encode_idx, find_pairs

if TYPE_CHECKING:
    from cdl.api.datapipeline import Split
    from cdl.engines.data.objects import FileEntry, ObjectStore

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


# --------------------------------------------------------------------------- on a commit


@dataclass
class SplitResult:
    train: dict[str, FileEntry]
    test: dict[str, FileEntry]
    items: dict[str, int] = field(default_factory=lambda: {TRAIN: 0, TEST: 0})  # files, rows or images
    labels: dict[str, int] = field(default_factory=dict)  # items per automatic label (files format)


def data_files(files: dict[str, FileEntry]) -> dict[str, FileEntry]:
    return {rel: e for rel, e in files.items() if is_data_file(rel)}


def label_counts(files: dict[str, FileEntry]) -> dict[str, int]:
    return dict(sorted(Counter(label for rel in files if (label := file_label(rel)) is not None).items()))


def split_commit(files: dict[str, FileEntry], objects: ObjectStore, fmt: str, labels_from: str,
                 split: Split) -> SplitResult:
    files = data_files(files)
    if fmt == "csv":
        return _split_csv(files, objects, split)
    if fmt == "idx":
        return _split_idx(files, objects, split)
    where = split_files(list(files), split.test, split.seed, split.stratify, labels_from == "directory")
    train = {rel: files[rel] for rel, side in where.items() if side == TRAIN}
    test = {rel: files[rel] for rel, side in where.items() if side == TEST}
    return SplitResult(train, test, {TRAIN: len(train), TEST: len(test)},
                       label_counts(files) if labels_from == "directory" else {})


def _split_csv(files: dict[str, FileEntry], objects: ObjectStore, split: Split) -> SplitResult:
    result = SplitResult({}, {})
    for rel, entry in files.items():
        if not rel.lower().endswith(".csv"):
            continue
        data = objects.ensure_local(entry.sha256).read_bytes()
        try:
            train, test, n_train, n_test = split_csv(data, split.test, split.seed, split.stratify)
        except (UnicodeDecodeError, ValueError) as exc:
            raise PermanentEngineError(f"split: cannot read CSV file {rel}: {exc}", reason="BadData")
        result.train[rel] = objects.put_bytes(train)
        result.test[rel] = objects.put_bytes(test)
        result.items[TRAIN] += n_train
        result.items[TEST] += n_test
    if not result.train:
        raise PermanentEngineError("split: format csv, but the data holds no .csv file", reason="BadData")
    return result


def _split_idx(files: dict[str, FileEntry], objects: ObjectStore, split: Split) -> SplitResult:
    pairs = find_pairs(list(files))
    if not pairs:
        raise PermanentEngineError(
            f"split: format idx, but no images/labels pair (e.g. train-images-idx3-ubyte with "
            f"train-labels-idx1-ubyte) among {', '.join(sorted(files)[:6]) or 'no files'}", reason="BadData")
    try:
        images = [decode_idx(objects.ensure_local(files[i].sha256).read_bytes()) for i, _ in pairs]
        labels = [decode_idx(objects.ensure_local(files[lab].sha256).read_bytes()) for _, lab in pairs]
        all_images, all_labels = np.concatenate(images), np.concatenate(labels)
    except (IdxError, ValueError) as exc:
        raise PermanentEngineError(f"split: cannot read the IDX pairs {pairs}: {exc}", reason="BadData")
    if all_labels.shape != (all_images.shape[0],):
        raise PermanentEngineError(
            f"split: {all_images.shape[0]} images but labels of shape {all_labels.shape}", reason="BadData")
    mask = split_idx(all_images, all_labels, split.test, split.seed, split.stratify)
    result = SplitResult({}, {})
    for side, sel, target in ((TRAIN, ~mask, result.train), (TEST, mask, result.test)):
        images_name, labels_name = idx_names(side, all_images.ndim - 1)
        target[images_name] = objects.put_bytes(encode_idx(all_images[sel]))
        target[labels_name] = objects.put_bytes(encode_idx(all_labels[sel]))
        result.items[side] = int(sel.sum())
    result.labels = {str(k): int(v) for k, v in zip(*np.unique(all_labels, return_counts=True), strict=True)}
    return result
