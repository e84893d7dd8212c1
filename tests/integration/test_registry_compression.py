"""Model Compression (dynamic-int8) and the report of a real evaluation."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cdl.api.modelversion import Gate
from cdl.engines.base import RegisteredModel
from cdl.engines.registry.local import LocalRegistryEngine
from cdl.errors import PermanentEngineError
from cdl.quality.compression import compress_and_evaluate, compress_package
from cdl.quality.evaluation import evaluate_package
from cdl.quality.gates import apply_gates
from cdl.quality.reports import render_report
from cdl.runtime.package import load_package

PREDICT = """
import json, sys
from cdl.runtime.package import import_from_package, load_package, prepare_process
package = sys.argv[1]
prepare_process(load_package(package))
p = import_from_package(package, "serve:BlobPredictor")()
p.load(package)
print(json.dumps({"predictions": p.predict(json.loads(sys.argv[2])), "model": repr(p.model)}))
"""


@pytest.mark.slow
def test_dynamic_int8_is_smaller_and_evaluated_like_the_original(
    registry_registered: Callable[..., RegisteredModel], registry_engine: LocalRegistryEngine,
    registry_store: Any, registry_data: Any,
) -> None:
    package = Path(registry_registered(1).package_dir)
    result = compress_and_evaluate(
        package, "evaluate:evaluate", registry_data.test, timeout=300,
        store_variant=lambda d: registry_engine.store_variant("blobs", 1, "dynamic-int8", d),
    )
    original, compressed = result["original"], result["compressed"]
    assert result["method"] == "dynamic-int8"
    assert result["quantizedModules"] == ["layers.0", "layers.2", "layers.4"]
    assert result["loader"] == "serve:BlobPredictor"  # found in the package, nothing declared by hand
    assert compressed["weightsBytes"] < original["weightsBytes"] and result["sizeRatio"] < 0.6
    assert compressed["packageBytes"] < original["packageBytes"]
    assert set(result["metricChange"]) == {"accuracy", "loss"}
    assert result["metricChange"]["accuracy"] == pytest.approx(
        compressed["metrics"]["accuracy"] - original["metrics"]["accuracy"])
    assert abs(result["metricChange"]["accuracy"]) <= 0.1  # int8 keeps this model's decisions
    assert original["latencyMsPerExample"] > 0 and compressed["latencyMsPerExample"] > 0
    assert "warm forward passes" in result["latencyMeasure"]
    assert compressed["examples"] == original["examples"] == registry_data.examples
    json.dumps(result)  # goes to status.evaluation.compressed and a job record as is

    variant = load_package(result["packageDir"])
    assert variant.variant["method"] == "dynamic-int8" and variant.verify() == []
    assert (variant.name, variant.version) == ("blobs", 1)
    stored = registry_engine.get("blobs", 1)["variants"]["dynamic-int8"]
    assert stored["sha256"] == result["artifact"]["sha256"] == registry_store.stat(stored["key"]).sha256
    assert result["artifact"]["uri"] == stored["uri"]

    # The unchanged predictor serves the variant: its Linear layers come back quantized.
    row = [[float(v) for v in p.read_text().split(",")] for p in sorted(registry_data.test.glob("circle/*.txt"))][:2]
    out = subprocess.run([sys.executable, "-c", PREDICT, result["packageDir"], json.dumps(row)],
                         capture_output=True, text=True, timeout=120, start_new_session=True)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert "DynamicQuantizedLinear" in body["model"] and len(body["predictions"]) == 2


@pytest.mark.slow
def test_compression_is_reproducible_and_refuses_other_frameworks(
    registry_registered: Callable[..., RegisteredModel], registry_checkpoints: Any, tmp_path: Path,
) -> None:
    package = Path(registry_registered(1).package_dir)
    first = compress_package(package, dest=tmp_path / "a")
    second = compress_package(package, dest=tmp_path / "b")
    assert first.sha256 == second.sha256 and first.weights_bytes < first.weights_bytes_original

    keras_ckpt = tmp_path / "keras-ckpt"
    keras_ckpt.mkdir()
    (keras_ckpt / "metadata.json").write_text(json.dumps({"steps_completed": 10, "framework": "tensorflow-2.21.0"}))
    (keras_ckpt / "model_checkpoint.weights.h5").write_bytes(b"\x89HDF")
    keras = Path(registry_registered(2, keras_ckpt).package_dir)
    assert load_package(keras).framework == "tensorflow"
    with pytest.raises(PermanentEngineError, match="works on PyTorch packages; blobs version 2 is a tensorflow model"):
        compress_package(keras)


@pytest.mark.slow
def test_report_of_a_real_evaluation_has_confusion_matrix_and_reproducibility(
    registry_registered: Callable[..., RegisteredModel], registry_data: Any,
) -> None:
    registered = registry_registered(1)
    package = registered.package_dir
    out = evaluate_package(package, "evaluate:evaluate", registry_data.test, timeout=120)
    passed, gates = apply_gates([Gate(metric="accuracy", min=0.7)], out.metrics)
    markdown, report = render_report({
        "model": "blobs", "version": 1, "resource": "ml/blobs-1", "stage": "candidate",
        "metrics": out.metrics, "gates": [g.wire() for g in gates], "passed": passed,
        "confusion": out.confusion, "classNames": out.class_names, "packageDir": package,
        "artifact": {"uri": registered.artifact_uri, "sha256": registered.sha256, "bytes": registered.bytes,
                     "format": registered.format},
        "evaluation": out.wire(),
    })
    assert "Evaluation gate: **PASSED**" in markdown
    assert "## Confusion matrix" in markdown and "| true \\ predicted | circle | square | triangle |" in markdown
    row = out.confusion[0]
    assert f"| circle | {row[0]} | {row[1]} | {row[2]} |" in markdown
    assert "## Reproducibility" in markdown and "## Model card" in markdown
    answers = {a["id"]: a for a in report["reproducibility"]}
    assert "torch==" in answers["code"]["answer"] and "git commit abc123" in answers["code"]["answer"]
    assert answers["hyperparameters"]["status"] == "recorded" and "learning_rate=0.01" in answers["hyperparameters"]["answer"]
    assert "experiment seed 42" in answers["seeds"]["answer"]
    assert "steps completed 150" in answers["how-run"]["answer"]
    # No training compute was handed to the registry here: only the evaluation's time is known.
    assert answers["compute"]["answer"].startswith("evaluation ") and answers["compute"]["status"] == "partial"
    assert answers["variation"]["answer"] == "not recorded"
    assert report["modelCard"]["hyperparameters"] == {"learning_rate": 0.01, "hidden": 64}
