"""The machine-faults use case through the cluster simulation (`cdl up --engines cluster`), with
the same manifests and model code as on the embedded platform: `cdl push` delivers the code, then
`kubectl apply`; pachd splits the CSV, the Determined master runs the PyTorchTrial through
Determined's harness, evaluation runs as a Kubernetes Job, Seldon serves the predictor."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

pytest.importorskip("cdl.simulation", reason="the cluster simulation (issue 15b) is not on this branch")

from tests.e2e.test_cluster_simulation_e2e import cdl, simulated_cluster, wait_phase  # noqa: E402, F401
from tests.e2e.test_cluster_simulation_e2e import kubectl as sim_kubectl  # noqa: E402
from tests.e2e.test_machine_faults_e2e import COMMIT, USECASE  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_machine_faults_from_cdl_push_and_kubectl_apply_to_a_served_prediction_on_the_simulated_cluster(
        simulated_cluster: tuple[Path, dict[str, str]], tmp_path: Path) -> None:  # noqa: F811
    data_dir, env = simulated_cluster
    logs = data_dir / "logs"
    data = tmp_path / "sensor-log"
    subprocess.run([sys.executable, str(USECASE / "data" / "generate.py"), "--out", str(data), "--per-class", "60",
                    "--seed", "3"], check=True, capture_output=True)
    source = tmp_path / "manifests"
    source.mkdir()
    for path in sorted((USECASE / "manifests").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc["kind"] == "DataPipeline":
            doc["spec"]["source"]["uri"] = data.as_uri()  # where this test generated the sensor log
        (source / path.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    filled = tmp_path / "filled"
    cdl("push", str(USECASE / "model"), "-f", str(source), "-o", str(filled), "--artifacts",
        (data_dir / "artifacts").as_uri(), env={**env, "CI_COMMIT_SHA": COMMIT})
    namespace = "faults-sim"
    assert sim_kubectl(env, "create", "namespace", namespace).returncode == 0
    out = sim_kubectl(env, "apply", "-n", namespace, "-f", str(filled))
    assert out.returncode == 0, out.stderr

    dpl = wait_phase(env, namespace, "dpl/machine-faults", "Ready", 300, logs)
    exp = wait_phase(env, namespace, "exp/machine-faults-search", "Completed", 900, logs)
    mv = wait_phase(env, namespace, "mv/fault-classifier-v1", "Ready", 600, logs)
    dep = wait_phase(env, namespace, "mdep/fault-classifier", "Available", 600, logs)

    assert exp["data"]["commit"] == dpl["outputs"]["train"]["commit"]
    assert exp["trials"]["total"] == 2 and exp["bestMetric"] >= 0.8
    assert mv["evaluation"]["passed"] is True and mv["evaluation"]["metrics"]["accuracy"] >= 0.8
    assert mv["lineage"]["code"]["gitCommit"] == COMMIT
    rows = [[84.0, 2.3, 5.5, 1490.0], [66.0, 7.0, 6.1, 1415.0], [61.0, 3.4, 3.6, 1505.0]]
    body = json.dumps({"data": {"ndarray": rows}}).encode()
    request = urllib.request.Request(dep["url"], data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        answer = json.loads(resp.read())
    assert answer["data"]["ndarray"] == ["overheating", "bearing_wear", "cavitation"]
