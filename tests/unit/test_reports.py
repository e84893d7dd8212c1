"""The evaluation report: metrics, gates, confusion matrix, lineage, model card, reproducibility."""

from __future__ import annotations

import json
from typing import Any

from cdl.quality.reports import CHECKLIST, NOT_RECORDED, per_class, render_report

MANIFEST = {
    "name": "news", "version": 3, "framework": "pytorch", "frameworkVersion": "2.13.0",
    "hparams": {"learning_rate": 0.01, "hidden_size": 128},
    "requirements": ["torch==2.13.0", "numpy==2.4.6", "nltk==3.9"],
    "entrypoints": {"evaluate": "evaluate:evaluate", "trial": "model_def:NewsTrial"},
    "experiment": {"spec": {
        "hyperparameters": {"learning_rate": {"type": "log", "minval": -3, "maxval": -1}, "hidden_size": 128},
        "searcher": {"name": "asha", "metric": "validation_accuracy", "maxTrials": 16, "maxLength": {"epochs": 4}},
        "seed": 42, "resources": {"slotsPerTrial": 1, "gpu": False},
    }},
    "model": {"model_class": "NewsNet", "parameters": 650000, "trainable_parameters": 650000, "layer_count": 5,
              "layers": [{"name": "layers.0", "type": "Linear"}]},
    "training": {"wallSeconds": 93.5, "cpuSeconds": 170.2, "peakRssBytes": 512 * 1024 * 1024},
    "trials": {"total": 16, "completed": 4, "earlyStopped": 12, "failed": 0},
    "environment": {"python": "3.11.7", "platform": "Linux-6.1-x86_64", "machine": "x86_64"},
    "python": "3.11.7",
    "checkpoint": {"determined": {"steps_completed": 200}},
}


def full_input(**extra: Any) -> dict[str, Any]:
    data = {
        "model": "news", "version": 3, "resource": "ml/news-3", "stage": "candidate",
        "metrics": {"accuracy": 0.8, "macro_f1": 0.78, "custom_score": 1.5},
        "gates": [{"metric": "accuracy", "passed": True, "value": 0.8, "threshold": 0.7, "rule": "accuracy >= 0.7"},
                  {"metric": "macro_f1", "passed": False, "value": 0.78, "threshold": 0.8, "rule": "macro_f1 >= 0.8"}],
        "passed": False,
        "confusion": [[3, 1], [1, 5]],
        "classNames": ["sport", "tech|science"],
        "lineage": {"experiment": "bbc-asha", "run": 2, "trial": "7", "checkpoint": "ck-uuid",
                    "data": {"repo": "bbc-train", "commit": "abc123"},
                    "code": {"gitCommit": "deadbeef", "image": "registry/bbc-train:1.0"},
                    "trainLabels": {"sport": 40, "tech|science": 60}},
        "artifact": {"uri": "file:///a/models/news/3/package.tar.gz", "sha256": "f" * 64, "bytes": 123456,
                     "format": "cdl-package/v1+tar.gz"},
        "package": MANIFEST,
        "evaluation": {"entrypoint": "evaluate:evaluate", "examples": 10, "latencyMsPerExample": 0.12,
                       "evalSeconds": 1.5, "data": {"repo": "bbc-test", "commit": "fff000", "files": 10}},
        "data": {"pipeline": {"source": {"uri": "https://host/bbc.zip", "format": "files"},
                              "split": {"test": 0.2, "seed": 7, "stratify": True},
                              "steps": [{"name": "clean", "command": ["python", "-m", "pipelines.text.clean"]}]},
                 "train": {"files": 100, "bytes": 200000}},
        "trialMetrics": [0.7, 0.75, 0.8, 0.72],
        "generated": "2026-01-01T00:00:00Z",
    }
    data.update(extra)
    return data


