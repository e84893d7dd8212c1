"""The predictor a Deployment serves: one row of sensor readings in (temperature, vibration,
pressure, rpm), the pump's condition out."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
from faults_model import LoadedModel, load_model  # noqa: E402


class FaultPredictor:
    input_type = "tensor"
    input_shape = (4,)

    def __init__(self) -> None:
        self._model: LoadedModel | None = None
        self.class_names: list[str] = []

    def load(self, artifact_dir: str) -> None:
        self._model = load_model(artifact_dir)
        self.class_names = list(self._model.class_names)

    def predict(self, X: Any, features_names: Any = None) -> list[str]:
        if self._model is None:
            raise RuntimeError("FaultPredictor.load(artifact_dir) must be called before predict")
        rows = [[float(v) for v in row] for row in X]
        return self._model.predict(rows) if rows else []
