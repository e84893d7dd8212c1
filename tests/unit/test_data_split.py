"""The reproducible, stratified split (cdl.engines.data.split) and its use on commits."""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cdl.api.datapipeline import Split
from cdl.engines.data.objects import ObjectStore
from cdl.engines.data.split import assign, split_commit, split_csv, split_files, split_idx
from cdl.runtime.idx import decode_idx, encode_idx


def corpus(per_label: dict[str, int]) -> list[str]:
    return [f"{label}/{i:03d}.txt" for label, n in per_label.items() for i in range(n)]


def test_same_seed_same_split_and_other_seed_differs() -> None:
    paths = corpus({"business": 50, "sport": 50})
    a = split_files(paths, 0.2, 42, True)
    assert a == split_files(list(reversed(paths)), 0.2, 42, True)  # input order does not matter
    assert a != split_files(paths, 0.2, 7, True)


def test_stratified_keeps_each_labels_share() -> None:
    paths = corpus({"business": 100, "sport": 40, "tech": 10})
    where = split_files(paths, 0.2, 42, True)
    test = Counter(p.split("/")[0] for p, side in where.items() if side == "test")
    assert test == {"business": 20, "sport": 8, "tech": 2}


def test_small_labels_get_one_item_on_each_side() -> None:
    where = split_files(corpus({"a": 2, "b": 3, "c": 1}), 0.2, 1, True)
    sides = {label: Counter(side for p, side in where.items() if p.startswith(label)) for label in "abc"}
    assert sides["a"] == {"train": 1, "test": 1}
    assert sides["b"]["test"] == 1
    assert sides["c"] == {"train": 1}


def test_adding_an_item_moves_at_most_one_other() -> None:
    paths = corpus({"business": 49})
    before = split_files(paths, 0.2, 42, True)
    after = split_files(paths + ["business/new.txt"], 0.2, 42, True)
    moved = [p for p in paths if before[p] != after[p]]
    assert len(moved) <= 1


def test_hidden_files_are_never_split() -> None:
    where = split_files(["a/1.txt", ".cdl-report.json", "a/.DS_Store"], 0.5, 1, False)
    assert set(where) == {"a/1.txt"}


def test_fraction_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        assign([("a", None)], 1.0, 1)


def test_csv_rows_split_by_label_column_with_header_on_both_sides() -> None:
    rows = [["text", "label"]] + [[f"row {i}", "pos" if i % 4 else "neg"] for i in range(100)]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    train, test, n_train, n_test = split_csv(buf.getvalue().encode(), 0.2, 42, True)
    assert (n_train, n_test) == (80, 20)
    test_rows = list(csv.reader(io.StringIO(test.decode())))
    assert test_rows[0] == ["text", "label"]
    assert Counter(r[1] for r in test_rows[1:]) == {"pos": 15, "neg": 5}
    train_rows = list(csv.reader(io.StringIO(train.decode())))
    assert {tuple(r) for r in train_rows[1:]} | {tuple(r) for r in test_rows[1:]} == {tuple(r) for r in rows[1:]}


def test_idx_split_is_stratified_by_label_values() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(200, 4, 4), dtype=np.uint8)
    labels = (np.arange(200) % 10).astype(np.uint8)
    mask = split_idx(images, labels, 0.25, 3, True)
    assert mask.sum() == 50
    assert Counter(labels[mask].tolist()) == {k: 5 for k in range(10)}


def test_split_commit_writes_idx_pairs_per_side(tmp_path: Path) -> None:
    objects = ObjectStore(tmp_path / "objects")
    images = np.arange(30 * 2 * 2, dtype=np.uint8).reshape(30, 2, 2)
    labels = (np.arange(30) % 3).astype(np.uint8)
    files = {
        "train-images-idx3-ubyte": objects.put_bytes(encode_idx(images[:20])),
        "train-labels-idx1-ubyte": objects.put_bytes(encode_idx(labels[:20])),
        "t10k-images-idx3-ubyte": objects.put_bytes(encode_idx(images[20:])),
        "t10k-labels-idx1-ubyte": objects.put_bytes(encode_idx(labels[20:])),
    }
    result = split_commit(files, objects, "idx", "none", Split(test=0.2, seed=7, stratify=True))
    assert set(result.train) == {"train-images-idx3-ubyte", "train-labels-idx1-ubyte"}
    assert set(result.test) == {"test-images-idx3-ubyte", "test-labels-idx1-ubyte"}
    test_images = decode_idx(objects.path(result.test["test-images-idx3-ubyte"].sha256).read_bytes())
    test_labels = decode_idx(objects.path(result.test["test-labels-idx1-ubyte"].sha256).read_bytes())
    assert test_images.shape == (6, 2, 2) and Counter(test_labels.tolist()) == {0: 2, 1: 2, 2: 2}
    assert result.items == {"train": 24, "test": 6}
