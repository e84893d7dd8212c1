"""Shareable model packages: `cdl export` writes a self-contained folder that loads anywhere
with `pip install -r requirements.txt` and the predictor class; `cdl import` checks one and runs
it. No cdl installation is needed on the receiving side: `load_model.py` uses only the standard
library and the package's own requirements.

    NAME-vN/
      model/ checkpoint/ requirements.txt cdl-package.json   the registered package, unchanged
      report.md report.json                                 the evaluation report
      MODEL_CARD.md                                          the model card, readable
      load_model.py                                          load + predict, standard library only
      README.md                                              how to use it
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cdl.errors import CdlError

# The loader shipped in every export: standard library only, so a fresh environment with the
# package's requirements runs it.
LOAD_MODEL = '''"""Load this exported cdl model and predict: python load_model.py '[[...], ...]'

Needs only `pip install -r requirements.txt` (no cdl). As a library:
    from load_model import load; model = load(); model.predict([...])
"""

import importlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def load(predictor=None):
    """The package's predictor (`module:Class` in model/), constructed and loaded."""
    manifest = json.loads((ROOT / "cdl-package.json").read_text())
    entry = predictor or (manifest.get("entrypoints") or {}).get("predictor")
    if not entry or ":" not in entry:
        raise SystemExit("no predictor: pass module:Class (the manifest names none)")
    module_name, _, class_name = entry.partition(":")
    sys.path.insert(0, str(ROOT / "model"))
    model = getattr(importlib.import_module(module_name), class_name)()
    model.load(str(ROOT))
    return model


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    rows = json.loads(sys.argv[1])
    print(json.dumps(load(sys.argv[2] if len(sys.argv) > 2 else None).predict(rows)))
'''


def model_card_markdown(report: dict[str, Any]) -> str:
    """The report's model card as Markdown (sections of key: value lines)."""
    card = report.get("modelCard") or {}
    lines = [f"# Model card: {report.get('title') or report.get('model')}", ""]
    for section, body in card.items():
        lines += [f"## {section[0].upper()}{section[1:]}", ""]
        if isinstance(body, dict):
            lines += [f"- {k}: {json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in body.items()]
        elif isinstance(body, list):
            lines += [f"- {json.dumps(v) if isinstance(v, dict | list) else v}" for v in body]
        else:
            lines.append(str(body))
        lines.append("")
    return "\n".join(lines)


def write_export(dest: Path, package_archive: Path, version: dict[str, Any], report_md: str | None) -> Path:
    """Unpack the registered package into dest/NAME-vN and add report, card, loader, README."""
    from cdl.runtime.package import load_package, unpack

    folder = dest / f"{version['model']}-v{version['version']}"
    if folder.exists():
        raise CdlError(f"{folder} exists; remove it or export elsewhere (--output)")
    unpack(package_archive, folder)
    info = load_package(folder)
    bad = info.verify()
    if bad:
        raise CdlError(f"the registered package does not match its manifest: {', '.join(bad)}")
    report = version.get("report") or {}
    if report:
        (folder / "report.json").write_text(json.dumps(report, indent=2, default=str))
        (folder / "MODEL_CARD.md").write_text(model_card_markdown(report))
    if report_md:
        (folder / "report.md").write_text(report_md)
    (folder / "load_model.py").write_text(LOAD_MODEL)
    predictor = info.entrypoints.get("predictor", "module:Class")
    (folder / "README.md").write_text(
        f"# {version['model']} version {version['version']}\n\n"
        f"Exported from cdl (ModelVersion {version.get('namespace')}/{version.get('resource')}, stage "
        f"{version.get('stage')}, sha256 {version.get('artifact_sha256')}).\n\n"
        "```sh\npython -m venv .venv && .venv/bin/pip install -r requirements.txt\n"
        ".venv/bin/python load_model.py '[[...]]'   # or: cdl import . --predict '[[...]]'\n```\n\n"
        f"The predictor is `{predictor}` in `model/`: `Class()`, `load(this folder)`, `predict(rows)`.\n"
        "See report.md and MODEL_CARD.md for what it was trained on and how it was evaluated.\n")
    return folder


def check_import(path: Path) -> Any:
    """An exported folder (or package archive) verified against its manifest; its PackageInfo."""
    import tempfile

    from cdl.runtime.package import PackageError, load_package, unpack

    if path.is_file():
        path = unpack(path, Path(tempfile.mkdtemp(prefix="cdl-import-")) / "package")
    try:
        info = load_package(path)
    except PackageError as exc:
        raise CdlError(f"{path}: not a cdl model package: {exc}") from None
    bad = info.verify()
    if bad:
        raise CdlError(f"{path}: files differ from the manifest: {', '.join(bad)}")
    return info
