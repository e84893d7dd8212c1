"""Model Evaluation for the BBC news classifier: accuracy and macro F1 on held-out articles.

The platform calls `evaluate(model_dir, data_dir)` with an unpacked ModelVersion package (or a
bare checkpoint folder) and the DataPipeline's test output (`<label>/<file>.txt`). The labels and
predictions come back too, so the platform can draw a confusion matrix and keep a report.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by file path: make the sibling module importable
    sys.path.insert(0, _HERE)

from news_model import load_corpus, load_model, macro_f1  # noqa: E402


def evaluate(model_dir: str, data_dir: str) -> dict[str, Any]:
    """Score every article under `data_dir`; an article whose label the model never saw counts
    as an error (the model cannot predict it)."""
    model = load_model(model_dir)
    corpus = load_corpus(data_dir)
    predictions = model.predict(corpus.texts)
    correct = sum(1 for y, p in zip(corpus.labels, predictions, strict=True) if y == p)
    return {
        "metrics": {
            "accuracy": correct / len(corpus.labels),
            "macro_f1": macro_f1(corpus.labels, predictions),
        },
        "labels": corpus.labels,
        "predictions": predictions,
        "class_names": model.class_names,
    }


if __name__ == "__main__":
    import json

    if len(sys.argv) != 3:
        sys.exit("usage: python evaluate.py MODEL_DIR DATA_DIR")
    print(json.dumps(evaluate(sys.argv[1], sys.argv[2])["metrics"], indent=2))
