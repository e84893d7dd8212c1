"""The Fashion-MNIST use case's data side, without TensorFlow: the generated IDX sample, the
download with its checksums, and the IDX reading and normalisation the model code uses."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from tests.usecase_helpers import load

USECASE = Path(__file__).resolve().parents[1]
OFFICIAL = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz"]



generate = load("fmnist_generate", USECASE / "data" / "generate.py")
download = load("fmnist_download", USECASE / "data" / "download.py")
fashion_model = load("fashion_model", USECASE / "model" / "fashion_model.py")


def test_generated_sample_uses_the_official_file_names_and_idx_format(tmp_path: Path) -> None:
    generate.main(["--out", str(tmp_path), "--train", "50", "--test", "20", "--seed", "3"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(OFFICIAL)
    raw = gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes())
    assert raw[:4] == b"\x00\x00\x08\x03" and int.from_bytes(raw[4:8], "big") == 50
    assert int.from_bytes(raw[8:12], "big") == 28 and len(raw) == 16 + 50 * 28 * 28
    images = fashion_model.read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")
    labels = fashion_model.read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (20, 28, 28) and images.dtype == np.uint8 and labels.shape == (20,)
    assert np.bincount(labels, minlength=10).tolist() == [2] * 10  # balanced classes


def test_generated_sample_is_deterministic_and_raw_files_hold_the_same_images(tmp_path: Path) -> None:
    a = generate.generate(tmp_path / "a", 40, 10, seed=5)
    b = generate.generate(tmp_path / "b", 40, 10, seed=5)
    c = generate.generate(tmp_path / "c", 40, 10, seed=6)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()
    raw = generate.generate(tmp_path / "raw", 40, 10, seed=5, compress=False)
    assert [p.name for p in raw] == [p.name.removesuffix(".gz") for p in a]
    assert np.array_equal(fashion_model.read_idx(raw[0]), fashion_model.read_idx(a[0]))


def test_images_look_like_their_class(tmp_path: Path) -> None:
    """Class-dependent patterns: trousers have a gap between the legs, bags are wider than
    dresses at the top, sandals are mostly empty, and every image is more than noise."""
    generate.generate(tmp_path, 400, 0, seed=1)
    x = fashion_model.read_idx(tmp_path / "train-images-idx3-ubyte.gz").astype(np.float32)
    y = fashion_model.read_idx(tmp_path / "train-labels-idx1-ubyte.gz")
    on = x > 40

    def two_legs(img: np.ndarray) -> bool:
        """Rows 17..22 cross two separate runs of lit pixels (legs) rather than one."""
        rows = img[17:23].astype(int)
        runs = (np.diff(rows, axis=1) == 1).sum(axis=1) + rows[:, 0]
        return bool(np.median(runs) >= 2)

    legs = {c: np.mean([two_legs(on[i]) for i in np.flatnonzero(y == c)]) for c in (1, 3, 8)}
    assert legs[1] > 0.7 and legs[3] < 0.3 and legs[8] < 0.3, legs  # trousers vs dresses and bags
    lit = {c: on[y == c].mean() for c in range(10)}
    assert lit[5] < 0.6 * lit[8] and lit[3] < lit[4], lit  # sandals are sparse, dresses slimmer than coats
    assert all(on[i].sum() > 25 for i in range(len(x)))


def test_idx_pairs_prefer_the_requested_side(tmp_path: Path) -> None:
    generate.generate(tmp_path, 30, 10, seed=2)
    x, y = fashion_model.load_idx_dataset(tmp_path, prefer=("train",))
    assert x.shape == (30, 28, 28) and y.shape == (30,)
    x, y = fashion_model.load_idx_dataset(tmp_path, prefer=("test", "t10k"))
    assert len(x) == 10
    assert len(fashion_model.load_idx_dataset(tmp_path)[0]) == 40  # no preference: every pair
    # The DataPipeline's split output names: test-images-idx3-ubyte, uncompressed.
    out = tmp_path / "split"
    out.mkdir()
    (out / "test-images-idx3-ubyte").write_bytes(generate.encode_idx(x.astype(np.uint8)))
    (out / "test-labels-idx1-ubyte").write_bytes(generate.encode_idx(y.astype(np.uint8)))
    (out / ".cdl-report.json").write_text("{}")
    assert np.array_equal(fashion_model.load_idx_dataset(out, prefer=("test",))[1], y)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no IDX images/labels pair"):
        fashion_model.load_idx_dataset(tmp_path / "empty")


def test_idx_reader_refuses_truncated_files(tmp_path: Path) -> None:
    data = generate.encode_idx(np.zeros((3, 28, 28), np.uint8))
    (tmp_path / "bad").write_bytes(data[:-5])
    with pytest.raises(ValueError, match="header says"):
        fashion_model.read_idx(tmp_path / "bad")
    (tmp_path / "text").write_text("not idx")
    with pytest.raises(ValueError, match="not an IDX file"):
        fashion_model.read_idx(tmp_path / "text")


def test_normalisation_scales_pixels_and_accepts_flat_images() -> None:
    img = np.full((28, 28), 255, np.uint8)
    assert fashion_model.normalize([img.tolist()]).max() == 1.0
    assert fashion_model.normalize(img.reshape(1, 784)).shape == (1, 28, 28)
    with pytest.raises(ValueError, match="28x28"):
        fashion_model.normalize(np.zeros((2, 27, 28)))


def test_stratified_split_is_reproducible_with_class_shares() -> None:
    labels = np.repeat(np.arange(10), 20)
    train, val = fashion_model.stratified_split(labels, 0.2, seed=3)
    again = fashion_model.stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(val, again[1]) and not np.array_equal(val, fashion_model.stratified_split(labels, 0.2, 4)[1])
    assert np.bincount(labels[val]).tolist() == [4] * 10 and len(train) == 160


# --------------------------------------------------------------------------- download


def test_download_fetches_and_checks_every_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mirror = tmp_path / "mirror"
    generate.generate(mirror, 20, 10, seed=4)
    sums = {name: hashlib.md5((mirror / name).read_bytes()).hexdigest() for name in OFFICIAL}
    out = tmp_path / "out"
    paths = download.download(out, mirror.as_uri(), checksums=sums)
    assert [p.name for p in paths] == OFFICIAL
    assert all((out / n).read_bytes() == (mirror / n).read_bytes() for n in OFFICIAL)
    # The CLI against the same mirror: official checksums do not match generated files.
    with pytest.raises(download.ChecksumError, match="train-images-idx3-ubyte.gz: MD5"):
        download.main(["--out", str(tmp_path / "cli"), "--base-url", mirror.as_uri()])
    assert not any((tmp_path / "cli").iterdir())  # nothing half-written is left
    download.main(["--out", str(tmp_path / "cli"), "--base-url", mirror.as_uri(), "--no-verify"])
    assert "downloaded 4 files" in capsys.readouterr().out


def test_download_defaults_are_the_official_files() -> None:
    assert download.BASE_URL == "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    assert list(download.OFFICIAL_MD5) == OFFICIAL
    assert download.OFFICIAL_MD5["train-images-idx3-ubyte.gz"] == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
