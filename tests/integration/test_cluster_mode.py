"""`cdl up --engines cluster`: the cluster simulation beside the devcluster and the operator run the
way the Helm chart deploys it (its image, its rendered ConfigMap and Secret env, no checkout)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cdl.simulation.containers import namespaces_available

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "bin"
pytestmark = pytest.mark.slow


def cdl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cdl.cli.main", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)


@pytest.mark.skipif(not namespaces_available() or not shutil.which("nsenter"),
                    reason="the operator's pod needs a mount namespace (root or user namespaces) and nsenter")
def test_up_with_cluster_engines_runs_the_operator_as_the_chart_deploys_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "platform"
    env = {**os.environ, "PATH": f"{TOOLS}:{os.environ.get('PATH', '')}"}
    up = cdl("up", "--engines", "cluster", "--data-dir", str(data_dir), env=env)
    try:
        assert up.returncode == 0, up.stderr
        assert "cluster simulation started" in up.stderr and "with the cluster engines" in up.stderr
        log = (data_dir / "logs" / "operator.log").read_text()
        assert "engines={'DataPipeline': 'pachyderm', 'Experiment': 'determined', 'ModelVersion': 'determined', " \
               "'Deployment': 'seldon'" in log
        status = json.loads(cdl("status", "--data-dir", str(data_dir), "-o", "json", env=env).stdout)
        assert status["cluster simulation"]["pid"] and status["operator"]["pid"]
        pid = int((data_dir / "operator.pid").read_text())
        # The operator's pod: the ConfigMap's config at /etc/cdl, no checkout, the operator image's code.
        def inside(*argv: str) -> str:
            return subprocess.run(["nsenter", "-t", str(pid), "-m", *argv], capture_output=True, text=True).stdout

        config = inside("cat", "/etc/cdl/config.yaml")
        assert "determined:" in config and json.loads((data_dir / "simulation.json").read_text())[
            "determined_url"] in config
        assert "usecases" not in inside("ls", "-a", str(ROOT)) and "pyproject.toml" not in inside("ls", str(ROOT))
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"/images/operator/python/bin/" in cmdline[0] + cmdline[1]
        secret = json.loads(subprocess.run(
            [str(TOOLS / "kubectl"), "get", "secret", "cdl-determined", "-n", "cdl", "-o", "json"],
            capture_output=True, text=True, env={**env, "KUBECONFIG": str(data_dir / "kubeconfig")}).stdout)
        assert set(secret["data"]) == {"username", "password"}
        assert base64.b64decode(secret["data"]["password"]).decode() not in log  # by env only, never logged
    finally:
        down = cdl("down", "--data-dir", str(data_dir), env=env)
    assert down.returncode == 0 and "cluster simulation: stopped" in down.stderr
    for name in ("operator", "simulation"):
        assert not (data_dir / f"{name}.pid").exists()
