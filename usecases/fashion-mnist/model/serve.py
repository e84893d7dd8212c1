"""The Fashion-MNIST predictor a Deployment serves: a 28x28 grey image in, a class name out.

The platform (or Seldon's Python wrapper) creates `FashionPredictor()`, calls
`load(artifact_dir)` with the unpacked ModelVersion package, then `predict(X)` per request, where
X is a list of images: 28x28 nested lists (or 784 flat values) of pixels 0..255.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by file path: make the sibling module importable
    sys.path.insert(0, _HERE)

from fashion_model import LoadedModel, load_model  # noqa: E402


class FashionPredictor:
    # What the serving wrapper checks requests against: rows of 28x28 pixels (784 flat also fit).
    input_type = "tensor"
    input_shape = (28, 28)

    def __init__(self) -> None:
        self._model: LoadedModel | None = None
        self.class_names: list[str] = []

    def load(self, artifact_dir: str) -> None:
        self._model = load_model(artifact_dir)
        self.class_names = list(self._model.class_names)

    def _require(self) -> LoadedModel:
        if self._model is None:
            raise RuntimeError("FashionPredictor.load(artifact_dir) must be called before predict")
        return self._model

    @property
    def model(self) -> Any:
        """The Keras model."""
        return self._require().model

    @staticmethod
    def _images(X: Any) -> np.ndarray:
        x = np.asarray(X, dtype=np.float32)
        if x.size == 0:
            return np.zeros((0, 28, 28), np.float32)
        if x.ndim == 2 and x.shape == (28, 28):  # a single image instead of a list of them
            x = x[None]
        if x.ndim == 4 and x.shape[-1] == 1:  # (N, 28, 28, 1)
            x = x[..., 0]
        if not ((x.ndim == 3 and x.shape[1:] == (28, 28)) or (x.ndim == 2 and x.shape[1] == 784)):
            raise ValueError(f"expected a list of 28x28 images (or of 784 pixels), got shape {x.shape}")
        if x.min() < 0 or x.max() > 255:
            raise ValueError("pixel values must lie in 0..255")
        return x

    def predict(self, X: Any, features_names: Any = None) -> list[str]:
        x = self._images(X)
        return self._require().predict(x) if len(x) else []

    def predict_proba(self, X: Any) -> list[list[float]]:
        """Class probabilities in `class_names` order."""
        x = self._images(X)
        if not len(x):
            return []
        logits = self._require().logits(x)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).tolist()
