"""Trying a model version that is not deployed: its package's predictor answers one request in a
child process (the evaluation's isolation: own process group, no operator secrets, a deadline),
so a validator can send an input from the dashboard before anything is served."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cdl.errors import CdlError

PackageDir = Callable[[str, str], Path]  # (artifact uri, sha256) -> an unpacked package folder
TIMEOUT_SECONDS = 120.0


def rows_from_payload(payload: Any) -> list[Any]:
    """The rows of a Seldon payload ({"data": {"ndarray": [...]}}); a clear error otherwise."""
    rows = ((payload or {}).get("data") or {}).get("ndarray") if isinstance(payload, dict) else None
    if not isinstance(rows, list) or not rows:
        raise CdlError('body: expected {"data": {"ndarray": [row, ...]}} with at least one row')
    return rows


def predict_with_package(package_dir: Path, predictor: str, rows: list[Any],
                         timeout: float = TIMEOUT_SECONDS) -> list[Any]:
    """Predictions of the package's predictor for `rows`, computed in a child process."""
    from cdl.quality.evaluation import child_environment, run_child, tail

    with tempfile.TemporaryDirectory(prefix="cdl-try-") as tmp:
        source, target, log = Path(tmp) / "in.json", Path(tmp) / "out.json", Path(tmp) / "child.log"
        source.write_text(json.dumps(rows))
        code = run_child([sys.executable, "-m", "cdl.runtime.predict_once", str(package_dir), predictor, str(source),
                          str(target)], log, timeout, child_environment(), Path(tmp))
        result = json.loads(target.read_text()) if target.exists() else {}
        if code != 0 or "predictions" not in result:
            detail = result.get("traceback") or log.read_text(errors="replace")
            raise CdlError(f"the predictor {predictor} failed: {result.get('error') or f'exit {code}'}\n{tail(detail)}")
        return result["predictions"]
