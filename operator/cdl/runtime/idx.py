"""The IDX file format (MNIST, Fashion-MNIST): a magic number naming the element type and the
number of dimensions, big-endian sizes, then the array. Images and labels live in two files
paired by name: `train-images-idx3-ubyte` with `train-labels-idx1-ubyte`.

`load_dataset(directory)` is what training code uses on a data output: every images/labels pair
in it (gzipped or not), concatenated in name order.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
CODES = {dtype.newbyteorder(">") if dtype.itemsize > 1 else dtype: code for code, dtype in DTYPES.items()}
GZIP_MAGIC = b"\x1f\x8b"


class IdxError(ValueError):
    """The bytes are not a well-formed IDX file."""


def decode_idx(data: bytes) -> np.ndarray:
    """An IDX file's array (gzip-compressed input is accepted)."""
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise IdxError(f"bad gzip stream: {exc}") from exc
    if len(data) < 4:
        raise IdxError("shorter than the 4-byte magic number")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in DTYPES:
        raise IdxError(f"bad magic number 0x{data[:4].hex()} (expected 0x0000 + type byte + dims)")
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise IdxError(f"header names {ndim} dimensions but the file is {len(data)} bytes")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = data[4 + 4 * ndim:]
    if len(body) != expected:
        raise IdxError(f"shape {tuple(shape)} needs {expected} bytes of data, the file has {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def read_idx(path: Path | str) -> np.ndarray:
    return decode_idx(Path(path).read_bytes())


def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes for an array of one of the IDX element types."""
    dtype = array.dtype
    key = dtype.newbyteorder(">") if dtype.itemsize > 1 else dtype
    if key not in CODES:
        raise IdxError(f"IDX has no element type for {dtype}")
    header = struct.pack(">HBB", 0, CODES[key], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=key).tobytes()


def write_idx(path: Path | str, array: np.ndarray) -> None:
    Path(path).write_bytes(encode_idx(array))


def labels_name(images_name: str) -> str | None:
    """The labels file paired with an images file name, or None if the name is not an images file."""
    if "images" not in images_name:
        return None
    return images_name.replace("images", "labels").replace("idx3", "idx1")


def find_pairs(names: list[str]) -> list[tuple[str, str]]:
    """(images, labels) name pairs among the names, in name order; unpaired files are left out."""
    present = set(names)
    pairs = []
    for name in sorted(names):
        partner = labels_name(name)
        if partner and partner != name and partner in present:
            pairs.append((name, partner))
    return pairs


def load_dataset(directory: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """All images and labels of a data directory, pairs concatenated in name order."""
    root = Path(directory)
    files = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
    pairs = find_pairs(list(files))
    if not pairs:
        raise FileNotFoundError(f"no IDX images/labels pair under {root}")
    images = [read_idx(files[i]) for i, _ in pairs]
    labels = [read_idx(files[lab]) for _, lab in pairs]
    return np.concatenate(images), np.concatenate(labels)
