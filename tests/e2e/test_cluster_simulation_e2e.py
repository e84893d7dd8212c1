"""BBC news through the cluster simulation (`cdl up --engines cluster`): the operator runs from its
image as the Helm chart deploys it, with the cluster engines; pachd runs the pipeline steps from
the pipelines image, the Determined master runs the trials through Determined's harness from the
training image, evaluation runs as a Kubernetes Job, Seldon's controller serves the model with
seldon-core-microservice from the predictor image. The model code is delivered as the GitLab
pipeline delivers it: `cdl push` uploads the bundle and fills it into the manifests."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_fmnist_e2e import read_idx_images
from tests.plugins.operator import wait_for

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "usecases" / "bbc-news" / "manifests"
TOOLS = ROOT / ".tools" / "bin"
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def cdl(*args: str, env: dict[str, str], timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "cdl.cli.main", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)
    if check:
        assert done.returncode == 0, f"cdl {' '.join(args)}: {done.stderr[-3000:]}"
    return done


def needs_push(env: dict[str, str]) -> None:
    if cdl("push", "--help", env=env, check=False).returncode != 0:
        pytest.skip("code delivery (`cdl push`, issue 15 item 1) is not on this branch")


@pytest.fixture(scope="module")
def simulated_cluster(tmp_path_factory: pytest.TempPathFactory,
                      seldon_venv: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """`cdl up --engines cluster` (the predictor image's packages: the seldon environment, built first)."""
    from cdl.simulation.containers import namespaces_available

    if not namespaces_available():
        pytest.skip("the simulation's containers need mount namespaces (root or user namespaces)")
    data_dir = tmp_path_factory.mktemp("cluster-sim")
    env = {**os.environ, "PATH": f"{TOOLS}:{os.environ.get('PATH', '')}"}
    needs_push(env)
    up = cdl("up", "--engines", "cluster", "--data-dir", str(data_dir), env=env, check=False)
    try:
        log = data_dir / "logs" / "operator.log"
        assert up.returncode == 0, up.stderr[-3000:] + (log.read_text()[-3000:] if log.exists() else "")
        env["KUBECONFIG"] = str(data_dir / "kubeconfig")
        yield data_dir, env
    finally:
        cdl("down", "--data-dir", str(data_dir), env=env, check=False)


def kubectl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TOOLS / "kubectl"), *args], capture_output=True, text=True, env=env, timeout=60)


def status_of(env: dict[str, str], ns: str, ref: str) -> dict:
    out = kubectl(env, "get", ref, "-n", ns, "-o", "json")
    return json.loads(out.stdout).get("status", {}) if out.returncode == 0 else {}


def wait_phase(env: dict[str, str], ns: str, ref: str, want: str, timeout: float, logs: Path) -> dict:
    seen: dict = {}

    def check() -> dict | None:
        st = status_of(env, ns, ref)
        seen["last"] = st
        if st.get("phase") in ("Failed", "InvalidSpec") and want != st.get("phase"):
            raise AssertionError(f"{ref} is {st.get('phase')}: {st.get('message')}")
        return st if st.get("phase") == want else None

    try:
        return wait_for(check, timeout=timeout, what=f"{ref} {want}")
    except AssertionError as exc:
        tail = (logs / "operator.log").read_text(errors="replace")[-3000:] if (logs / "operator.log").exists() else ""
        raise AssertionError(f"{exc}; last status {seen.get('last')}\noperator log:\n{tail}") from None