def answers(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {a["id"]: a for a in report["reproducibility"]}


def test_markdown_has_metrics_gates_and_the_confusion_matrix() -> None:
    markdown, report = render_report(full_input())
    assert markdown.startswith("# news version 3")
    assert "Evaluation gate: **REJECTED**" in markdown
    assert "| accuracy | 0.8 | fraction of evaluation examples whose predicted class equals the true class |" in markdown
    assert "| macro_f1 | macro_f1 >= 0.8 | 0.78 | 0.8 | FAIL |" in markdown
    assert "## Confusion matrix" in markdown
    assert "| true \\ predicted | sport | tech\\|science |" in markdown  # a pipe in a class name is escaped
    assert "| sport | 3 | 1 |" in markdown and "| tech\\|science | 1 | 5 |" in markdown
    conf = report["evaluation"]["confusion"]
    assert conf["perClass"]["sport"] == {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4}
    json.dumps(report)  # the JSON half is serialisable as is


def test_lineage_and_model_card_come_from_status_and_the_package() -> None:
    markdown, report = render_report(full_input())
    for text in ("| experiment | bbc-asha |", "| data | bbc-train@abc123 |", "| code git commit | deadbeef |",
                 "| image | registry/bbc-train:1.0 |", "| checkpoint | ck-uuid |"):
        assert text in markdown
    card = report["modelCard"]
    assert card["modelDetails"]["architecture"] == "NewsNet"
    assert card["hyperparameters"] == {"learning_rate": 0.01, "hidden_size": 128}
    assert "classify each input into one of 2 classes (sport, tech|science)" in card["intendedUse"]
    assert "bbc-train@abc123" in card["intendedUse"]
    assert card["limitations"] == NOT_RECORDED
    assert "| learning_rate | 0.01 |" in markdown


def test_the_code_bundle_and_commit_the_model_was_trained_from_are_in_the_report() -> None:
    data = full_input()
    data["lineage"]["code"] = {"gitCommit": "9c1e" * 10, "gitUrl": "https://gitlab.example.com/team/news",
                               "bundleSha256": "b6" * 32, "bundleUri": f"s3://cdl-artifacts/code/{'b6' * 32}.tar.gz"}
    markdown, report = render_report(data)
    assert f"| code bundle | s3://cdl-artifacts/code/{'b6' * 32}.tar.gz (sha256 {'b6' * 32}) |" in markdown
    got = answers(report)["code"]["answer"]
    assert f"git commit {'9c1e' * 10} of https://gitlab.example.com/team/news" in got
    assert f"code bundle sha256 {'b6' * 32}" in got
    bare, _ = render_report({"model": "news", "version": 1, "metrics": {"accuracy": 0.5}})
    assert f"| code bundle | {NOT_RECORDED} |" in bare


def test_reproducibility_section_answers_every_checklist_item() -> None:
    markdown, report = render_report(full_input())
    got = answers(report)
    assert [a["id"] for a in report["reproducibility"]] == [key for key, _ in CHECKLIST]
    assert "git commit deadbeef" in got["code"]["answer"] and "torch==2.13.0" in got["code"]["answer"]
    assert got["data-version"]["answer"] == "training data pfs://bbc-train@abc123; evaluation data pfs://bbc-test@fff000"
    assert "searcher asha on validation_accuracy" in got["hyperparameters"]["answer"]
    assert "search space" in got["hyperparameters"]["answer"] and got["hyperparameters"]["status"] == "recorded"
    assert "experiment seed 42" in got["seeds"]["answer"] and "split seed 7" in got["seeds"]["answer"]
    assert "total=16" in got["runs"]["answer"] and "2 evaluation run" not in got["runs"]["answer"]
    assert "wall 93.5 s" in got["compute"]["answer"] and "512.0 MiB" in got["compute"]["answer"]
    assert "pytorch 2.13.0" in got["framework"]["answer"] and "Python 3.11.7" in got["framework"]["answer"]
    assert "accuracy: fraction of evaluation examples" in got["metrics"]["answer"]
    assert "custom_score: computed by the evaluation entrypoint evaluate:evaluate" in got["metrics"]["answer"]
    assert "over 4 trials" in got["variation"]["answer"] and "mean 0.7425" in got["variation"]["answer"]
    assert "clean: python -m pipelines.text.clean" in got["preprocessing"]["answer"]
    assert "## Reproducibility" in markdown
    assert "| The random seeds used | experiment seed 42" in markdown


def test_what_was_not_recorded_says_so() -> None:
    markdown, report = render_report({"model": "news", "version": 1, "metrics": {"accuracy": 0.5}})
    got = answers(report)
    for key in ("code", "data-version", "preprocessing", "hyperparameters", "compute", "variation", "infrastructure"):
        assert got[key]["answer"] == NOT_RECORDED and got[key]["status"] == NOT_RECORDED, key
    assert got["metrics"]["status"] == "recorded"
    assert "Evaluation gate: **not evaluated**" in markdown
    assert "## Confusion matrix" not in markdown
    assert "No gates: spec.evaluation.gates is empty" in markdown
    assert f"| experiment | {NOT_RECORDED} |" in markdown


def test_compression_is_shown_beside_the_original() -> None:
    compressed = {
        "method": "dynamic-int8", "quantizedModules": ["layers.0", "layers.2"], "sizeRatio": 0.3, "latencySpeedup": 1.4,
        "original": {"metrics": {"accuracy": 0.8}, "weightsBytes": 40000, "packageBytes": 90000, "latencyMsPerExample": 0.2},
        "compressed": {"metrics": {"accuracy": 0.79}, "weightsBytes": 12000, "packageBytes": 30000,
                       "latencyMsPerExample": 0.14},
        "metricChange": {"accuracy": -0.01},
    }
    markdown, report = render_report(full_input(compressed=compressed))
    assert "## Compression (dynamic-int8)" in markdown
    assert "| weights size | 39.1 KiB (40000 B) | 11.7 KiB (12000 B) | x0.3 |" in markdown
    assert "| accuracy | 0.8 | 0.79 | -0.0100 |" in markdown
    assert "(original and compressed)" in answers(report)["runs"]["answer"]


def test_per_class_handles_a_class_never_predicted() -> None:
    got = per_class(["a", "b"], [[2, 0], [2, 0]])
    assert got["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert got["a"]["precision"] == 0.5 and got["a"]["recall"] == 1.0
