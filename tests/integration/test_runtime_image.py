"""The user-container side of cdl (`cdl.runtime`) works alone, as the predictor, pipelines and
training images copy it (docker/*.Dockerfile): only `cdl/__init__.py` and `cdl/runtime/`, in the
seldon environment (old numpy, no operator libraries). It must import nothing from the operator."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SELDON_PY = ROOT / ".venvs" / "seldon" / "bin" / "python"

CHECK = """
import sys
import cdl.runtime.serving, cdl.runtime.package, cdl.runtime.pfs, cdl.runtime.trial, cdl.runtime.stopping.guard
from CdlPredictor import CdlPredictor
operator_side = sorted(m for m in sys.modules if m.startswith(("cdl.api", "cdl.engines", "cdl.stores",
                                                               "cdl.reconcile", "cdl.controller", "kopf")))
print("operator modules:", operator_side)
assert not operator_side
assert callable(CdlPredictor.predict) and callable(CdlPredictor.health_status)
"""


def test_runtime_runs_from_the_image_layout(tmp_path):
    if not SELDON_PY.exists():
        pytest.fail("the seldon environment is missing: run `make engines`")
    image = tmp_path / "microservice"
    (image / "cdl").mkdir(parents=True)
    shutil.copy(ROOT / "operator" / "cdl" / "__init__.py", image / "cdl" / "__init__.py")
    shutil.copytree(ROOT / "operator" / "cdl" / "runtime", image / "cdl" / "runtime")
    (image / "CdlPredictor.py").write_text("from cdl.runtime.serving import CdlPredictor  # noqa: F401\n")
    out = subprocess.run([str(SELDON_PY), "-c", CHECK], cwd=image, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(image), "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "operator modules: []" in out.stdout


def test_dockerfiles_copy_paths_that_exist():
    for dockerfile in sorted((ROOT / "docker").glob("*.Dockerfile")):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                sources = line.split()[1:-1]
                for source in sources:
                    assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"


def test_the_mlserver_runtime_runs_from_its_image_layout(tmp_path):
    """docker/mlserver.Dockerfile: cdl.runtime alone in MLServer's environment, the runtime importable."""
    mlserver_py = ROOT / ".venvs" / "mlserver" / "bin" / "python"
    if not mlserver_py.exists():
        pytest.fail("the mlserver environment is missing: run `make engines`")
    image = tmp_path / "mlserver"
    (image / "cdl").mkdir(parents=True)
    shutil.copy(ROOT / "operator" / "cdl" / "__init__.py", image / "cdl" / "__init__.py")
    shutil.copytree(ROOT / "operator" / "cdl" / "runtime", image / "cdl" / "runtime")
    check = CHECK.replace("from CdlPredictor import CdlPredictor",
                          "from cdl.runtime.mlserver_runtime import CdlRuntime\n"
                          "from cdl.runtime.serving import CdlPredictor\n"
                          "from mlserver import MLModel\nassert issubclass(CdlRuntime, MLModel)")
    out = subprocess.run([str(mlserver_py), "-c", check], cwd=image, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(image), "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "operator modules: []" in out.stdout
