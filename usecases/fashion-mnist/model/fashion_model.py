"""The Fashion-MNIST classifier without the training framework: IDX reading, pixel
normalisation, the Keras network and loading a trained checkpoint.

Training (`model_def.py`), evaluation (`evaluate.py`) and serving (`serve.py`) share this module,
so an image is normalised the same way everywhere. Keras is imported only where a model is built
or loaded; reading data needs numpy alone.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
IMAGE_SHAPE = (28, 28)

# Files the training callback writes into every checkpoint, next to Determined's weights file.
MODEL_FILE = "model.keras"  # architecture + weights: what serving loads
WEIGHTS_FILE = "model_checkpoint.weights.h5"  # Determined's resume file (Keras 3 naming)
CLASS_NAMES_FILE = "class_names.json"
MODEL_CONFIG_FILE = "model_config.json"

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


# --------------------------------------------------------------------------- data


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (gzipped or not) as an array: magic (0, 0, type, ndim), big-endian sizes, data."""
    p = Path(path)
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _DTYPES:
        raise ValueError(f"{p} is not an IDX file")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_DTYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 1
    offset = 4 + 4 * ndim
    if len(raw) - offset != count * dtype.itemsize:
        raise ValueError(f"{p}: header says {dims} but the file holds {len(raw) - offset} bytes of data")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(dims)


def _labels_name(images_name: str) -> str | None:
    if "images" not in images_name:
        return None
    return images_name.replace("images", "labels").replace("idx3", "idx1")


def idx_pairs(data_dir: str | Path, prefer: Sequence[str] = ()) -> list[tuple[Path, Path]]:
    """(images, labels) IDX file pairs under `data_dir`, by name (`x-images-idx3-ubyte[.gz]` with
    `x-labels-idx1-ubyte[.gz]`). When some pair names start with one of `prefer` (e.g. "train"),
    only those are returned, so a folder holding both the train and t10k files gives the right one."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist")
    files = {p.relative_to(root).as_posix(): p for p in root.rglob("*")
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}
    pairs = []
    for name in sorted(files):
        partner = _labels_name(name)
        if partner and partner != name and partner in files:
            pairs.append((files[name], files[partner]))
    if not pairs:
        raise FileNotFoundError(f"no IDX images/labels pair (e.g. train-images-idx3-ubyte + "
                                f"train-labels-idx1-ubyte) under {root}")
    preferred = [pr for pr in pairs if pr[0].name.startswith(tuple(prefer))] if prefer else []
    return preferred or pairs


def load_idx_dataset(data_dir: str | Path, prefer: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """All images (N, 28, 28) uint8 and labels (N,) of the chosen pairs, concatenated."""
    images, labels = [], []
    for img_path, lab_path in idx_pairs(data_dir, prefer):
        x, y = read_idx(img_path), read_idx(lab_path)
        if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE or len(x) != len(y):
            raise ValueError(f"{img_path.name}: expected (N, 28, 28) images and N labels, got {x.shape} and {y.shape}")
        images.append(x)
        labels.append(y.astype(np.int64))
    return np.concatenate(images), np.concatenate(labels)


def normalize(images: Any) -> np.ndarray:
    """Pixels 0..255 to 0..1 float32, shape (N, 28, 28); a flat 784-vector per image is reshaped."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 2 and x.shape[1] == 784:
        x = x.reshape(-1, *IMAGE_SHAPE)
    if x.ndim == 2 and x.shape == IMAGE_SHAPE:
        x = x[None]
    if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"expected 28x28 images (or 784 pixels each), got shape {x.shape}")
    return x / 255.0


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Reproducible per-class split: (train indices, validation indices), each sorted."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * fraction)) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


# --------------------------------------------------------------------------- model


def build_model(hidden_size: int, num_classes: int = len(CLASS_NAMES)) -> Any:
    """Flatten, Dense(hidden, relu), Dense(classes) logits: the TensorFlow basic classification
    example the paper builds on."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    return keras.Sequential([
        keras.Input(shape=IMAGE_SHAPE),
        keras.layers.Flatten(),
        keras.layers.Dense(hidden_size, activation="relu"),
        keras.layers.Dense(num_classes),
    ])


def find_checkpoint_dir(model_dir: str | Path) -> Path:
    """The checkpoint folder inside an unpacked ModelVersion package (`checkpoint/`), or
    `model_dir` itself when it is a bare checkpoint."""
    base = Path(model_dir)
    for cand in (base / "checkpoint", base):
        if (cand / MODEL_FILE).is_file() or (cand / WEIGHTS_FILE).is_file():
            return cand
    raise FileNotFoundError(f"no {MODEL_FILE} or {WEIGHTS_FILE} in {base} or {base / 'checkpoint'}")


def write_assets(ckpt_dir: str | Path, class_names: list[str], config: dict[str, Any]) -> None:
    d = Path(ckpt_dir)
    (d / CLASS_NAMES_FILE).write_text(json.dumps(class_names))
    (d / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=2))


class LoadedModel:
    """A trained classifier and its class names."""

    def __init__(self, model: Any, class_names: list[str]) -> None:
        self.model = model
        self.class_names = class_names

    def logits(self, images: Any, batch_size: int = 512) -> np.ndarray:
        x = normalize(images)
        if len(x) == 0:
            return np.zeros((0, len(self.class_names)), np.float32)
        return np.asarray(self.model.predict(x, batch_size=batch_size, verbose=0))

    def predict_ids(self, images: Any) -> np.ndarray:
        return self.logits(images).argmax(axis=1)

    def predict(self, images: Any) -> list[str]:
        return [self.class_names[i] for i in self.predict_ids(images)]


def load_model(model_dir: str | Path) -> LoadedModel:
    """The full saved model (`model.keras`), else the network rebuilt from `model_config.json`
    with Determined's weights file."""
    ckpt = find_checkpoint_dir(model_dir)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    names_file = ckpt / CLASS_NAMES_FILE
    class_names = json.loads(names_file.read_text()) if names_file.is_file() else list(CLASS_NAMES)
    if (ckpt / MODEL_FILE).is_file():
        model = keras.saving.load_model(ckpt / MODEL_FILE, compile=False)
    else:
        config = json.loads((ckpt / MODEL_CONFIG_FILE).read_text())
        model = build_model(int(config["hidden_size"]), int(config.get("num_classes", len(class_names))))
        model.load_weights(ckpt / WEIGHTS_FILE)
    return LoadedModel(model, class_names)


def macro_f1(labels: Sequence[Any], predictions: Sequence[Any]) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    y, p = np.asarray(labels), np.asarray(predictions)
    scores = []
    for c in np.union1d(y, p):
        tp = int(np.sum((y == c) & (p == c)))
        fp = int(np.sum((y != c) & (p == c)))
        fn = int(np.sum((y == c) & (p != c)))
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores)) if scores else 0.0
