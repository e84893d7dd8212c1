"""Reconcile passes of the controller without kopf: what they write, and what they queue."""

from __future__ import annotations

import copy
import time

from cdl.config import OperatorConfig
from cdl.controller.handlers import Controller
from cdl.engines.base import DataRunStatus, JobState, ResourceKey
from cdl.engines.chooser import EngineChooser
from cdl.merge_patch import merge_patch
from cdl.reconcile.base import Context
from tests.integration.operator_engines import ScriptedDataEngine
from tests.integration.test_operator_core import dpl


class RerunningEngine(ScriptedDataEngine):
    def run_status(self, key, run_id, request=None):
        return DataRunStatus(run_id, JobState.RUNNING, "Processing", "step 1/1", source_hash=self.fingerprint)


class MergingCluster:
    """Status writes applied as the API server applies a merge patch, and counted."""

    def __init__(self, body):
        self.body = copy.deepcopy(body)
        self.body["metadata"].update(namespace="ml", uid="u1", generation=1, resourceVersion="1")
        self.writes: list[dict] = []
        self.events: list[tuple] = []

    def patch_status(self, kind, namespace, name, patch):
        self.writes.append(copy.deepcopy(patch))
        self.body = merge_patch(self.body, {"status": patch})
        self.body["metadata"]["resourceVersion"] = str(int(self.body["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(self.body)

    def _bump(self):
        self.body["metadata"]["resourceVersion"] = str(int(self.body["metadata"]["resourceVersion"]) + 1)

    def add_finalizer(self, kind, namespace, name, finalizer, current, resource_version):
        if resource_version != self.body["metadata"]["resourceVersion"]:
            return None  # the JSON Patch's test fails: the object changed
        self.body["metadata"]["finalizers"] = [*current, finalizer]
        self._bump()
        return copy.deepcopy(self.body)

    def remove_finalizer(self, kind, namespace, name, finalizer, current):
        self.body["metadata"]["finalizers"] = [f for f in self.body["metadata"].get("finalizers", []) if f != finalizer]
        self._bump()

    def post_event(self, *args):
        self.events.append(args)

    def read_secret(self, namespace, name, key):
        raise AssertionError("no secrets here")


def controller_for(tmp_path, cluster, engine):
    config = OperatorConfig(data_dir=tmp_path / "state")
    engines = EngineChooser(config, overrides={"data": {"local": engine}})
    return Controller(Context(config=config, cluster=cluster, engines=engines), poll_seconds=60)


def test_a_pass_writes_only_changes_and_an_emptied_map_is_removed_not_rewritten(tmp_path):
    cluster = MergingCluster(dpl())
    engine = ScriptedDataEngine(tmp_path / "out", reports=True)
    ctl = controller_for(tmp_path, cluster, engine)
    key = ("DataPipeline", "ml", "news")
    ctl.observe("DataPipeline", None, cluster.body)
    ctl.process(key)  # starts the run
    deadline = time.monotonic() + 5
    while not engine.finished and time.monotonic() < deadline:
        time.sleep(0.01)
    ctl.process(key)  # the run finished
    assert cluster.body["status"]["phase"] == "Ready" and cluster.body["status"]["repos"]
    writes = len(cluster.writes)
    ctl.process(key)
    assert len(cluster.writes) == writes  # nothing changed, nothing written

    # The engine now reports the run as running again, with no repos (a rerun): the repos map is
    # removed once, not rewritten on every pass.
    ctl.context.engines._built[("data", "local")] = RerunningEngine(tmp_path / "out2")
    ctl.process(key)
    assert "repos" not in cluster.body["status"] and cluster.body["status"]["phase"] == "Processing"
    writes = len(cluster.writes)
    ctl.process(key)
    ctl.process(key)
    assert len(cluster.writes) == writes


def test_an_engine_report_queues_just_that_resource(tmp_path):
    cluster = MergingCluster(dpl())
    ctl = controller_for(tmp_path, cluster, ScriptedDataEngine(tmp_path / "out", reports=True))
    ctl.engine_changed("data", ResourceKey("ml", "news"))
    ctl.engine_changed("training", ResourceKey("ml", "train"))
    ctl.engine_changed("nothing-we-know", ResourceKey("ml", "x"))
    assert ctl.queue.depth() == {"DataPipeline/low": 1, "Experiment/low": 1}
    assert ctl.queue.get("DataPipeline", timeout=0) == ("DataPipeline", "ml", "news")


def test_the_finalizer_comes_before_any_engine_work_and_is_released_after_cleanup(tmp_path):
    cluster = MergingCluster(dpl())
    engine = ScriptedDataEngine(tmp_path / "out", reports=True)
    ctl = controller_for(tmp_path, cluster, engine)
    key = ("DataPipeline", "ml", "news")

    # A newer version than the one observed: the finalizer is not added over it and no run starts.
    ctl.observe("DataPipeline", None, cluster.body)
    cluster.body["metadata"]["resourceVersion"] = "5"
    ctl.process(key)
    assert "finalizers" not in cluster.body["metadata"] and not cluster.writes and engine.started == 0

    ctl.observe("DataPipeline", "MODIFIED", cluster.body)  # the watch brings it
    ctl.process(key)
    assert cluster.body["metadata"]["finalizers"] == ["cdl.dev/cleanup"]
    assert cluster.body["status"]["phase"] and engine.started == 1

    # Deleted: the engine's work is cleaned up, then the finalizer goes; no reconcile runs.
    cluster.body["metadata"]["deletionTimestamp"] = "2026-12-05T00:00:00Z"
    ctl.observe("DataPipeline", "MODIFIED", cluster.body)
    assert ctl.queue.get("DataPipeline", timeout=0) == key  # a deletion is queued ahead of follow-ups
    writes = len(cluster.writes)
    ctl.process(key)
    assert engine.calls.count("delete") == 1
    assert cluster.body["metadata"]["finalizers"] == [] and len(cluster.writes) == writes


def test_a_failing_cleanup_is_retried_when_transient_and_reported_otherwise(tmp_path):
    from cdl.errors import TransientError

    cluster = MergingCluster(dpl())
    cluster.body["metadata"].update(finalizers=["cdl.dev/cleanup"], deletionTimestamp="2026-12-05T00:00:00Z")
    engine = ScriptedDataEngine(tmp_path / "out", reports=True)
    ctl = controller_for(tmp_path, cluster, engine)
    key = ("DataPipeline", "ml", "news")
    ctl.observe("DataPipeline", None, cluster.body)
    failures = [TransientError("engine unreachable"), RuntimeError("engine refused")]

    def failing_cleanup(*_):
        raise failures.pop(0)

    engine.delete = failing_cleanup
    ctl.process(key)
    assert cluster.body["metadata"]["finalizers"] == ["cdl.dev/cleanup"]  # kept: retried later
    ctl.process(key)
    assert cluster.body["metadata"]["finalizers"] == []  # released, with a Warning saying why
    assert [e[5] for e in cluster.events if e[4] == "Warning"] == ["CleanupFailed"]
