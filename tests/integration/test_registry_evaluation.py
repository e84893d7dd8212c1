"""Model Evaluation in a child process, the evaluation gate, and promotion against production."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cdl.api.modelversion import Gate
from cdl.engines.base import RegisteredModel
from cdl.engines.registry.local import LocalRegistryEngine
from cdl.errors import PermanentEngineError
from cdl.quality.evaluation import confusion_matrix, evaluate_package, is_classification
from cdl.quality.gates import apply_gates
from cdl.quality.promotion import PromotionRefused, VersionState, plan_promotion
from cdl.quality.reports import render_report


def test_evaluation_returns_metrics_confusion_matrix_and_latency(
    registry_registered: Callable[..., RegisteredModel], registry_data: Any, tmp_path: Path,
) -> None:
    package = registry_registered(1).package_dir
    log = tmp_path / "eval.log"
    out = evaluate_package(package, "evaluate:evaluate", registry_data.test, timeout=120, log_path=log)
    assert out.metrics["accuracy"] >= 0.9 and out.metrics["loss"] > 0
    assert out.class_names == ["circle", "square", "triangle"]
    assert out.examples == registry_data.examples == sum(map(sum, out.confusion))
    correct = sum(out.confusion[i][i] for i in range(3))
    assert correct / out.examples == pytest.approx(out.metrics["accuracy"])
    assert out.latency_ms is not None and out.latency_ms > 0 and "warm forward passes of BlobNet" in out.latency_measure
    assert "cdl: evaluating evaluate:evaluate" in log.read_text() and "cdl: done" in out.log
    assert out.wire()["confusion"] == out.confusion


def test_a_failing_evaluate_shows_its_traceback(
    registry_registered: Callable[..., RegisteredModel], registry_data: Any,
) -> None:
    package = registry_registered(1).package_dir
    with pytest.raises(PermanentEngineError) as err:
        evaluate_package(package, "broken:evaluate", registry_data.test, timeout=120)
    text = str(err.value)
    assert text.startswith("evaluation broken:evaluate failed: ValueError: broken on purpose: no label column")
    assert "Traceback (most recent call last)" in text
    assert 'broken.py", line 7, in _read_labels' in text  # the frame where the user's code failed
    assert err.value.reason == "EvaluationFailed"


def test_an_entrypoint_that_does_not_exist_is_named(
    registry_registered: Callable[..., RegisteredModel], registry_data: Any,
) -> None:
    package = registry_registered(1).package_dir
    with pytest.raises(PermanentEngineError, match="entrypoint 'nosuch:evaluate': no module 'nosuch'") as err:
        evaluate_package(package, "nosuch:evaluate", registry_data.test, timeout=120)
    assert err.value.reason == "BadEntrypoint"
    with pytest.raises(PermanentEngineError, match="evaluate has no attribute 'score'"):
        evaluate_package(package, "evaluate:score", registry_data.test, timeout=120)


def test_a_hanging_evaluation_is_stopped_at_its_deadline(
    registry_registered: Callable[..., RegisteredModel], registry_data: Any, tmp_path: Path,
) -> None:
    package = registry_registered(1).package_dir
    log = tmp_path / "slow.log"
    with pytest.raises(PermanentEngineError, match="timed out after 3s") as err:
        evaluate_package(package, "slow:evaluate", registry_data.test, timeout=3, log_path=log)
    assert err.value.reason == "EvaluationTimeout" and f"(log: {log})" in str(err.value)
    # The child's process group is gone: no process is left running the slow entrypoint.
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"slow:evaluate" in cmdline:
            left.append(pid)
    assert left == []


def test_the_child_gets_no_operator_secrets(
    registry_registered: Callable[..., RegisteredModel], registry_model_dir: Path, registry_data: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (registry_model_dir / "envcheck.py").write_text(
        "import os\n\ndef evaluate(model_dir, data_dir):\n"
        "    return {'has_secret': float('CDL_S3_SECRET_KEY' in os.environ),\n"
        "            'has_data_dir': float(os.environ.get('CDL_DATA_DIR') == data_dir)}\n")
    package = registry_registered(1).package_dir
    monkeypatch.setenv("CDL_S3_SECRET_KEY", "hunter2")
    out = evaluate_package(package, "envcheck:evaluate", registry_data.test, timeout=120)
    assert out.metrics == {"has_secret": 0.0, "has_data_dir": 1.0}


def test_an_untrained_model_is_rejected_by_the_gate(
    registry_registered: Callable[..., RegisteredModel], registry_data: Any,
) -> None:
    package = registry_registered(2, "untrained").package_dir
    out = evaluate_package(package, "evaluate:evaluate", registry_data.test, timeout=120)
    assert out.metrics["accuracy"] < 0.5
    passed, results = apply_gates([Gate(metric="accuracy", min=0.7)], out.metrics)
    assert passed is False
    assert results[0].value == out.metrics["accuracy"] and results[0].threshold == 0.7
    markdown, report = render_report({"model": "blobs", "version": 2, "metrics": out.metrics,
                                      "gates": [r.wire() for r in results], "passed": passed,
                                      "confusion": out.confusion, "classNames": out.class_names,
                                      "packageDir": package})
    assert "Evaluation gate: **REJECTED**" in markdown and "| accuracy | accuracy >= 0.7 |" in markdown
    assert report["evaluation"]["passed"] is False


@pytest.mark.slow
def test_max_drop_against_the_production_version_and_promotion(
    registry_registered: Callable[..., RegisteredModel], registry_engine: LocalRegistryEngine, registry_data: Any,
) -> None:
    """v1 (trained) goes to production; v2 (untrained) drops too far below it and may not be
    promoted; v3 (the same weights as v1) passes and replaces v1, which is archived."""
    gates = [Gate(metric="accuracy", min=0.3), Gate(metric="accuracy", max_drop_vs_stage="production", value=0.01)]
    metrics_of: dict[int, dict[str, float]] = {}
    verdicts: dict[int, tuple[bool, tuple[str, ...]]] = {}

    def states() -> list[VersionState]:
        return [VersionState(v, stage, verdicts[v][0], len(gates), verdicts[v][1], f"ml/blobs-{v}")
                for v, stage in registry_engine.stages("blobs").items()]

    for version, checkpoint in ((1, "good"), (2, "untrained"), (3, "good")):
        package = registry_registered(version, checkpoint).package_dir
        metrics_of[version] = evaluate_package(package, "evaluate:evaluate", registry_data.test, timeout=120).metrics
        production = [v for v, s in registry_engine.stages("blobs").items() if s == "production"]
        stage_metrics = {"production": metrics_of[production[0]]} if production else None
        passed, results = apply_gates(gates, metrics_of[version], stage_metrics)
        verdicts[version] = (passed, tuple(r.rule for r in results if not r.passed))
        if version == 1:
            assert passed and results[1].rule == "no production version to compare with: passes"
        elif version == 2:
            assert not passed and results[0].passed and not results[1].passed
            assert "production version's" in results[1].rule
            with pytest.raises(PromotionRefused, match="ml/blobs-2: spec.stage: .* its gates failed"):
                plan_promotion("blobs", states(), 2, "production")
            continue
        else:
            assert passed and results[1].threshold == pytest.approx(metrics_of[1]["accuracy"] - 0.01)
        for change in plan_promotion("blobs", states(), version, "production"):
            registry_engine.set_stage("blobs", change.version, change.stage)
    assert registry_engine.stages("blobs") == {1: "archived", 2: "candidate", 3: "production"}


def test_confusion_matrix_maps_integer_labels_and_keeps_unknown_classes() -> None:
    names, matrix = confusion_matrix([0, 1, 2, 1], [0, 2, 2, 1], ["a", "b", "c"])
    assert names == ["a", "b", "c"] and matrix == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    names, matrix = confusion_matrix(["a", "z"], ["a", "a"], ["a", "b"])
    assert names == ["a", "b", "z"] and matrix[2] == [1, 0, 0]


def test_real_valued_labels_get_no_confusion_matrix() -> None:
    assert is_classification(["a", "b"], ["b", "b"]) and is_classification([0, 1], [1, 1])
    assert not is_classification([0.5, 1.25], [0.4, 1.3])  # a regression's targets
    assert not is_classification(list(range(300)), list(range(300)))
