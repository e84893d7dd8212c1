"""Every `cdl` command ends with a one-line error and exit code 3 when something unexpected goes
wrong (here: the API server is not there), never with a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEAD_KUBECONFIG = {
    "apiVersion": "v1", "kind": "Config", "current-context": "c",
    "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
    "users": [{"name": "c", "user": {"token": "x"}}],
    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "c"}}],
}


@pytest.mark.parametrize("args", [
    ["get", "deployments"],
    ["report", "news-classifier-v1"],
    ["lineage", "news-classifier-v1"],
    ["monitor", "news-classifier"],
    ["predict", "news-classifier", "--data", '["x"]'],
    ["experiments", "compare", "bbc-asha"],
])
def test_an_unreachable_api_server_is_a_one_line_error(tmp_path: Path, args: list[str]) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(DEAD_KUBECONFIG))
    out = subprocess.run([sys.executable, "-m", "cdl.cli.main", *args], capture_output=True, text=True, timeout=120,
                         env={"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin"})
    assert "Traceback" not in out.stderr + out.stdout
    assert out.returncode == 3, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "cdl up" in lines[0], out.stderr
