"""The machine-faults use case off the platform: the generated sensor log, the platform's CSV row
split on it, a short det.pytorch run of FaultTrial, then evaluate() and the predictor on the
checkpoint it leaves."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cdl.engines.data.split import split_csv
from tests.usecase_helpers import load, run_logged

USECASE = Path(__file__).resolve().parents[1]
MODEL = USECASE / "model"
generate = load("faults_generate", USECASE / "data" / "generate.py")

TRAIN = """
import glob, json, os, sys
from determined import pytorch
from model_def import FaultTrial
hparams = {"learning_rate": 0.01, "hidden_size": 16, "batch_size": 16}
with pytorch.init(hparams=hparams, enable_tensorboard_logging=False) as ctx:
    pytorch.Trainer(FaultTrial(ctx), ctx).fit(max_length=pytorch.Epoch(5), validation_period=pytorch.Epoch(5),
                                              checkpoint_period=pytorch.Epoch(5))
print("CHECKPOINT", glob.glob(os.path.join(os.environ["XDG_DATA_HOME"], "determined", "*"))[0])
"""


def test_the_sensor_log_is_deterministic_by_seed(tmp_path):
    a = generate.write(tmp_path / "a", per_class=20, seed=1).read_bytes()
    b = generate.write(tmp_path / "b", per_class=20, seed=1).read_bytes()
    c = generate.write(tmp_path / "c", per_class=20, seed=2).read_bytes()
    assert a == b and a != c
    lines = a.decode().splitlines()
    assert lines[0] == "temperature,vibration,pressure,rpm,label" and len(lines) == 1 + 4 * 20


@pytest.mark.slow
def test_trained_on_the_train_rows_it_classifies_the_test_rows(tmp_path, monkeypatch):
    log = generate.write(tmp_path / "source", per_class=60, seed=3).read_bytes()
    train, test, n_train, n_test = split_csv(log, 0.25, 7, True)  # what the DataPipeline's split does
    assert (n_train, n_test) == (180, 60)
    for side, data in (("train", train), ("test", test)):
        (tmp_path / side).mkdir()
        (tmp_path / side / "readings.csv").write_bytes(data)
    monkeypatch.setenv("CDL_DATA_DIR", str(tmp_path / "train"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "checkpoints"))
    out = run_logged([sys.executable, "-c", TRAIN], MODEL, tmp_path / "train.log", timeout=300)
    ckpt = Path(out.split("CHECKPOINT ")[-1].strip())
    assets = json.loads((ckpt / "assets.json").read_text())
    assert assets["columns"] == ["temperature", "vibration", "pressure", "rpm"]

    evaluate = load("faults_evaluate", MODEL / "evaluate.py")
    result = evaluate.evaluate(str(ckpt), str(tmp_path / "test"))
    assert result["metrics"]["accuracy"] >= 0.85 and len(result["predictions"]) == 60
    assert sorted(result["class_names"]) == sorted(generate.CONDITIONS)

    serve = load("faults_serve", MODEL / "serve.py")
    predictor = serve.FaultPredictor()
    predictor.load(str(ckpt))
    assert predictor.predict([[84.0, 2.3, 5.5, 1490.0], [60.0, 2.0, 6.0, 1450.0]]) == ["overheating", "normal"]
