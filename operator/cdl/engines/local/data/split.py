"""`spec.split` on a commit: the train and test file sets, by the rules of `pipelines.split`.

Files (`format: files`) are assigned whole, stratified by their automatic label (the parent
folder) when `labelsFrom: directory`. CSV files are split row by row (each output holds a file of
the same name with its share of rows). IDX images/labels pairs are pooled and written as one
pair per output (`train-images-idx3-ubyte` + `train-labels-idx1-ubyte`, `test-...`),
stratified by the label values.
Hidden files (step reports) never reach train or test.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from cdl.api.datapipeline import Split
from cdl.engines.local.data.objects import FileEntry, ObjectStore
from cdl.errors import PermanentEngineError
from pipelines.image.idx import IdxError, decode_idx, encode_idx, find_pairs
from pipelines.split import TEST, TRAIN, file_label, idx_names, is_data_file, split_csv, split_files


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
    from pipelines.split import split_idx

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
