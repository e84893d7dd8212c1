"""Sharing: `cdl export` writes a self-contained package (through the knowledge base, from any
directory, with a kubeconfig) that loads in a fresh virtual environment holding only its
requirements; `cdl import` verifies it and predicts with it."""

from __future__ import annotations

import json
import os
import subprocess
import venv

import numpy as np
import pytest
from typer.testing import CliRunner

from cdl.cli.main import app
from tests.fixtures.serving.build import NUMPY_PREDICTOR, build_package

pytestmark = pytest.mark.slow
ROWS = [[2.5, -1.0, 0.3, 1.2], [-3.0, 2.0, 0.0, -1.0]]


def expected(package_dir, rows):
    names = json.loads((package_dir / "checkpoint" / "class_names.json").read_text())
    with np.load(package_dir / "checkpoint" / "weights.npz") as w:
        return [names[i] for i in (np.asarray(rows, dtype=np.float32) @ w["weight"].T + w["bias"]).argmax(1)]


@pytest.fixture
def registered_blob(kb_records, tmp_path):
    """A registered, evaluated version (numpy predictor, requirements `numpy<2` only)."""
    from cdl.quality.reports import render_report

    pkg = build_package(tmp_path / "build", "blob", 1, torch_checkpoint=False, requirements="numpy<2\n",
                        predictor=NUMPY_PREDICTOR)
    stored = kb_records.artifacts.put_file("models/blob/1/package.tar.gz", pkg.archive)
    db = kb_records.database
    db.record_model_version("blob", 1, namespace="ml", resource="blob-v1", stage="staging",
                            artifact={"uri": stored.uri, "sha256": stored.sha256, "bytes": stored.bytes,
                                      "format": "cdl-package/v1+tar.gz"}, lineage={"trainLabels": pkg.train_labels})
    markdown, report = render_report({"model": "blob", "version": 1, "metrics": {"accuracy": 0.97}, "passed": True,
                                      "lineage": {"trainLabels": pkg.train_labels},
                                      "confusion": [[5, 0, 0], [0, 5, 1], [0, 0, 5]]})
    md = kb_records.artifacts.put_bytes("reports/blob/1/report.md", markdown.encode())
    kb_records.artifacts.put_bytes("reports/blob/1/report.json", json.dumps(report).encode())
    db.record_evaluation("blob", 1, metrics={"accuracy": 0.97}, gates=[], passed=True, report_uri=md.uri)
    return pkg


def test_export_loads_in_a_fresh_venv_and_imports(devcluster, kb_service, registered_blob, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    runner = CliRunner()
    result = runner.invoke(app, ["export", "blob-v1", "-n", "ml", "-o", str(tmp_path / "exports"),
                                 "--kubeconfig", str(devcluster.kubeconfig), "--kb-service", kb_service])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "exports" / "blob-v1"
    for name in ("model/serve.py", "checkpoint/weights.npz", "requirements.txt", "cdl-package.json", "report.md",
                 "report.json", "MODEL_CARD.md", "load_model.py", "README.md"):
        assert (folder / name).is_file(), name
    assert "Confusion" in (folder / "report.md").read_text() and "## ModelDetails" in (folder / "MODEL_CARD.md").read_text()

    # A fresh environment with only the package's requirements (pip's configured index; no cdl).
    env_dir = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(folder / "requirements.txt")],
                             capture_output=True, text=True, timeout=300, env=clean)
    assert install.returncode == 0, install.stderr
    no_cdl = subprocess.run([str(python), "-c", "import cdl"], capture_output=True, text=True, env=clean,
                            cwd=tmp_path)
    assert no_cdl.returncode != 0  # nothing of the platform is there
    out = subprocess.run([str(python), "load_model.py", json.dumps(ROWS)], capture_output=True, text=True,
                         timeout=120, env=clean, cwd=folder)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == expected(registered_blob.dir, ROWS)

    # `cdl import` verifies the folder and predicts with it here.
    result = runner.invoke(app, ["import", str(folder), "--predict", json.dumps(ROWS)])
    assert result.exit_code == 0, result.output
    assert "blob v1" in result.output and json.loads(result.output[result.output.index("["):]) == expected(
        registered_blob.dir, ROWS)
    # a changed weight file is caught, by name
    (folder / "checkpoint" / "weights.npz").write_bytes(b"tampered")
    result = runner.invoke(app, ["import", str(folder)])
    assert result.exit_code == 1 and "checkpoint/weights.npz" in result.output
