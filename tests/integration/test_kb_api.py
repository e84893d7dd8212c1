"""The knowledge base API over real PostgreSQL with recorded runs (and the artifact store's reports)."""

from __future__ import annotations

import csv
import io
import urllib.parse

from tests.plugins.kb import EXPERIMENT, NS

TRIALS_PATH = f"/v1/namespaces/{NS}/experiments/{EXPERIMENT}/trials"


def q(text: str) -> str:
    return "?q=" + urllib.parse.quote(text)


def test_experiments_list_latest_run_and_best(kb_server):
    status, data, _ = kb_server.get("/v1/experiments")
    assert status == 200 and data["total"] == 1
    exp = data["items"][0]
    assert (exp["namespace"], exp["name"], exp["runs"], exp["trials"]) == (NS, EXPERIMENT, 2, 4)
    assert exp["latest_run"] == kb_server.records.run_id and exp["best"] == 0.95 and exp["metric"] == "accuracy"


def test_trials_best_first_with_resources_and_paging(kb_server):
    status, data, _ = kb_server.get(TRIALS_PATH + "?limit=3")
    assert status == 200
    assert [t["trial"] for t in data["items"]] == ["10", "2", "3"] and data["total"] == 4 and data["next"] == 3
    assert data["items"][0]["resources"]["wallSeconds"] == 100.0
    assert [p["cpuSeconds"] for p in data["items"][0]["resources"]["series"]] == [0.0, 1.5, 3.0, 4.5, 6.0]
    assert data["items"][0]["model"]["parameters"] == 650_000
    _, rest, _ = kb_server.get(TRIALS_PATH + "?limit=3&offset=3")
    assert [t["trial"] for t in rest["items"]] == ["1"] and rest["next"] is None
    _, old, _ = kb_server.get(TRIALS_PATH + "?run=" + kb_server.records.old_run_id)
    assert [t["hparams"] for t in old["items"]] == [{"epochs": 99}]


def test_the_papers_query(kb_server):
    _, data, _ = kb_server.get(TRIALS_PATH + q("epochs > 10 && optimizer = Adam && accuracy > 0.9"))
    assert [t["trial"] for t in data["items"]] == ["10", "2"]
    _, data, _ = kb_server.get(TRIALS_PATH + q("(optimizer = SGD || lr >= 0.01) && state = completed"))
    assert sorted(t["trial"] for t in data["items"]) == ["1", "3"]
    _, data, _ = kb_server.get(TRIALS_PATH + q("model.model_class ~ newsnet && wall_seconds < 25"))
    assert sorted(t["trial"] for t in data["items"]) == ["1", "2"]
    # a number compared with a word, or a field no trial has: no match, no error
    _, data, _ = kb_server.get(TRIALS_PATH + q("optimizer > 3 || nothing = 1"))
    assert data["items"] == [] and data["total"] == 0


def test_a_query_cannot_change_the_statement(kb_server):
    status, data, _ = kb_server.get(TRIALS_PATH + q("optimizer = \"x' OR '1'='1\" || state = \"'; DROP TABLE trials; --\""))
    assert status == 200 and data["items"] == []
    assert len(kb_server.records.database.trials(kb_server.records.run_id)) == 4


def test_bad_query_and_bad_paging_are_400_naming_the_problem(kb_server):
    status, data, _ = kb_server.get(TRIALS_PATH + q("epochs >> 3"))
    assert status == 400 and "character 9" in data["error"]
    status, data, _ = kb_server.get(TRIALS_PATH + "?limit=5000")
    assert status == 400 and data["error"] == "limit: 5000 is out of range; allowed: 1 to 500"
    status, data, _ = kb_server.get(f"/v1/namespaces/{NS}/experiments/nope/trials")
    assert status == 404 and "nope" in data["error"]


def test_trials_as_csv(kb_server):
    status, text, ctype = kb_server.get(TRIALS_PATH + "?format=csv")
    assert status == 200 and ctype.startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["trial"] for r in rows] == ["10", "2", "3", "1"]
    assert rows[0]["hparams.optimizer"] == "Adam" and rows[0]["metrics.accuracy"] == "0.95"


