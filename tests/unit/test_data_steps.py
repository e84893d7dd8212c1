"""The reusable steps in pipelines/, run in-process under the /pfs contract of cdl.runtime.pfs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cdl.runtime import pfs
from cdl.runtime.idx import IdxError, decode_idx, encode_idx, load_dataset
from pipelines.image import validate as image_validate
from pipelines.text import clean, validate
from pipelines.text.encoding import decode


@pytest.fixture
def datum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """An input and output directory named by the PFS_* variables, as the engine sets them."""
    inp, out = tmp_path / "pfs" / "in", tmp_path / "pfs" / "out"
    inp.mkdir(parents=True)
    out.mkdir()
    for var in ("PFS_INPUT_DIR", "PFS_OUT", "PFS_OUT_DIR", "CDL_INPUT_DIR", "CDL_OUTPUT_DIR", "PFS_INPUT_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PFS_ROOT", str(tmp_path / "pfs"))
    return inp, out


def report(out: Path) -> dict:
    return json.loads((out / pfs.REPORT_NAME).read_text())


def test_pfs_finds_the_single_input_under_the_root_as_on_a_cluster(datum: tuple[Path, Path]) -> None:
    inp, out = datum
    (inp / "sport").mkdir()
    (inp / "sport" / "1.txt").write_text("x")
    (inp / ".hidden").write_text("x")
    assert pfs.input_dir() == inp and pfs.out_dir() == out
    files = list(pfs.datum_files())
    assert [(f.rel, f.label) for f in files] == [("sport/1.txt", "sport")]
    with pytest.raises(ValueError):
        pfs.output_path("../escape.txt")


def test_validate_keeps_long_txt_repairs_encoding_and_counts_discards(datum: tuple[Path, Path]) -> None:
    inp, out = datum
    (inp / "sport").mkdir()
    (inp / "sport" / "good.txt").write_text("A long enough article. " * 10)
    (inp / "sport" / "short.txt").write_text("too short")
    (inp / "sport" / "latin1.txt").write_bytes("Price: £100 — ".encode() + b"\xa3 " + b"words " * 30)
    (inp / "sport" / "notes.md").write_text("markdown " * 30)
    (inp / "sport" / "blank.txt").write_text("   \n\n  ")
    assert validate.main(["--min-chars", "100"]) == 0
    assert sorted(p.name for p in (out / "sport").iterdir()) == ["good.txt", "latin1.txt"]
    assert "£ words" in (out / "sport" / "latin1.txt").read_text(encoding="utf-8")
    data = report(out)
    assert data["kept"] == 2
    assert data["discarded"] == {"too-short": 1, "suffix": 1, "empty": 1}
    assert data["repaired"] == {"non-utf8": 1}


def test_validate_strict_encoding_discards_non_utf8(datum: tuple[Path, Path]) -> None:
    inp, out = datum
    (inp / "a.txt").write_bytes(b"caf\xe9 " * 40)
    validate.main(["--encoding", "strict"])
    assert report(out)["discarded"] == {"not-utf8": 1} and not (out / "a.txt").exists()


def test_decode_keeps_valid_utf8_around_a_stray_byte() -> None:
    decoded = decode("naïve ".encode() + b"\x93quoted\x94")
    assert decoded.repaired and decoded.text == "naïve \u201cquoted\u201d"
    assert not decode(b"plain").repaired


def test_clean_normalizes_text(datum: tuple[Path, Path]) -> None:
    inp, out = datum
    (inp / "a.txt").write_bytes("\ufeffTitle  \r\n\r\n\r\n\r\nBody\u00a0text\x07 e\u0301\n".encode())
    (inp / "empty.txt").write_text("\x07\x08  ")
    assert clean.main([]) == 0
    assert (out / "a.txt").read_text() == "Title\n\nBody text \u00e9\n"
    assert report(out)["discarded"] == {"empty-after-cleaning": 1}
    assert clean.clean_text("MiXeD", lowercase=True) == "mixed\n"


def idx_pair(directory: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    (directory / f"{prefix}-images-idx3-ubyte").write_bytes(encode_idx(images))
    (directory / f"{prefix}-labels-idx1-ubyte").write_bytes(encode_idx(labels))


def test_idx_codec_round_trips_and_refuses_truncated_files() -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(decode_idx(encode_idx(array)), array)
    floats = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    assert np.allclose(decode_idx(encode_idx(floats)), floats)
    with pytest.raises(IdxError, match="needs 24 bytes"):
        decode_idx(encode_idx(array)[:-1])
    with pytest.raises(IdxError, match="magic"):
        decode_idx(b"\x01\x02\x03\x04")


def test_image_validate_drops_bad_items_and_files(datum: tuple[Path, Path]) -> None:
    inp, out = datum
    images = np.zeros((10, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 42], dtype=np.uint8)  # one label out of range
    idx_pair(inp, "train", images, labels)
    idx_pair(inp, "wrong", np.zeros((3, 32, 32), dtype=np.uint8), np.zeros(3, dtype=np.uint8))
    (inp / "broken-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00")
    (inp / "README").write_text("hi")
    assert image_validate.main(["--shape", "28,28", "--num-classes", "10"]) == 0
    kept_images, kept_labels = load_dataset(out)
    assert kept_images.shape == (9, 28, 28) and kept_labels.max() == 8
    data = report(out)
    assert data["kept"] == 9
    assert data["discarded"] == {"bad-label": 1, "shape": 1, "paired-images-discarded": 1, "bad-idx": 1,
                                 "unsupported-format": 1}


def test_image_validate_checks_float_ranges(datum: tuple[Path, Path]) -> None:
    inp, out = datum
    images = np.zeros((4, 2, 2), dtype=np.float32)
    images[1, 0, 0] = np.nan
    images[2, 1, 1] = 2.0
    idx_pair(inp, "x", images, np.zeros(4, dtype=np.uint8))
    image_validate.main(["--max", "1"])
    kept, _ = load_dataset(out)
    assert kept.shape[0] == 2 and report(out)["discarded"] == {"out-of-range": 2}


def test_report_merge_adds_counts_and_concatenates_lists() -> None:
    merged = pfs.merge_reports({"kept": 1, "discarded": {"a": 1}, "files": [1]},
                               {"kept": 2, "discarded": {"a": 1, "b": 1}, "files": [2]})
    assert merged == {"kept": 3, "discarded": {"a": 2, "b": 1}, "files": [1, 2]}
