"""Generate an offline Fashion-MNIST-shaped sample: IDX files of 28x28 grey images, 10 classes.

    python usecases/fashion-mnist/data/generate.py --out DIR --train 6000 --test 1000 --seed 7

Writes the four files of the official distribution under their official names,
`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz`,
`t10k-labels-idx1-ubyte.gz` (`--raw` writes them uncompressed, without `.gz`). Each image is a
silhouette of its class (T-shirt, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag,
ankle boot) with random size, position, brightness, texture and noise. The upper-body garments
share a torso and differ in sleeves, collar, zip and length, so, as in the real data, shirts,
pullovers, coats and T-shirts are the ones a model confuses. Bytes are identical for the same
arguments (gzip headers carry no time or name).
"""

from __future__ import annotations

import argparse
import gzip
import io
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
SIZE = 28
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_Y, _X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
Shape = Callable[[np.random.Generator], np.ndarray]


def _rect(y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
    return ((_Y >= y0) & (_Y < y1) & (_X >= x0) & (_X < x1)).astype(np.float32)


def _trapezoid(y0: float, y1: float, top: float, bottom: float, cx: float = 13.5) -> np.ndarray:
    """Rows y0..y1, half-width growing linearly from `top` to `bottom`."""
    t = np.clip((_Y - y0) / max(y1 - y0, 1.0), 0.0, 1.0)
    half = top + (bottom - top) * t
    return ((_Y >= y0) & (_Y < y1) & (np.abs(_X - cx) <= half)).astype(np.float32)


def _ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((((_Y - cy) / ry) ** 2 + ((_X - cx) / rx) ** 2) <= 1.0).astype(np.float32)


def _j(rng: np.random.Generator, value: float, spread: float = 1.0) -> float:
    return value + rng.uniform(-spread, spread)


def _torso(rng: np.random.Generator, top: float, bottom: float, sleeve_end: float, sleeve_width: float) -> np.ndarray:
    half = _j(rng, 6.0, 0.8)
    body = _trapezoid(top, bottom, half, half + rng.uniform(-0.5, 1.0))
    left = _rect(top + 0.5, sleeve_end, 13.5 - half - sleeve_width, 13.5 - half + 0.5)
    right = _rect(top + 0.5, sleeve_end, 13.5 + half - 0.5, 13.5 + half + sleeve_width)
    neck = _ellipse(top, 13.5, _j(rng, 1.8, 0.5), _j(rng, 2.5, 0.5))
    return np.clip(body + left + right, 0, 1) * (1 - neck)


def t_shirt(rng: np.random.Generator) -> np.ndarray:
    return _torso(rng, _j(rng, 5), _j(rng, 24), sleeve_end=_j(rng, 12.5, 3.5), sleeve_width=_j(rng, 3.5, 0.7))


def trouser(rng: np.random.Generator) -> np.ndarray:
    gap = _j(rng, 1.2, 0.6)
    top, bottom, half = _j(rng, 3), _j(rng, 26), _j(rng, 5.0, 0.8)
    waist = _rect(top, top + 4, 13.5 - half, 13.5 + half)
    legs = _rect(top + 3, bottom, 13.5 - half - 0.5, 13.5 - gap) + _rect(top + 3, bottom, 13.5 + gap, 13.5 + half + 0.5)
    return np.clip(waist + legs, 0, 1)


def pullover(rng: np.random.Generator) -> np.ndarray:
    img = _torso(rng, _j(rng, 5), _j(rng, 23), sleeve_end=_j(rng, 21, 2.0), sleeve_width=_j(rng, 3.0, 0.6))
    band = _rect(21, 23.5, 7, 21) * rng.uniform(0.0, 0.35)  # ribbed hem, sometimes darker
    return np.clip(img - band, 0, 1)


def dress(rng: np.random.Generator) -> np.ndarray:
    top, waist, bottom = _j(rng, 3), _j(rng, 11, 1.5), _j(rng, 26)
    upper = _trapezoid(top, waist, _j(rng, 3.5, 0.8), _j(rng, 3.0, 0.6))
    skirt = _trapezoid(waist, bottom, _j(rng, 3.0, 0.6), _j(rng, 9.0, 2.0))
    return np.clip(upper + skirt, 0, 1)


def coat(rng: np.random.Generator) -> np.ndarray:
    img = _torso(rng, _j(rng, 3.5), _j(rng, 26), sleeve_end=_j(rng, 23, 1.5), sleeve_width=_j(rng, 3.3, 0.6))
    zip_line = _rect(6, 26, 13.2, 14.0) * rng.uniform(0.1, 0.8)
    collar = (_trapezoid(3, 7, 4.5, 2.0) - _trapezoid(3, 7, 2.5, 0.5)).clip(0, 1) * rng.uniform(0.0, 0.4)
    return np.clip(img - zip_line + collar, 0, 1)


def shirt(rng: np.random.Generator) -> np.ndarray:
    sleeves = _j(rng, 18, 5.0)  # long or rolled-up sleeves: the confusable class
    img = _torso(rng, _j(rng, 5), _j(rng, 24.5), sleeve_end=sleeves, sleeve_width=_j(rng, 3.0, 0.6))
    buttons = sum(_ellipse(y, 13.5, 0.6, 0.6) for y in np.arange(8, 23, rng.uniform(3.0, 4.5)))
    checks = 0.15 * (((_Y // 3 + _X // 3) % 2) if rng.random() < 0.35 else 0)
    collar = _trapezoid(4, 7.5, 3.5, 1.0) * 0.35
    return np.clip(img * (1 - checks) - rng.uniform(0.1, 0.6) * buttons * img + collar, 0, 1)


def sandal(rng: np.random.Generator) -> np.ndarray:
    sole_y = _j(rng, 22.5)
    sole = _rect(sole_y, sole_y + 2.0, _j(rng, 3), _j(rng, 25))
    straps = sum(_rect(y, y + 1.0, _j(rng, 5, 2), _j(rng, 22, 2))
                 for y in np.arange(_j(rng, 13, 1.5), sole_y - 1, rng.uniform(2.5, 3.5)))
    heel = _rect(sole_y - _j(rng, 5, 2), sole_y, _j(rng, 3), _j(rng, 6))
    return np.clip(sole + straps + heel * 0.8, 0, 1)


def sneaker(rng: np.random.Generator) -> np.ndarray:
    sole_y = _j(rng, 22)
    upper = _trapezoid(_j(rng, 13, 1.5), sole_y, _j(rng, 5.5, 1.0), _j(rng, 11, 0.8), cx=_j(rng, 13.5))
    upper *= (_X < 13.5 + (sole_y - _Y) * 0.9 + 4).astype(np.float32)  # sloping toe
    sole = _rect(sole_y, sole_y + 2.5, 2.5, 25.5)
    laces = sum(_rect(y, y + 0.8, 12, 17) for y in np.arange(15, sole_y - 1, 2.0)) * 0.4
    return np.clip(upper + sole - laces, 0, 1)


def bag(rng: np.random.Generator) -> np.ndarray:
    top, bottom = _j(rng, 10, 1.5), _j(rng, 25)
    half = _j(rng, 10, 1.5)
    body = _rect(top, bottom, 13.5 - half, 13.5 + half)
    ry, rx = _j(rng, 5.5, 1.5), _j(rng, 5, 1.5)
    handle = _ellipse(top, 13.5, ry, rx) - _ellipse(top, 13.5, ry - 1.3, rx - 1.3)
    handle *= (_Y <= top).astype(np.float32)
    flap = _rect(top, top + rng.uniform(2, 6), 13.5 - half, 13.5 + half) * 0.2
    return np.clip(body + handle.clip(0, 1) - flap, 0, 1)


def ankle_boot(rng: np.random.Generator) -> np.ndarray:
    shaft_top, sole_y = _j(rng, 4, 1.5), _j(rng, 23)
    x0 = _j(rng, 6, 1.0)
    shaft = _rect(shaft_top, sole_y, x0, x0 + _j(rng, 9, 1.0))
    foot = _trapezoid(_j(rng, 15, 1.5), sole_y, _j(rng, 6, 1.0), _j(rng, 10.5, 0.8), cx=_j(rng, 14.5))
    sole = _rect(sole_y, sole_y + 2.5, x0 - 1, _j(rng, 25.5, 0.5))
    heel = _rect(sole_y - 1, sole_y + 2.5, x0 - 1, x0 + 3)
    return np.clip(shaft + foot + sole + heel, 0, 1)


SHAPES: tuple[Shape, ...] = (t_shirt, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle_boot)


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move the silhouette; what leaves the frame is cut off, nothing wraps around."""
    out = np.zeros_like(mask)
    ys, yd = (slice(0, SIZE - dy), slice(dy, SIZE)) if dy >= 0 else (slice(-dy, SIZE), slice(0, SIZE + dy))
    xs, xd = (slice(0, SIZE - dx), slice(dx, SIZE)) if dx >= 0 else (slice(-dx, SIZE), slice(0, SIZE + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def render(label: int, rng: np.random.Generator) -> np.ndarray:
    """One 28x28 uint8 image of class `label`."""
    mask = SHAPES[label](rng)
    dy, dx = (int(v) for v in rng.integers(-2, 3, size=2))
    mask = _shift(mask, dy, dx)
    if rng.random() < 0.5:  # soften edges like the real, downsampled photos
        padded = np.pad(mask, 1, mode="edge")
        mask = sum(padded[i : i + SIZE, j : j + SIZE] for i in range(3) for j in range(3)) / 9.0
    brightness = rng.uniform(90, 255)
    texture = 1.0 + 0.35 * rng.standard_normal((SIZE, SIZE))
    img = mask * brightness * texture + rng.normal(0.0, 10.0, (SIZE, SIZE)) * (mask > 0.05)
    return np.clip(img, 0, 255).astype(np.uint8)


def sample(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n` images with balanced labels in random order."""
    labels = np.resize(np.arange(10, dtype=np.uint8), n)
    rng.shuffle(labels)
    images = np.stack([render(int(lab), rng) for lab in labels]) if n else np.zeros((0, SIZE, SIZE), np.uint8)
    return images, labels


def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes of a uint8 array: magic (0, 0, 0x08, ndim), big-endian dimensions, data."""
    if array.dtype != np.uint8:
        raise ValueError("IDX writer here only writes unsigned bytes")
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write(path: Path, data: bytes, compress: bool) -> Path:
    if not compress:
        path.write_bytes(data)
        return path
    target = path.with_name(path.name + ".gz")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(data)
    target.write_bytes(buf.getvalue())
    return target


def generate(out: Path, train: int, test: int, seed: int, compress: bool = True) -> list[Path]:
    """Write the four IDX files; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for side, n in (("train", train), ("test", test)):
        images, labels = sample(n, rng)
        images_name, labels_name = FILES[side]
        written.append(write(out / images_name, encode_idx(images), compress))
        written.append(write(out / labels_name, encode_idx(labels), compress))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    parser.add_argument("--train", type=int, default=6000, help="training images")
    parser.add_argument("--test", type=int, default=1000, help="test (t10k) images")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--raw", action="store_true", help="write uncompressed IDX files (no .gz)")
    args = parser.parse_args(argv)
    paths = generate(args.out, args.train, args.test, args.seed, compress=not args.raw)
    print(f"wrote {args.train} training and {args.test} test images to {args.out}: "
          + ", ".join(p.name for p in paths))


if __name__ == "__main__":
    main()
