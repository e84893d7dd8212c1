"""A use case the platform has never seen (usecases/machine-faults), taken the documented way:
its own CSV data in a DataPipeline with a row split, a Determined PyTorchTrial, an `evaluate`
function and a predictor class, the code delivered by `cdl push` as a bundle (as the GitLab job
does), then `kubectl apply` of the four manifests and a served prediction on the embedded
platform."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_bbc_e2e import phase, wait_phase
from tests.plugins.operator import wait_for

ROOT = Path(__file__).resolve().parents[2]
USECASE = ROOT / "usecases" / "machine-faults"
pytestmark = [pytest.mark.e2e, pytest.mark.slow]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def pushed_manifests(artifacts: Path, workdir: Path) -> tuple[list[dict], dict]:
    """`cdl push MODEL_DIR -f manifests/` with GitLab's variables, as the pipeline's job runs it:
    the manifests on stdout with the Experiment naming the uploaded bundle."""
    env = {**os.environ, "CDL_ARTIFACT_URL": artifacts.as_uri(), "CI_COMMIT_SHA": COMMIT,
           "CI_PROJECT_URL": "https://gitlab.example.com/plant/machine-faults"}
    done = subprocess.run([sys.executable, "-m", "cdl.cli.main", "push", str(USECASE / "model"),
                           "-f", str(USECASE / "manifests")], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    exp = next(d for d in docs if d["kind"] == "Experiment")
    return docs, exp["spec"]["model"]


def test_machine_faults_from_cdl_push_and_kubectl_apply_to_a_served_prediction(
        operator_runner, kubectl, namespace, tmp_path, postgres_url):
    data = tmp_path / "sensor-log"
    subprocess.run([sys.executable, str(USECASE / "data" / "generate.py"), "--out", str(data), "--per-class", "60",
                    "--seed", "3"], check=True, capture_output=True)
    state = tmp_path / "state"
    docs, model = pushed_manifests(state / "artifacts", tmp_path)
    bundle = model["bundle"]
    assert model["git"] == {"commit": COMMIT, "url": "https://gitlab.example.com/plant/machine-faults"}
    assert Path(bundle["uri"].removeprefix("file://")).is_file()
    for doc in docs:
        if doc["kind"] == "DataPipeline":
            doc["spec"]["source"]["uri"] = data.as_uri()  # where this test generated the sensor log
        if doc["kind"] == "Experiment":
            doc["spec"]["model"].pop("path")  # only the bundle: nothing read from the checkout
    applied = tmp_path / "machine-faults.yaml"
    applied.write_text(yaml.safe_dump_all(docs))

    with operator_runner(state, poll_seconds=1.0, database_url=postgres_url):  # Scoring Data
        out = kubectl("apply", "-n", namespace, "-f", str(applied))
        assert out.returncode == 0, out.stderr
        dpl = wait_phase(kubectl, namespace, "dpl/machine-faults", "Ready", 300)
        exp = wait_phase(kubectl, namespace, "exp/machine-faults-search", "Completed", 600)
        mv = wait_phase(kubectl, namespace, "mv/fault-classifier-v1", "Ready", 300)
        dep = wait_phase(kubectl, namespace, "mdep/fault-classifier", "Available", 600)

        # 240 rows split 75/25 by row, stratified by the label column: 15 test rows per condition.
        assert dpl["outputs"]["train"]["files"] == 1 and dpl["outputs"]["test"]["files"] == 1
        assert exp["data"]["commit"] == dpl["outputs"]["train"]["commit"]
        assert exp["trials"]["total"] == 2 and exp["bestMetric"] >= 0.8
        assert mv["evaluation"]["passed"] is True and mv["evaluation"]["metrics"]["accuracy"] >= 0.8
        code = mv["lineage"]["code"]
        assert code["bundleSha256"] == bundle["sha256"] and code["gitCommit"] == COMMIT

        rows = [[84.0, 2.3, 5.5, 1490.0], [66.0, 7.0, 6.1, 1415.0], [61.0, 3.4, 3.6, 1505.0]]
        body = json.dumps({"data": {"ndarray": rows}}).encode()
        request = urllib.request.Request(dep["url"], data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            answer = json.loads(resp.read())
        assert answer["data"]["ndarray"] == ["overheating", "bearing_wear", "cavitation"]
        st = wait_for(lambda: (s := phase(kubectl, namespace, "mdep/fault-classifier")).get("monitoring", {}).get(
            "requests", 0) >= 1 and s, timeout=60, what="monitoring figures")
        assert st["monitoring"]["errors"] == 0
