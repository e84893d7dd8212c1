"""Model Evaluation for the Fashion-MNIST classifier: accuracy and macro F1 on held-out images.

The platform calls `evaluate(model_dir, data_dir)` with an unpacked ModelVersion package (or a
bare checkpoint folder) and the DataPipeline's test output (an IDX images/labels pair such as
`test-images-idx3-ubyte` + `test-labels-idx1-ubyte`; in a folder holding the official files the
`t10k-` pair is used). Labels and predictions come back as class names.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by file path: make the sibling module importable
    sys.path.insert(0, _HERE)

from fashion_model import load_idx_dataset, load_model, macro_f1  # noqa: E402


def evaluate(model_dir: str, data_dir: str) -> dict[str, Any]:
    model = load_model(model_dir)
    images, labels = load_idx_dataset(data_dir, prefer=("test", "t10k"))
    predicted = model.predict_ids(images)
    names = model.class_names
    return {
        "metrics": {
            "accuracy": float((predicted == labels).mean()),
            "macro_f1": macro_f1(labels, predicted),
        },
        "labels": [names[i] for i in labels],
        "predictions": [names[i] for i in predicted],
        "class_names": names,
    }


if __name__ == "__main__":
    import json

    if len(sys.argv) != 3:
        sys.exit("usage: python evaluate.py MODEL_DIR DATA_DIR")
    print(json.dumps(evaluate(sys.argv[1], sys.argv[2])["metrics"], indent=2))