def test_trial_detail_has_metric_series(kb_server):
    status, data, _ = kb_server.get(f"/v1/runs/{kb_server.records.run_id}/trials/2")
    assert status == 200
    assert [p["batches"] for p in data["series"]["validation"]] == [100, 200, 300]
    assert data["series"]["validation"][-1]["metrics"]["accuracy"] == 0.93
    assert len(data["series"]["training"]) == 6 and data["experiment"] == {"namespace": NS, "name": EXPERIMENT}


def test_compare_rows_and_logs(kb_server):
    _, data, _ = kb_server.get(f"/v1/namespaces/{NS}/experiments/{EXPERIMENT}/compare?trials=2,3")
    assert [r["trial"] for r in data["items"]] == ["2", "3"] and data["items"][0]["hp.optimizer"] == "Adam"
    status, text, _ = kb_server.get(f"/v1/namespaces/{NS}/experiments/{EXPERIMENT}/logs?trial=3")
    assert status == 200 and text == f"log of local run {kb_server.records.run_id} trial 3\n"


def test_model_versions_report_confusion_and_lineage(kb_server):
    _, projects, _ = kb_server.get("/v1/projects")
    assert projects == [{**projects[0], "model": "news", "versions": 2, "production": 1, "experiments": [EXPERIMENT]}]
    _, versions, _ = kb_server.get("/v1/modelversions" + q("accuracy > 0.9 && stage = candidate"))
    assert [(v["model"], v["version"]) for v in versions["items"]] == [("news", 2)]
    status, mv, _ = kb_server.get(f"/v1/namespaces/{NS}/modelversions/news-v1")
    assert status == 200 and mv["version"] == 1 and mv["stage"] == "production"
    confusion = mv["report"]["evaluation"]["confusion"]
    assert confusion["classNames"] == ["business", "sport", "tech"] and confusion["matrix"][2] == [0, 4, 39]
    kinds = [link["kind"] for link in mv["lineageChain"]]
    assert kinds == ["data", "experiment", "trial", "checkpoint", "code", "model-version", "deployment"]
    assert mv["lineageChain"][0]["id"] == "news-train@c0ffee" and mv["lineageChain"][-1]["id"] == f"{NS}/news"
    status, md, _ = kb_server.get("/v1/models/news/versions/1/report.md")
    assert status == 200 and "business" in md and "accuracy" in md


def test_deployment_scoring_over_time(kb_server):
    status, dep, _ = kb_server.get(f"/v1/namespaces/{NS}/deployments/news")
    assert status == 200 and dep["requests"] == 18 and dep["errors"] == 1
    assert [p["requests"] for p in dep["series"]] == [5, 6, 7] and [p["errors"] for p in dep["series"]] == [0, 0, 1]
    status, data, _ = kb_server.get(f"/v1/namespaces/{NS}/deployments/news?bucket=0")
    assert status == 400 and data["error"].startswith("bucket:")


def test_a_token_guards_every_other_address(kb_records):
    import pytest

    from cdl.errors import CdlError
    from cdl.kb.api import KB, check_bind, serve_in_thread
    from cdl.kb.catalog import Catalog

    with pytest.raises(CdlError, match="not a loopback address: set a token"):
        check_bind("0.0.0.0", None)
    served = serve_in_thread(KB(Catalog(kb_records.database, kb_records.artifacts), token="s3cret"), "0.0.0.0")
    try:
        from tests.plugins.kb import KBServer

        server = KBServer(f"http://127.0.0.1:{served.port}", kb_records, served)
        status, data, _ = server.get("/v1/experiments")
        assert status == 401 and "X-Cdl-Kb-Token" in data["error"]
        status, data, _ = server.get("/v1/experiments", **{"X-Cdl-Kb-Token": "s3cret"})
        assert status == 200 and data["total"] == 1
    finally:
        served.stop()
