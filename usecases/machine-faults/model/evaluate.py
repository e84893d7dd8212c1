"""Model Evaluation: accuracy on the DataPipeline's test output.

The platform calls `evaluate(model_dir, data_dir)` with the unpacked ModelVersion package and the
test rows; labels and predictions come back too, for the report's confusion matrix.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
from faults_model import load_model, read_table  # noqa: E402


def evaluate(model_dir: str, data_dir: str) -> dict[str, Any]:
    model = load_model(model_dir)
    table = read_table(data_dir)
    if table.columns != model.columns:
        raise ValueError(f"test columns {table.columns} differ from the model's {model.columns}")
    predictions = model.predict(table.features)
    correct = sum(y == p for y, p in zip(table.labels, predictions, strict=True))
    return {"metrics": {"accuracy": correct / len(table.labels)}, "labels": table.labels,
            "predictions": predictions, "class_names": model.class_names}
