"""The Fashion-MNIST classifier trained for real with Keras: a short run through
det.core.init() and Determined's Keras callback on a generated IDX sample, the checkpoint it
leaves, evaluation and the predictor on it, and the same code under the local training engine."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.usecase_helpers import load, run_logged

pytestmark = pytest.mark.slow

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="module", autouse=True)
def fmnist_tensorflow() -> None:
    """Skip, with the reason, where TensorFlow cannot be imported (imported when these tests
    run, not when the suite is collected: it takes seconds)."""
    pytest.importorskip("tensorflow", reason="tensorflow-cpu is not importable (pip install -e '.[tf]')")

USECASE = Path(__file__).resolve().parents[1]
MODEL = USECASE / "model"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]



generate = load("fmnist_generate", USECASE / "data" / "generate.py")



@pytest.fixture(scope="module")
def fmnist_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated sample, as downloaded: train and t10k pairs, gzipped."""
    root = tmp_path_factory.mktemp("fmnist-data")
    generate.generate(root, train=3000, test=500, seed=7)
    return root


@pytest.fixture(scope="module")
def fmnist_checkpoint(fmnist_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("fmnist-train")
    out = run_logged(
        [sys.executable, str(MODEL / "model_def.py"), "--data", str(fmnist_data), "--epochs", "3",
         "--storage", str(work / "storage"), "--hparams", json.dumps({"hidden_size": 64, "batch_size": 64})],
        cwd=MODEL, log=work / "train.log", timeout=300,
    )
    assert "2400 training and 600 validation images" in out  # the train pair only, 80/20
    assert "'val_accuracy'" in out and "group=validation" in out
    return Path(out.strip().splitlines()[-1])


def test_checkpoint_holds_the_keras_model_weights_and_assets(fmnist_checkpoint: Path) -> None:
    for name in ("model.keras", "model_checkpoint.weights.h5", "callback_state", "metadata.json"):
        assert (fmnist_checkpoint / name).is_file(), name
    assert json.loads((fmnist_checkpoint / "class_names.json").read_text()) == CLASS_NAMES
    assert json.loads((fmnist_checkpoint / "model_config.json").read_text())["hidden_size"] == 64
    assert "model_def.py" in {p.name for p in (fmnist_checkpoint / "code").iterdir()}


def package_dir(checkpoint: Path, root: Path, keep_full_model: bool = True) -> Path:
    """An unpacked ModelVersion package: model/ (the code) and checkpoint/."""
    pkg = root / ("package" if keep_full_model else "package-weights-only")
    if not pkg.exists():
        shutil.copytree(MODEL, pkg / "model", ignore=shutil.ignore_patterns("__pycache__"))
        ignore = ["code"] + ([] if keep_full_model else ["model.keras"])
        shutil.copytree(checkpoint, pkg / "checkpoint", ignore=shutil.ignore_patterns(*ignore))
    return pkg


def test_evaluate_scores_held_out_images(fmnist_checkpoint: Path, fmnist_data: Path, tmp_path: Path) -> None:
    evaluate = load("fmnist_evaluate", MODEL / "evaluate.py")
    result = evaluate.evaluate(str(package_dir(fmnist_checkpoint, tmp_path)), str(fmnist_data))
    metrics = result["metrics"]
    assert metrics["accuracy"] >= 0.8 and metrics["macro_f1"] >= 0.78, metrics
    assert len(result["labels"]) == len(result["predictions"]) == 500  # the t10k pair
    assert result["class_names"] == CLASS_NAMES and set(result["labels"]) == set(CLASS_NAMES)
    # The DataPipeline's test output (uncompressed `test-*` pair) and a weights-only checkpoint
    # (the network rebuilt from model_config.json) give the same answers.
    split = tmp_path / "split"
    split.mkdir()
    shutil.copy(fmnist_data / "t10k-images-idx3-ubyte.gz", split / "test-images-idx3-ubyte.gz")
    shutil.copy(fmnist_data / "t10k-labels-idx1-ubyte.gz", split / "test-labels-idx1-ubyte.gz")
    again = evaluate.evaluate(str(package_dir(fmnist_checkpoint, tmp_path, keep_full_model=False)), str(split))
    assert again["predictions"] == result["predictions"]


def test_predictor_answers_with_class_names(fmnist_checkpoint: Path, fmnist_data: Path, tmp_path: Path) -> None:
    serve = load("fmnist_serve", MODEL / "serve.py")
    fashion_model = load("fashion_model", MODEL / "fashion_model.py")
    images = fashion_model.read_idx(fmnist_data / "t10k-images-idx3-ubyte.gz")[:40]
    labels = fashion_model.read_idx(fmnist_data / "t10k-labels-idx1-ubyte.gz")[:40]
    predictor = serve.FashionPredictor()
    with pytest.raises(RuntimeError, match="load"):
        predictor.predict([images[0].tolist()])
    predictor.load(str(package_dir(fmnist_checkpoint, tmp_path)))
    assert predictor.class_names == CLASS_NAMES
    predicted = predictor.predict([img.tolist() for img in images])  # nested lists, as JSON carries them
    assert len(predicted) == 40 and set(predicted) <= set(CLASS_NAMES)
    assert np.mean([p == CLASS_NAMES[y] for p, y in zip(predicted, labels, strict=True)]) >= 0.75
    assert predictor.predict(images.reshape(40, 784).tolist()) == predicted  # flat pixel rows
    assert predictor.predict(images[0].tolist()) == predicted[:1]  # one image, not wrapped in a list
    assert predictor.predict([]) == []
    probs = predictor.predict_proba([images[0].tolist()])
    assert len(probs[0]) == 10 and abs(sum(probs[0]) - 1) < 1e-5
    with pytest.raises(ValueError, match="28x28"):
        predictor.predict([[1, 2, 3]])
    with pytest.raises(ValueError, match="0..255"):
        predictor.predict([(images[0].astype(int) + 300).tolist()])


def test_function_entrypoint_runs_under_the_local_training_engine(fmnist_data: Path, tmp_path: Path) -> None:
    """The Experiment manifest's entrypoint and hyperparameters under the platform's engine,
    shortened to one trial of two epochs, on the DataPipeline-shaped train output."""
    training = pytest.importorskip("cdl.engines.training.local")
    from cdl.api.experiment import ExperimentSpec
    from cdl.engines.base import DataRef, JobState, ResourceKey, TrainingRequest

    train_out = tmp_path / "train-output"
    train_out.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (train_out / name).write_bytes(gzip.decompress((fmnist_data / f"{name}.gz").read_bytes()))
    manifest = yaml.safe_load((USECASE / "manifests" / "experiment.yaml").read_text())
    spec = manifest["spec"]
    spec["searcher"].update(maxTrials=1, maxConcurrentTrials=1, maxLength={"epochs": 2})
    spec.pop("data", None)
    engine = training.LocalTrainingEngine(
        tmp_path / "engine", max_parallel=1,
        settings=training.DriverSettings(poll_seconds=0.2, stop_grace_seconds=20.0, persist_seconds=0.5),
    )
    try:
        ref = engine.submit(TrainingRequest(
            key=ResourceKey("ml", "fmnist", uid="uid-fmnist"), spec=ExperimentSpec.model_validate(spec),
            generation=1, run=1, model_dir=MODEL,
            data=DataRef(repo="fashion-mnist-train", commit="f00d", path=str(train_out)),
        ))
        status = engine.wait(ref, 500)
    finally:
        engine.close(kill_trials=True)
    assert status.state == JobState.SUCCEEDED, status.message
    assert len(status.trials) == 1 and status.trials[0].length_done == 2
    best = status.best
    assert best is not None and best.metrics["val_accuracy"] >= 0.6, best.metrics
    assert best.checkpoint is not None and best.checkpoint.path
    ckpt = Path(best.checkpoint.path)
    assert (ckpt / "model.keras").is_file() and json.loads((ckpt / "class_names.json").read_text()) == CLASS_NAMES
