"""`cdl validate`: the examples pass; bad manifests fail naming the field and what is allowed."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cdl.api.validation import check
from cdl.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _load(rel):
    return yaml.safe_load((ROOT / rel).read_text())


def test_every_example_manifest_validates():
    result = runner.invoke(app, ["validate", "-f", str(ROOT / "usecases")])
    assert result.exit_code == 0, result.output
    assert "resource(s) valid" in result.output


EXP = "usecases/bbc-news/manifests/experiment-asha.yaml"
DPL = "usecases/bbc-news/manifests/datapipeline.yaml"
MV = "usecases/bbc-news/manifests/modelversion.yaml"
DEP = "usecases/bbc-news/manifests/deployment.yaml"


def _set(doc, path, value):
    node = doc
    *parents, last = path
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


_DELETE = object()

BAD = [
    # (id, manifest, change path, new value, expected field, expected words)
    ("wrong-type", EXP, ["spec", "searcher", "maxTrials"], "many", "spec.searcher.maxTrials", "must be of type integer"),
    ("unknown-engine", EXP, ["spec", "engine"], "kubeflow", "spec.engine", '"local", "determined"'),
    ("missing-required", EXP, ["spec", "model", "entrypoint"], _DELETE, "spec.model.entrypoint", "Required value"),
    ("bad-searcher-enum", EXP, ["spec", "searcher", "name"], "bayes", "spec.searcher.name", '"asha"'),
    ("bad-stopping-resource", EXP, ["spec", "searcher", "earlyStopping"], {"resources": {"resource": "gpu"}},
     "spec.searcher.earlyStopping.resources.resource", '"cpuSeconds", "wallSeconds", "peakMemory", "gpuMemory"'),
    ("asha-needs-maxlength", EXP, ["spec", "searcher", "maxLength"], _DELETE, "spec.searcher.maxLength",
     "required when searcher.name is asha"),
    ("bad-hparam-type", EXP, ["spec", "hyperparameters", "dropout"], {"type": "gaussian", "minval": 0, "maxval": 1},
     "spec.hyperparameters.dropout.type", "supported values: const, int, double, log, categorical"),
    ("hparam-min-over-max", EXP, ["spec", "hyperparameters", "hidden_size"], {"type": "int", "minval": 9, "maxval": 3},
     "spec.hyperparameters.hidden_size.maxval", "must be >= minval"),
    ("unknown-field", EXP, ["spec", "searcher", "patience"], 3, "spec.searcher.patience", "unknown field"),
    ("predict-quantile", EXP, ["spec", "searcher", "earlyStopping"], {"predict": {"quantile": 1.5}},
     "spec.searcher.earlyStopping.predict.quantile", "less than or equal to 1"),
    ("comparison-resource", EXP, ["spec", "searcher", "earlyStopping"], {"resources": {"resource": "gpuHours"}},
     "spec.searcher.earlyStopping.resources.resource", '"cpuSeconds", "wallSeconds", "peakMemory"'),
    ("median-unknown-field", EXP, ["spec", "searcher", "earlyStopping"], {"median": {"startStep": 2}},
     "spec.searcher.earlyStopping.median.startStep", "unknown field"),
    ("predict-needs-maxlength", EXP, ["spec", "searcher"],
     {"name": "random", "metric": "accuracy", "maxTrials": 4, "earlyStopping": {"predict": {}}},
     "spec.searcher.earlyStopping.predict", "needs searcher.maxLength"),
    ("split-out-of-range", DPL, ["spec", "split", "test"], 1.5, "spec.split.test", "less than 1"),
    ("bad-cron", DPL, ["spec", "trigger", "schedule"], "every hour", "spec.trigger.schedule", "not a valid cron"),
    ("bad-step-name", DPL, ["spec", "steps", 0, "name"], "Validate_Step", "spec.steps[0].name", "must match"),
    ("bad-source-format", DPL, ["spec", "source", "format"], "parquet", "spec.source.format", '"files", "idx", "csv"'),
    ("bad-quantity", DPL, ["spec", "steps", 0, "resources", "memory"], "lots", "spec.steps[0].resources.memory",
     "must match"),
    ("percent-over-100", DEP, ["spec", "canary"], {"modelVersionRef": {"name": "v2"}, "trafficPercent": 150},
     "spec.canary.trafficPercent", "less than or equal to 100"),
    ("both-model-and-ref", DEP, ["spec", "model"], {"name": "news-classifier", "stage": "production"},
     "spec", "exactly one of modelVersionRef and model"),
    ("unknown-server", DEP, ["spec", "server"], "triton", "spec.server", '"seldon", "mlserver"'),
    ("batching-without-mlserver", DEP, ["spec", "batching"], {"maxBatchSize": 32}, "spec",
     "batching needs server: mlserver"),
    ("batch-size-zero", DEP, ["spec", "batching"], {"maxBatchSize": 0}, "spec.batching.maxBatchSize",
     "greater than or equal to 1"),
    ("bad-stage", MV, ["spec", "stage"], "live", "spec.stage", '"production"'),
    ("gate-without-rule", MV, ["spec", "evaluation", "gates", 0], {"metric": "accuracy"},
     "spec.evaluation.gates[0]", "exactly one of min, max or maxDropVsStage"),
    ("bad-name", MV, ["metadata", "name"], "News_Classifier", "metadata.name", "DNS subdomain"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_manifest_names_the_field(case, tmp_path):
    _, rel, path, value, field, words = case
    doc = _set(copy.deepcopy(_load(rel)), path, value)
    problems = check(doc)
    assert problems, "expected a problem"
    joined = "\n".join(str(p) for p in problems)
    assert any(p.path == field for p in problems), joined
    assert words in joined
    # The same manifest through the CLI: exit 1 and one line naming the field.
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    result = runner.invoke(app, ["validate", "-f", str(bad)])
    assert result.exit_code == 1
    assert f"{field}:" in result.output


def test_multi_document_stdin_reports_each_resource_once():
    good = _load(EXP)
    bad = _set(copy.deepcopy(_load(DEP)), ["spec", "replicas"], -1)
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}}
    text = yaml.safe_dump_all([good, other, bad])
    proc = subprocess.run(
        [sys.executable, "-m", "cdl.cli.main", "validate", "-f", "-"], input=text, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "<stdin>#3: Deployment default/news-classifier: spec.replicas:" in proc.stdout
    assert "1 problem(s) in 2 resource(s)" in proc.stdout


def test_not_yaml_and_missing_file_are_problems(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [unclosed\n")
    result = runner.invoke(app, ["validate", "-f", str(broken), "-f", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "not valid YAML" in result.output
    assert "no such file or directory" in result.output


def test_a_folder_of_hostile_files_is_checked_to_the_end(tmp_path):
    """Deeply nested documents and duplicated keys are problems of their file; the files after
    them are still checked (no RecursionError, no abort)."""
    (tmp_path / "a-deep-flow.yaml").write_text("apiVersion: cdl.dev/v1alpha1\nkind: Experiment\nspec: "
                                               + "[" * 3000 + "]" * 3000 + "\n")
    deep_block = "apiVersion: cdl.dev/v1alpha1\nkind: DataPipeline\nmetadata: {name: deep}\nspec:\n"
    deep_block += "".join("  " * (i + 1) + f"k{i}:\n" for i in range(150)) + "  " * 151 + "x: 1\n"
    (tmp_path / "b-deep-block.yaml").write_text(deep_block)
    dup = yaml.safe_dump(_load(EXP)).replace("spec:\n", "spec:\n  engine: local\n  engine: determined\n", 1)
    (tmp_path / "c-duplicate.yaml").write_text(dup)
    (tmp_path / "d-good.yaml").write_text(yaml.safe_dump(_load(EXP)))
    result = runner.invoke(app, ["validate", "-f", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "a-deep-flow.yaml" in result.output and "b-deep-block.yaml" in result.output
    assert "at most 100" in result.output
    assert "c-duplicate.yaml" in result.output and "duplicate key 'engine'" in result.output
    assert "d-good.yaml" not in result.output  # checked, and valid
    assert "3 problem(s) in" in result.output