def manifests(corpus: Path, out: Path) -> Path:
    """The use case's manifests, pointed at the test's corpus and made small enough for CI."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("datapipeline.yaml", "experiment-asha.yaml", "modelversion.yaml", "deployment.yaml"):
        doc = yaml.safe_load((MANIFESTS / name).read_text())
        spec = doc["spec"]
        if doc["kind"] == "DataPipeline":
            spec["source"]["uri"] = corpus.as_uri()
            spec.pop("labeling")  # Label Studio has its own tests
        if doc["kind"] == "Experiment":
            spec["searcher"].update(maxTrials=2, maxLength={"epochs": 4}, asha={"divisor": 2, "maxRungs": 2})
        (out / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bbc") / "corpus"
    subprocess.run([sys.executable, str(ROOT / "usecases/bbc-news/data/generate.py"), "--out", str(out),
                    "--per-class", "40", "--seed", "7"], check=True, capture_output=True)
    return out


def test_bbc_from_kubectl_apply_to_a_served_prediction_on_the_simulated_cluster(
        simulated_cluster: tuple[Path, dict[str, str]], corpus: Path, tmp_path: Path) -> None:
    data_dir, env = simulated_cluster
    logs = data_dir / "logs"
    source = manifests(corpus, tmp_path / "manifests")
    filled = tmp_path / "filled"
    # The GitLab job's delivery step: the bundle goes to the artifact store the operator reads.
    cdl("push", str(ROOT / "usecases" / "bbc-news" / "model"), "-f", str(source), "-o", str(filled),
        "--artifacts", (data_dir / "artifacts").as_uri(), env=env)
    namespace = "bbc-sim"
    assert kubectl(env, "create", "namespace", namespace).returncode == 0
    out = kubectl(env, "apply", "-n", namespace, "-f", str(filled))
    assert out.returncode == 0, out.stderr

    data = wait_phase(env, namespace, "dpl/bbc-news", "Ready", 300, logs)
    exp = wait_phase(env, namespace, "exp/bbc-asha", "Completed", 900, logs)
    mv = wait_phase(env, namespace, "mv/news-classifier-v1", "Ready", 600, logs)
    dep = wait_phase(env, namespace, "mdep/news-classifier", "Available", 600, logs)

    assert data["outputs"]["train"]["files"] > 0
    assert exp["data"]["commit"] == data["outputs"]["train"]["commit"]
    assert exp["bestMetric"] >= 0.7
    assert mv["evaluation"]["passed"] is True
    text = "The prime minister told parliament the election campaign would focus on tax and schools."
    body = json.dumps({"data": {"ndarray": [text]}}).encode()
    request = urllib.request.Request(dep["url"], data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        answer = json.loads(resp.read())
    assert answer["data"]["ndarray"] == ["politics"]


def test_fashion_mnist_from_kubectl_apply_to_a_served_prediction_on_the_simulated_cluster(
        simulated_cluster: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """A `module:function` Keras trial (cdl.runtime.launch under Determined's launcher), IDX data,
    serving by stage."""
    data_dir, env = simulated_cluster
    logs = data_dir / "logs"
    fmnist = ROOT / "usecases" / "fashion-mnist"
    corpus = tmp_path / "fmnist"
    subprocess.run([sys.executable, str(fmnist / "data" / "generate.py"), "--out", str(corpus), "--train", "1500",
                    "--test", "300", "--seed", "7"], check=True, capture_output=True)
    source = tmp_path / "manifests"
    source.mkdir()
    for name in ("datapipeline.yaml", "experiment.yaml", "modelversion.yaml", "deployment.yaml"):
        doc = yaml.safe_load((fmnist / "manifests" / name).read_text())
        if doc["kind"] == "DataPipeline":
            doc["spec"]["source"]["uri"] = corpus.as_uri()
        if doc["kind"] == "Experiment":
            doc["spec"]["searcher"].update(maxTrials=1, maxLength={"epochs": 3})
        (source / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    filled = tmp_path / "filled"
    cdl("push", str(fmnist / "model"), "-f", str(source), "-o", str(filled), "--artifacts",
        (data_dir / "artifacts").as_uri(), env=env)
    namespace = "fmnist-sim"
    assert kubectl(env, "create", "namespace", namespace).returncode == 0
    out = kubectl(env, "apply", "-n", namespace, "-f", str(filled))
    assert out.returncode == 0, out.stderr

    data = wait_phase(env, namespace, "dpl/fashion-mnist", "Ready", 300, logs)
    exp = wait_phase(env, namespace, "exp/fmnist-random", "Completed", 900, logs)
    wait_phase(env, namespace, "mv/fashion-classifier-v1", "Ready", 600, logs)
    dep = wait_phase(env, namespace, "mdep/fashion-classifier", "Available", 600, logs)

    assert data["outputs"]["train"]["commit"] == exp["data"]["commit"]
    mv = status_of(env, namespace, "mv/fashion-classifier-v1")
    assert mv["evaluation"]["passed"] is True and mv["evaluation"]["metrics"]["accuracy"] >= 0.7
    # Test images of the generated sample, sent as 28x28 pixels, come back as their classes.
    count, rows, cols, pixels = read_idx_images(corpus / "t10k-images-idx3-ubyte.gz")
    labels = gzip.decompress((corpus / "t10k-labels-idx1-ubyte.gz").read_bytes())[8:]
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    correct = 0
    for i in range(20):
        image = [list(pixels[(i * rows + r) * cols:(i * rows + r + 1) * cols]) for r in range(rows)]
        body = json.dumps({"data": {"ndarray": [image]}}).encode()
        request = urllib.request.Request(dep["url"], data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            answer = json.loads(resp.read())["data"]["ndarray"][0]
        correct += answer == names[labels[i]]
    assert correct >= 14, f"{correct}/20 test images classified correctly"
