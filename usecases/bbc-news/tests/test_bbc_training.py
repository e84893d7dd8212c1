"""The BBC news classifier trained for real: a short det.pytorch run on a generated corpus, the
checkpoint it leaves, evaluation and the predictor on that checkpoint, the same trial under the
platform's local training engine, and (when the corpus is on this machine) the real BBC data."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.usecase_helpers import load, run_logged

pytestmark = pytest.mark.slow

USECASE = Path(__file__).resolve().parents[1]
MODEL = USECASE / "model"
CATEGORIES = ["business", "entertainment", "politics", "sport", "tech"]
# The raw BBC dataset sits beside the checkout (../shared/data/bbc) on machines that have it.
REAL_DATA = Path(os.environ.get("CDL_BBC_REAL_DATA") or Path(__file__).resolve().parents[3].parent / "shared" / "data" / "bbc")



generate = load("bbc_generate", USECASE / "data" / "generate.py")



@pytest.fixture(scope="module")
def bbc_corpora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(training corpus, held-out test corpus): generated, different seeds, no invalid files in
    the test set (as the pipeline's test output would be)."""
    root = tmp_path_factory.mktemp("bbc-data")
    generate.generate(root / "train", per_class=60, seed=5)
    generate.generate(root / "test", per_class=30, seed=6, invalid=False, readme=False)
    return root / "train", root / "test"


