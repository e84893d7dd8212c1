"""The BBC news predictor the Deployment serves: an article's text in, its category out.

The platform (or Seldon's Python wrapper) creates `NewsPredictor()`, calls `load(artifact_dir)`
with the unpacked ModelVersion package, then `predict(X)` per request. Articles are stemmed and
counted over the training vocabulary exactly as during training (shared `news_model` code).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by file path: make the sibling module importable
    sys.path.insert(0, _HERE)

from news_model import LoadedModel, load_model  # noqa: E402


def _as_text(item: Any) -> str:
    """One request row as text: a string, or a one-element row (Seldon's ndarray [["text"]])."""
    if isinstance(item, bytes):
        return item.decode("utf-8", errors="replace")
    if isinstance(item, str):
        return item
    if isinstance(item, Iterable):
        parts = list(item)
        if len(parts) == 1:
            return _as_text(parts[0])
    raise TypeError(f"expected an article as a string, got {type(item).__name__}: {item!r:.80}")


class NewsPredictor:
    input_type = "text"  # one article per row: the serving wrapper checks requests against it

    def __init__(self) -> None:
        self._model: LoadedModel | None = None
        self.class_names: list[str] = []

    def load(self, artifact_dir: str) -> None:
        self._model = load_model(artifact_dir)
        self.class_names = list(self._model.class_names)

    @property
    def model(self) -> Any:
        """The torch module, for tools that compress or inspect it."""
        return self._require().net

    @model.setter
    def model(self, net: Any) -> None:
        self._require().net = net

    def _require(self) -> LoadedModel:
        if self._model is None:
            raise RuntimeError("NewsPredictor.load(artifact_dir) must be called before predict")
        return self._model

    def predict(self, X: Iterable[Any], features_names: Any = None) -> list[str]:
        texts = [_as_text(x) for x in X]
        return self._require().predict(texts) if texts else []

    def predict_proba(self, X: Iterable[Any]) -> list[list[float]]:
        """Class probabilities in `class_names` order (for drift and confidence monitoring)."""
        texts = [_as_text(x) for x in X]
        if not texts:
            return []
        return self._require().logits(texts).softmax(dim=1).tolist()
