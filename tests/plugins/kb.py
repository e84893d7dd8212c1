"""Fixtures for the knowledge base: recorded runs in a real PostgreSQL and a served API.

- `kb_records`: one Experiment (two runs; the latest with four trials, their validation and
  training series, resources and model facts), two registered versions of a model (one with a
  rendered evaluation report holding a confusion matrix), lineage, and scoring rows of a
  Deployment over three minutes -- written through the same `Database` methods the engines use.
- `kb_server`: the knowledge base API serving those records on a free loopback port.
- `kb_service`: that server registered as a Service (and Endpoints) on the devcluster, in a
  namespace of its own; the value is the `NAMESPACE/NAME:PORT` the CLI's --kb-service takes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

NS = "ml"
EXPERIMENT = "news-asha"
MODEL = "news"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
# trial -> (hparams, best validation accuracy, model facts)
TRIALS = {
    "1": ({"epochs": 5, "optimizer": "SGD", "lr": 0.1}, 0.71),
    "2": ({"epochs": 20, "optimizer": "Adam", "lr": 0.001}, 0.93),
    "3": ({"epochs": 20, "optimizer": "Adam", "lr": 0.01}, 0.88),
    "10": ({"epochs": 12, "optimizer": "Adam", "lr": 0.003}, 0.95),
}


@dataclass
class Recorded:
    database: Any
    artifacts: Any
    run_id: str
    old_run_id: str


def record_sample(database: Any, artifacts: Any) -> Recorded:
    from cdl.quality.reports import render_report
    from cdl.stores.records import ExperimentRun, ScoringRow, TrialMetric, TrialRecord

    spec = {"searcher": {"name": "asha", "metric": "accuracy", "smallerIsBetter": False, "maxTrials": 4}}
    old, run = f"{NS}.{EXPERIMENT}.g1", f"{NS}.{EXPERIMENT}.g2"
    database.record_run(ExperimentRun(run_id=old, namespace=NS, experiment=EXPERIMENT, engine="local",
                                      state="completed", generation=1, spec=spec, started_at=T0 - timedelta(days=1)))
    database.record_trial(TrialRecord(run_id=old, trial_id="1", state="completed", hparams={"epochs": 99},
                                      best_metric=0.5))
    database.record_run(ExperimentRun(run_id=run, namespace=NS, experiment=EXPERIMENT, engine="local",
                                      state="completed", generation=2, spec=spec, data_repo="news-train",
                                      data_commit="c0ffee", started_at=T0))
    model_facts = {"model_class": "NewsNet", "parameters": 650_000, "layer_count": 3,
                   "layers": [{"name": "embed", "type": "EmbeddingBag", "params": 640_000, "output_shape": [32, 64]},
                              {"name": "fc1", "type": "Linear", "params": 8_256, "output_shape": [32, 128]},
                              {"name": "out", "type": "Linear", "params": 1_744, "output_shape": [32, 3]}],
                   "input_shape": [32, 200], "output_shape": [32, 3],
                   "optimizer": "Adam", "loss": "CrossEntropyLoss"}
    for trial_id, (hparams, best) in TRIALS.items():
        database.record_trial(TrialRecord(
            run_id=run, trial_id=trial_id, state="completed", hparams=hparams, best_metric=best,
            metadata={"best_metrics": {"accuracy": best, "loss": round(1 - best, 3)}, "model": model_facts,
                      "seed": 7, "units_done": hparams["epochs"], "unit": "epochs", "validations": 3,
                      "resource_series": [{"at": 1000.0 + 2 * k, "rssBytes": (200 + 20 * k) * 2**20,
                                           "cpuSeconds": 1.5 * k, "gpuUtilization": None} for k in range(5)]},
            wall_seconds=10.0 * int(trial_id), cpu_seconds=9.0 * int(trial_id), peak_rss_bytes=300 * 2**20))
        database.record_metrics(
            [TrialMetric(run_id=run, trial_id=trial_id, kind="validation", batches=100 * k, epoch=float(k),
                         metrics={"accuracy": round(best * k / 3, 4), "loss": round(1 - best * k / 3, 4)},
                         recorded_at=T0 + timedelta(minutes=k)) for k in (1, 2, 3)]
            + [TrialMetric(run_id=run, trial_id=trial_id, kind="training", batches=50 * k,
                           metrics={"loss": round(2.0 / k, 4)}, recorded_at=T0 + timedelta(seconds=30 * k))
               for k in range(1, 7)])
    for version, trial_id, stage in ((1, "3", "production"), (2, "10", "candidate")):
        resource = f"{MODEL}-v{version}"
        lineage = {"experiment": EXPERIMENT, "run": 2, "runId": run, "trial": trial_id, "checkpoint": f"ck-{trial_id}",
                   "data": {"repo": "news-train", "commit": "c0ffee"},
                   "code": {"gitCommit": "deadbeefcafe0123", "image": "registry/news:1"}}
        database.record_model_version(
            MODEL, version, namespace=NS, resource=resource, stage=stage, lineage=lineage,
            artifact={"uri": f"file:///registry/{MODEL}/{version}/package.tar.gz", "sha256": "a" * 64,
                      "bytes": 1234, "format": "cdl-package/v1+tar.gz"})
        accuracy = TRIALS[trial_id][1]
        markdown, report = render_report({
            "model": MODEL, "version": version, "resource": f"{NS}/{resource}", "stage": stage,
            "metrics": {"accuracy": accuracy}, "passed": True, "lineage": lineage,
            "gates": [{"metric": "accuracy", "passed": True, "value": accuracy, "threshold": 0.8,
                       "rule": "accuracy >= 0.8"}],
            "confusion": [[40, 2, 1], [3, 35, 2], [0, 4, 38 + version]], "classNames": ["business", "sport", "tech"],
            "package": {"model": model_facts, "hparams": TRIALS[trial_id][0]}})
        base = f"reports/{MODEL}/{version}"
        stored = artifacts.put_bytes(f"{base}/report.md", markdown.encode())
        artifacts.put_bytes(f"{base}/report.json", json.dumps(report, default=str).encode())
        database.record_evaluation(MODEL, version, metrics={"accuracy": accuracy}, gates=report["evaluation"]["gates"],
                                   passed=True, report_uri=stored.uri)
    rows = []
    for minute in range(3):
        for i in range(5 + minute):
            rows.append(ScoringRow(namespace=NS, deployment="news", model_version=f"{MODEL}-v1",
                                   status_code=500 if (minute, i) == (2, 0) else 200,
                                   latency_ms=10.0 + i + minute, request={"data": {"ndarray": ["x"]}},
                                   created_at=T0 + timedelta(minutes=minute, seconds=i)))
    database.insert_scoring_rows(rows)
    return Recorded(database, artifacts, run, old)


@pytest.fixture
def kb_records(database: Any, file_store: Any) -> Recorded:
    return record_sample(database, file_store)


@dataclass
class KBServer:
    url: str
    records: Recorded
    served: Any

    def get(self, path: str, **headers: str) -> tuple[int, Any, str]:
        """(status, parsed JSON or text, content type) of a GET."""
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, body, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            status, body, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
        text = body.decode()
        return status, json.loads(text) if ctype.startswith("application/json") else text, ctype


@pytest.fixture
def kb_server(kb_records: Recorded) -> Iterator[KBServer]:
    from cdl.kb.api import KB, serve_in_thread
    from cdl.kb.catalog import Catalog

    def read_logs(engine: str, run_id: str, trial_id: str | None) -> str:
        return f"log of {engine} run {run_id} trial {trial_id}\n"

    served = serve_in_thread(KB(Catalog(kb_records.database, kb_records.artifacts), logs=read_logs))
    try:
        yield KBServer(f"http://127.0.0.1:{served.port}", kb_records, served)
    finally:
        served.stop()


@pytest.fixture
def kb_service(kb_server: KBServer, k8s_client: Any) -> str:
    import uuid

    from cdl.kb.service import register_endpoint

    namespace = f"kb-{uuid.uuid4().hex[:6]}"
    register_endpoint(namespace, "cdl-kb", kb_server.served.port, api_client=k8s_client)
    return f"{namespace}/cdl-kb:http"
