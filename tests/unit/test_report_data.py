"""The report's data section comes from the DataPipeline itself: source, split, preprocessing."""

from __future__ import annotations

from cdl.quality.reports import NOT_RECORDED, render_report
from cdl.reconcile.modelversion import report_data

PIPELINE = {"spec": {
    "source": {"uri": "https://reader:hunter2@data.example/bbc.zip", "format": "files"},
    "split": {"test": 0.2, "seed": 7, "stratify": True},
    "steps": [{"name": "clean", "command": ["python", "-m", "pipelines.text.clean"]},
              {"name": "dedupe", "command": ["python", "-m", "pipelines.text.dedupe"]}],
}}


def test_pipeline_steps_split_and_source_reach_the_report():
    data = report_data(PIPELINE, {"repo": "bbc-train", "commit": "abc", "files": 1780, "bytes": 5_000_000},
                       {"repo": "bbc-test", "commit": "def", "files": 445})
    assert "hunter2" not in str(data) and data["pipeline"]["source"]["uri"].startswith("https://reader:***@")
    _, report = render_report({"model": "news", "version": 1, "metrics": {"accuracy": 0.9}, "data": data,
                               "lineage": {"data": {"repo": "bbc-train", "commit": "abc"}}})
    answers = {a["id"]: a["answer"] for a in report["reproducibility"]}
    assert "clean: python -m pipelines.text.clean; dedupe: python -m pipelines.text.dedupe" in answers["preprocessing"]
    assert "test fraction 0.2, seed 7, stratified True" in answers["splits"]
    assert "1780 training files" in answers["data-collection"] and "***" in answers["data-collection"]
    for key in ("preprocessing", "splits"):
        assert NOT_RECORDED not in answers[key]


def test_without_a_pipeline_only_the_commits():
    data = report_data(None, {}, {"repo": "t", "commit": "c", "files": 3})
    assert data == {"repo": "t", "commit": "c", "files": 3, "test": {"repo": "t", "commit": "c", "files": 3}}