@pytest.fixture(scope="module")
def bbc_checkpoint(bbc_corpora: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint from a short real training run (det.pytorch off-cluster, in a child process)."""
    train, _ = bbc_corpora
    work = tmp_path_factory.mktemp("bbc-train")
    hparams = {"learning_rate": 0.002, "hidden_size": 128, "dropout": 0.2, "vocab_size": 2000, "batch_size": 16}
    out = run_logged(
        [sys.executable, str(MODEL / "model_def.py"), "--data", str(train), "--epochs", "3",
         "--storage", str(work / "storage"), "--seed", "1", "--hparams", json.dumps(hparams)],
        cwd=MODEL, log=work / "train.log", timeout=300,
    )
    assert "validation_accuracy" in out
    return Path(out.strip().splitlines()[-1])


def test_checkpoint_carries_vocabulary_class_names_and_network_shape(bbc_checkpoint: Path) -> None:
    assert (bbc_checkpoint / "state_dict.pth").is_file() and (bbc_checkpoint / "metadata.json").is_file()
    assert json.loads((bbc_checkpoint / "class_names.json").read_text()) == CATEGORIES
    vocab = json.loads((bbc_checkpoint / "vocab.json").read_text())
    assert 100 < len(vocab) <= 2000 and len(set(vocab)) == len(vocab)
    config = json.loads((bbc_checkpoint / "model_config.json").read_text())
    assert config["input_dim"] == len(vocab) and config["hidden_size"] == 128 and config["num_classes"] == 5
    state = torch.load(bbc_checkpoint / "state_dict.pth", weights_only=False)
    assert state["cdl_assets"]["vocab"] == vocab  # self-contained even without the JSON files
    weights = state["models_state_dict"][0]
    linear = [k for k in weights if k.endswith(".weight") and weights[k].dim() == 2]
    norms = [k for k in weights if k.endswith(".weight") and weights[k].dim() == 1]
    assert len(linear) == 5 and len(norms) == 5  # five linear layers, each but the last with a layer norm
    # Determined copied the model code, without caches (.detignore).
    code = sorted(p.name for p in (bbc_checkpoint / "code").iterdir())
    assert "model_def.py" in code and "news_model.py" in code and "__pycache__" not in code


def package_dir(checkpoint: Path, root: Path) -> Path:
    """An unpacked ModelVersion package: model/ (the code) and checkpoint/."""
    pkg = root / "package"
    if not pkg.exists():
        shutil.copytree(MODEL, pkg / "model", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(checkpoint, pkg / "checkpoint", ignore=shutil.ignore_patterns("code"))
    return pkg


def test_evaluate_scores_the_held_out_articles(bbc_checkpoint: Path, bbc_corpora: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    evaluate = load("bbc_evaluate", MODEL / "evaluate.py")
    _, test = bbc_corpora
    result = evaluate.evaluate(str(package_dir(bbc_checkpoint, tmp_path)), str(test))
    metrics = result["metrics"]
    assert metrics["accuracy"] >= 0.8 and metrics["macro_f1"] >= 0.75, metrics
    assert len(result["labels"]) == len(result["predictions"]) == 150
    assert result["class_names"] == CATEGORIES and set(result["predictions"]) <= set(CATEGORIES)
    correct = sum(a == b for a, b in zip(result["labels"], result["predictions"], strict=True))
    assert metrics["accuracy"] == pytest.approx(correct / 150)
    # A bare checkpoint folder works too.
    assert evaluate.evaluate(str(bbc_checkpoint), str(test))["predictions"] == result["predictions"]


def test_predictor_classifies_articles_like_evaluation(bbc_checkpoint: Path, bbc_corpora: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    serve = load("bbc_serve", MODEL / "serve.py")
    evaluate = load("bbc_evaluate", MODEL / "evaluate.py")
    _, test = bbc_corpora
    pkg = package_dir(bbc_checkpoint, tmp_path)
    predictor = serve.NewsPredictor()
    with pytest.raises(RuntimeError, match="load"):
        predictor.predict(["an article"])
    predictor.load(str(pkg))
    assert predictor.class_names == CATEGORIES
    files = sorted(test.rglob("*.txt"))[::10]
    texts = [p.read_text() for p in files]
    predicted = predictor.predict(texts)
    assert len(predicted) == len(texts) and set(predicted) <= set(CATEGORIES)
    accuracy = sum(p == f.parent.name for p, f in zip(predicted, files, strict=True)) / len(files)
    assert accuracy >= 0.7
    # Seldon's ndarray rows ([["text"]]) and bytes are accepted; nothing in, nothing out.
    assert predictor.predict([[t] for t in texts]) == predicted
    assert predictor.predict([texts[0].encode()]) == predicted[:1]
    assert predictor.predict([]) == []
    with pytest.raises(TypeError, match="string"):
        predictor.predict([42])
    probs = predictor.predict_proba(texts[:3])
    assert [len(r) for r in probs] == [5, 5, 5] and all(abs(sum(r) - 1) < 1e-5 for r in probs)
    assert isinstance(predictor.model, torch.nn.Module)
    # Same answers as the evaluation path.
    whole = evaluate.evaluate(str(pkg), str(test))
    by_path = dict(zip(sorted(str(p.relative_to(test)) for p in test.rglob("*.txt")), whole["predictions"],
                       strict=True))
    assert predicted == [by_path[str(f.relative_to(test))] for f in files]


def test_trial_runs_under_the_local_training_engine_with_the_asha_manifest(
    bbc_corpora: tuple[Path, Path], tmp_path: Path
) -> None:
    """The Experiment manifest's hyperparameters and entrypoint, run by the platform's engine
    (a shortened search: two trials, the better one promoted from its checkpoint to two epochs)."""
    training = pytest.importorskip("cdl.engines.training.local")
    from cdl.api.experiment import ExperimentSpec
    from cdl.engines.base import DataRef, JobState, ResourceKey, TrainingRequest

    manifest = yaml.safe_load((USECASE / "manifests" / "experiment-asha.yaml").read_text())
    spec = manifest["spec"]
    spec["searcher"].update(maxTrials=2, maxConcurrentTrials=2, maxLength={"epochs": 2})
    spec["searcher"]["asha"] = {"divisor": 2, "maxRungs": 2}  # rung 1 at 1 epoch; the better trial resumes
    spec.pop("data", None)
    train, _ = bbc_corpora
    engine = training.LocalTrainingEngine(
        tmp_path / "engine", max_parallel=2,
        settings=training.DriverSettings(poll_seconds=0.2, stop_grace_seconds=20.0, persist_seconds=0.5),
    )
    try:
        ref = engine.submit(TrainingRequest(
            key=ResourceKey("ml", "bbc-asha", uid="uid-bbc"), spec=ExperimentSpec.model_validate(spec),
            generation=1, run=1, model_dir=MODEL,
            data=DataRef(repo="bbc-news-train", commit="c0ffee", path=str(train)),
        ))
        status = engine.wait(ref, 400)
    finally:
        engine.close(kill_trials=True)
    assert status.state == JobState.SUCCEEDED, status.message
    assert sorted(t.length_done for t in status.trials) == [1, 2], [(t.id, t.length_done, t.stop_reason)
                                                                   for t in status.trials]
    best = status.best
    assert best is not None and best.metrics["validation_accuracy"] >= 0.6, best.metrics
    assert "validation_loss" in best.metrics
    assert best.checkpoint is not None and best.checkpoint.path
    ckpt = Path(best.checkpoint.path)
    assert json.loads((ckpt / "class_names.json").read_text()) == CATEGORIES
    assert (ckpt / "vocab.json").is_file() and (ckpt / "model_config.json").is_file()


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"the real BBC corpus is not at {REAL_DATA}")
def test_real_bbc_corpus_reaches_ninety_percent_held_out_accuracy(tmp_path: Path) -> None:
    """The paper's data: an 80/20 split, a few epochs, accuracy and macro F1 on the 444 held out."""
    run_logged(
        [sys.executable, str(USECASE / "bench_real.py"), str(REAL_DATA), "4", "--seeds", "1",
         "--json", str(tmp_path / "result.json")],
        cwd=tmp_path, log=tmp_path / "bench.log", timeout=500,
    )
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["train_articles"] + result["test_articles"] == 2225
    assert result["median"]["accuracy"] >= 0.9 and result["median"]["macro_f1"] >= 0.9, result
