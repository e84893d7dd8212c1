"""Fashion-MNIST end to end through kubectl on the embedded platform, with the real local
engines: IDX files ingested, validated and split, a Keras model trained through Determined's
Keras callback, evaluated with the 0.7 gate, promoted, and served by stage (the Deployment names
`model: {name, stage: production}`) from the seldon-core microservice."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_bbc_e2e import phase, wait_phase
from tests.plugins.operator import wait_for

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "usecases" / "fashion-mnist" / "manifests"
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def read_idx_images(path: Path):
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    _, count, rows, cols = struct.unpack(">IIII", data[:16])
    return count, rows, cols, data[16:]


def test_fashion_mnist_from_kubectl_apply_to_a_served_prediction(operator_runner, kubectl, namespace, tmp_path,
                                                                 postgres_url):
    source = tmp_path / "fmnist"
    subprocess.run([sys.executable, str(ROOT / "usecases/fashion-mnist/data/generate.py"), "--out", str(source),
                    "--train", "1500", "--test", "300", "--seed", "7"], check=True, capture_output=True)
    docs = []
    for name in ("datapipeline.yaml", "experiment.yaml", "modelversion.yaml", "deployment.yaml"):
        doc = yaml.safe_load((MANIFESTS / name).read_text())
        if doc["kind"] == "DataPipeline":
            doc["spec"]["source"]["uri"] = source.as_uri()
        if doc["kind"] == "Experiment":
            doc["spec"]["model"]["path"] = str(ROOT / doc["spec"]["model"]["path"])
            doc["spec"]["searcher"].update(maxTrials=1, maxLength={"epochs": 3})
        docs.append(doc)
    applied = tmp_path / "fmnist.yaml"
    applied.write_text(yaml.safe_dump_all(docs))
    with operator_runner(tmp_path / "state", poll_seconds=1.0, database_url=postgres_url):
        out = kubectl("apply", "-n", namespace, "-f", str(applied))
        assert out.returncode == 0, out.stderr
        data = wait_phase(kubectl, namespace, "dpl/fashion-mnist", "Ready", 300)
        exp = wait_phase(kubectl, namespace, "exp/fmnist-random", "Completed", 900)
        mv = wait_phase(kubectl, namespace, "mv/fashion-classifier-v1", "Ready", 300)
        dep = wait_phase(kubectl, namespace, "mdep/fashion-classifier", "Available", 600)

        mv = phase(kubectl, namespace, "mv/fashion-classifier-v1")  # promoted by the time it serves
        assert data["outputs"]["train"]["commit"] == exp["data"]["commit"]
        assert mv["stage"] == "production" and mv["evaluation"]["passed"] is True
        assert mv["evaluation"]["metrics"]["accuracy"] >= 0.7
        assert dep["modelVersion"] == "fashion-classifier-v1"

        # A test image of the generated sample, sent as 28x28 pixels, comes back as its class.
        count, rows, cols, pixels = read_idx_images(source / "t10k-images-idx3-ubyte.gz")
        labels = gzip.decompress((source / "t10k-labels-idx1-ubyte.gz").read_bytes())[8:]
        names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]
        correct = 0
        for i in range(20):
            image = [list(pixels[(i * rows + r) * cols:(i * rows + r + 1) * cols]) for r in range(rows)]
            body = json.dumps({"data": {"ndarray": [image]}}).encode()
            request = urllib.request.Request(dep["url"], data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as resp:
                answer = json.loads(resp.read())["data"]["ndarray"][0]
            assert answer in names
            correct += answer == names[labels[i]]
        assert correct >= 14, f"{correct}/20 test images classified correctly"
        wait_for(lambda: phase_requests(kubectl, namespace) >= 20, timeout=60, what="scoring rows counted")


def phase_requests(kubectl, namespace: str) -> int:
    out = kubectl("get", "mdep/fashion-classifier", "-n", namespace, "-o", "json")
    return int((json.loads(out.stdout).get("status", {}).get("monitoring") or {}).get("requests", 0))
