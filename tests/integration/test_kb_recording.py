"""Cluster runs in the knowledge base: a Determined experiment (the real SDK against the
protocol-level fake master) recorded from its TrainingStatus, then read back as the KB serves it."""

from __future__ import annotations

import pytest

from cdl.engines.training.determined import DeterminedTrainingEngine
from cdl.kb.catalog import Catalog
from cdl.kb.recording import record_training_status
from tests.integration.test_engine_determined import ASHA, accuracy, request_for, settings_for

pytestmark = pytest.mark.slow  # a real PostgreSQL


def test_a_determined_run_is_recorded_and_served(cluster_det_master, database, tmp_path):
    engine = DeterminedTrainingEngine(settings_for(cluster_det_master, tmp_path))
    ref = engine.submit(request_for(tmp_path))
    record = dict(database=database, run_id=ref.id, namespace="ml", experiment="bbc-asha", engine="determined",
                  generation=1, spec=ASHA, data={"repo": "news-train", "commit": "c0ffee"})
    record_training_status(status=engine.status(ref), **record)
    catalog = Catalog(database)
    running = catalog.trials("ml", "bbc-asha")
    assert running["total"] == 4 and {t["state"] for t in running["items"]} <= {"pending", "running"}

    cluster_det_master.complete(int(ref.id), accuracy)
    done = engine.status(ref)
    record_training_status(status=done, **record)  # recorded again: updated, not duplicated
    trials = catalog.trials("ml", "bbc-asha", query="validation_accuracy > 0.6")
    best = max(done.trials, key=lambda t: t.metrics["validation_accuracy"])
    assert trials["items"][0]["trial"] == best.id and trials["items"][0]["best"] == best.metrics["validation_accuracy"]
    assert trials["items"][0]["checkpoint"]["uuid"] == best.checkpoint.uuid
    (exp,) = catalog.experiments()["items"]
    assert exp["state"] == "succeeded" and exp["trials"] == 4 and exp["data_commit"] == "c0ffee"
    assert database.get_run(ref.id).finished_at is not None
