"""One prediction with a model package that is not deployed: `python -m cdl.runtime.predict_once
PACKAGE_DIR PREDICTOR IN.json OUT.json`. Loads the package's predictor (`module:Class`,
`load(package_dir)`, `predict(rows)`), predicts the rows in IN.json and writes
`{"predictions": [...]}` or `{"error": ..., "traceback": ...}` to OUT.json.

Run as a child process by the knowledge base (the dashboard's inference form for a version that
is not deployed yet): user code never runs in the operator. Standard library only here.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def main(argv: list[str]) -> int:
    package_dir, predictor, source, target = argv
    out: dict = {}
    try:
        from cdl.runtime.package import import_from_package

        rows = json.loads(Path(source).read_text())
        model = import_from_package(package_dir, predictor)()
        model.load(package_dir)
        predictions = model.predict(rows)
        out = {"predictions": predictions.tolist() if hasattr(predictions, "tolist") else list(predictions)}
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller, with its traceback
        out = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
    Path(target).write_text(json.dumps(out, default=str))
    return 0 if "predictions" in out else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
