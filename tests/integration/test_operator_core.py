"""The operator core on the embedded control plane with the real kopf operator.

The engines here are the small scripted engines of `operator_engines.py` (the real local
engines have their own tests); what is under test is the reconcile loop a user sees through the
Kubernetes API: phases, conditions, observedGeneration, Events, finalizers and restarts.
"""

from __future__ import annotations

import pytest

from tests.integration.operator_engines import (
    ScriptedDataEngine,
    ScriptedRegistryEngine,
    ScriptedServingEngine,
    ScriptedTrainingEngine,
)
from tests.plugins.operator import wait_for

G, V = "cdl.dev", "v1alpha1"
pytestmark = pytest.mark.slow


def engines(tmp_path, data_polls=1, train_polls=2):
    data = ScriptedDataEngine(tmp_path / "outputs", polls=data_polls)
    train = ScriptedTrainingEngine(polls=train_polls)
    reg, srv = ScriptedRegistryEngine(), ScriptedServingEngine()
    overrides = {"data": {"local": data}, "training": {"local": train}, "registry": {"local": reg},
                 "serving": {"local": srv}}
    return overrides, data, train, reg, srv


def dpl(name="news"):
    return {"apiVersion": f"{G}/{V}", "kind": "DataPipeline", "metadata": {"name": name},
            "spec": {"source": {"uri": "file:///data/news"}, "split": {"test": 0.2}}}


def exp(name="train", data="news", lr=0.1):
    return {"apiVersion": f"{G}/{V}", "kind": "Experiment", "metadata": {"name": name},
            "spec": {"data": {"pipelineRef": {"name": data}},
                     "model": {"path": "usecases/bbc-news/manifests", "entrypoint": "model_def:Trial"},
                     "hyperparameters": {"lr": lr}, "searcher": {"name": "single", "metric": "validation_accuracy"}}}


def mv(name="clf-v1", experiment="train"):
    return {"apiVersion": f"{G}/{V}", "kind": "ModelVersion", "metadata": {"name": name},
            "spec": {"model": "clf", "source": {"experimentRef": {"name": experiment}}, "stage": "staging"}}


def dep(name="clf", version="clf-v1"):
    return {"apiVersion": f"{G}/{V}", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"modelVersionRef": {"name": version}, "predictor": "serve:P"}}


PLURAL = {"DataPipeline": "datapipelines", "Experiment": "experiments", "ModelVersion": "modelversions",
          "Deployment": "deployments"}


def create(custom, ns, body):
    return custom.create_namespaced_custom_object(G, V, ns, PLURAL[body["kind"]], body)


def get(custom, ns, kind, name):
    return custom.get_namespaced_custom_object(G, V, ns, PLURAL[kind], name)


def phase_is(custom, ns, kind, name, phase):
    def check():
        st = get(custom, ns, kind, name).get("status") or {}
        return st if st.get("phase") == phase else None
    return check


def cond(status, type_):
    return next((c for c in status.get("conditions", []) if c["type"] == type_), None)


def events(core, ns, name):
    return [(e.type, e.reason, e.message) for e in core.list_namespaced_event(ns).items
            if e.involved_object.name == name]


def test_the_chain_reaches_ready_and_waits_on_dependencies(operator_runner, k8s, namespace, tmp_path, kubectl):
    custom, core = k8s
    overrides, data, train, reg, srv = engines(tmp_path)
    with operator_runner(tmp_path / "state", overrides):
        # Created out of order: everything downstream waits, saying on what.
        create(custom, namespace, dep())
        create(custom, namespace, mv())
        create(custom, namespace, exp())
        st = wait_for(phase_is(custom, namespace, "Experiment", "train", "Pending"), what="Experiment Pending")
        assert "waiting for DataPipeline news" in st["message"]
        assert cond(st, "Ready")["status"] == "False"
        st = wait_for(phase_is(custom, namespace, "Deployment", "clf", "Pending"), what="Deployment Pending")
        assert "ModelVersion clf-v1" in st["message"]
        assert train.calls.count("submit") == 0

        create(custom, namespace, dpl())
        st = wait_for(phase_is(custom, namespace, "Deployment", "clf", "Available"), timeout=60, what="Available")
        assert st["url"].startswith("http://")
        assert st["replicas"] == {"desired": 1, "ready": 1}
        # Promotion to the stage the spec asks for follows registration in a later pass.
        wait_for(lambda: get(custom, namespace, "ModelVersion", "clf-v1")["status"].get("stage") == "staging",
                 timeout=30, what="ModelVersion promoted to staging")

    d = get(custom, namespace, "DataPipeline", "news")["status"]
    e = get(custom, namespace, "Experiment", "train")["status"]
    m = get(custom, namespace, "ModelVersion", "clf-v1")["status"]
    assert d["outputs"]["train"]["commit"] == "c-v1-train"
    assert e["phase"] == "Completed" and e["bestMetric"] == 0.91
    assert e["data"] == {"repo": "news-train", "commit": "c-v1-train"}
    assert e["engineRef"]["id"] == "exp-train-g1-r1"
    assert m["version"] == 1 and m["stage"] == "staging" and m["lineage"]["data"]["commit"] == "c-v1-train"
    for kind, name in (("DataPipeline", "news"), ("Experiment", "train"), ("ModelVersion", "clf-v1"),
                       ("Deployment", "clf")):
        status = get(custom, namespace, kind, name)["status"]
        assert cond(status, "Ready")["status"] == "True", (kind, status)
        assert status["observedGeneration"] == 1
    assert train.calls.count("submit") == 1
    assert ("Normal", "Submitted", e["message"].split(";")[0]) in events(core, namespace, "train") or any(
        r == "Submitted" for _, r, _ in events(core, namespace, "train"))
    # kubectl wait works on every kind, and kubectl get cdl lists them all.
    out = kubectl("wait", "-n", namespace, "--for=condition=Ready", "experiments.cdl.dev/train", "--timeout=10s")
    assert out.returncode == 0, out.stderr
    out = kubectl("get", "cdl", "-n", namespace)
    assert out.returncode == 0 and "clf-v1" in out.stdout and "news" in out.stdout


def test_two_teams_applying_the_same_manifests_each_get_version_1(operator_runner, k8s, namespace, tmp_path,
                                                                  postgres_url, postgres_schema):
    """A namespace is a team's boundary: model `clf` is version 1 and staging in each team's
    namespace, kept apart in PostgreSQL and registered under names that carry the namespace."""
    from kubernetes import client

    from cdl.stores.postgres import Database

    custom, core = k8s
    other = f"{namespace[:50]}-b"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    db = Database(postgres_url, schema=postgres_schema)
    db.migrate()
    overrides, _, _, reg, _ = engines(tmp_path)
    url = f"{postgres_url}{'&' if '?' in postgres_url else '?'}options=-csearch_path%3D{postgres_schema}"
    with operator_runner(tmp_path / "state", overrides, database_url=url):
        for team in (namespace, other):
            for body in (dpl(), exp(), mv()):
                create(custom, team, body)
        for team in (namespace, other):
            wait_for(lambda t=team: get(custom, t, "ModelVersion", "clf-v1").get("status", {}).get("stage") == "staging",
                     timeout=60, what=f"clf-v1 staging in {team}")
    for team in (namespace, other):
        assert get(custom, team, "ModelVersion", "clf-v1")["status"]["version"] == 1
        assert [(v.version, v.stage) for v in db.model_versions("clf", namespace=team)] == [(1, "staging")]
        assert reg.stages[(f"{team}.clf", 1)] == "staging"
    assert {who for what, who in reg.calls.log if what == "register"} == {f"{namespace}.clf:1", f"{other}.clf:1"}
    db.close()


def test_spec_update_is_reconciled_with_observed_generation(operator_runner, k8s, namespace, tmp_path):
    custom, _ = k8s
    overrides, data, train, *_ = engines(tmp_path, train_polls=1)
    with operator_runner(tmp_path / "state", overrides):
        create(custom, namespace, dpl())
        create(custom, namespace, exp())
        wait_for(phase_is(custom, namespace, "Experiment", "train", "Completed"), timeout=60, what="Completed")
        custom.patch_namespaced_custom_object(G, V, namespace, "experiments", "train",
                                              {"spec": {"hyperparameters": {"lr": 0.01}}})
        st = wait_for(lambda: (s := get(custom, namespace, "Experiment", "train")["status"])["observedGeneration"] == 2
                      and s["phase"] == "Completed" and s, timeout=60, what="generation 2 completed")
    assert st["engineRef"]["generation"] == "2"
    assert [r.spec.hyperparameters["lr"] for r in train.requests] == [0.1, 0.01]


def test_operator_restart_mid_run_does_not_submit_twice(operator_runner, k8s, namespace, tmp_path):
    custom, _ = k8s
    overrides, data, train, *_ = engines(tmp_path)
    train.hold.set()
    with operator_runner(tmp_path / "state", overrides):
        create(custom, namespace, dpl())
        create(custom, namespace, exp())
        wait_for(phase_is(custom, namespace, "Experiment", "train", "Running"), timeout=60, what="Running")
    # The operator is gone while the experiment runs; a new one takes over.
    train.hold.clear()
    with operator_runner(tmp_path / "state", overrides):
        wait_for(phase_is(custom, namespace, "Experiment", "train", "Completed"), timeout=60, what="Completed")
    assert train.calls.count("submit") == 1
    assert data.calls.count("start_run") == 1


def test_delete_cleans_up_unless_kept(operator_runner, k8s, namespace, tmp_path):
    custom, _ = k8s
    overrides, data, train, *_ = engines(tmp_path)
    with operator_runner(tmp_path / "state", overrides):
        create(custom, namespace, dpl("gone"))
        kept = dpl("kept")
        kept["metadata"]["annotations"] = {"cdl.dev/keep-on-delete": "true"}
        create(custom, namespace, kept)
        for name in ("gone", "kept"):
            wait_for(phase_is(custom, namespace, "DataPipeline", name, "Ready"), timeout=60, what=f"{name} Ready")
            custom.delete_namespaced_custom_object(G, V, namespace, "datapipelines", name)

        def both_gone():
            names = {i["metadata"]["name"] for i in custom.list_namespaced_custom_object(
                G, V, namespace, "datapipelines")["items"]}
            return not names
        wait_for(both_gone, timeout=30, what="finalizers released")
    assert data.calls.count("delete", f"{namespace}/gone") == 1
    assert data.calls.count("delete", f"{namespace}/kept") == 0


def test_a_namespace_created_later_is_followed_and_a_deletion_while_no_operator_ran_is_cleaned_up(
        operator_runner, k8s, namespace, tmp_path):
    """The operator watches each namespace on its own stream: one created after it started is
    picked up; a resource deleted while no operator ran is held by its finalizer and cleaned up
    when one starts."""
    import time

    from kubernetes import client

    custom, core = k8s
    overrides, data, *_ = engines(tmp_path)
    later = f"{namespace[:40]}-later"
    with operator_runner(tmp_path / "state", overrides):
        create(custom, namespace, dpl("early"))
        wait_for(phase_is(custom, namespace, "DataPipeline", "early", "Ready"), timeout=60, what="early Ready")
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=later)))
        create(custom, later, dpl("late"))
        status = wait_for(phase_is(custom, later, "DataPipeline", "late", "Ready"), timeout=60, what="late Ready")
        assert status["observedGeneration"] == 1
        assert "cdl.dev/cleanup" in get(custom, later, "DataPipeline", "late")["metadata"]["finalizers"]
    custom.delete_namespaced_custom_object(G, V, namespace, "datapipelines", "early")
    time.sleep(1.0)
    held = get(custom, namespace, "DataPipeline", "early")
    assert held["metadata"].get("deletionTimestamp"), "the finalizer holds a deleted resource for the operator"
    assert data.calls.count("delete", f"{namespace}/early") == 0
    with operator_runner(tmp_path / "state", overrides):
        def gone():
            names = {i["metadata"]["name"] for i in custom.list_namespaced_custom_object(
                G, V, namespace, "datapipelines")["items"]}
            return "early" not in names
        wait_for(gone, timeout=30, what="the deleted resource released")
    assert data.calls.count("delete", f"{namespace}/early") == 1


def test_transient_engine_error_is_retried_and_shown(operator_runner, k8s, namespace, tmp_path):
    custom, core = k8s
    overrides, data, train, *_ = engines(tmp_path)
    train.faults.transient["submit"] = 2
    with operator_runner(tmp_path / "state", overrides):
        create(custom, namespace, dpl())
        create(custom, namespace, exp())

        def unavailable():
            st = get(custom, namespace, "Experiment", "train").get("status") or {}
            c = cond(st, "EngineAvailable")
            return st if c and c["status"] == "False" else None
        st = wait_for(unavailable, timeout=60, what="EngineAvailable=False")
        assert "connection refused" in cond(st, "EngineAvailable")["message"]
        assert st.get("phase") != "Failed"
        st = wait_for(phase_is(custom, namespace, "Experiment", "train", "Completed"), timeout=60, what="recovered")
    assert cond(st, "EngineAvailable")["status"] == "True"
    assert train.calls.count("submit") == 1
    assert any(t == "Warning" and r == "EngineUnavailable" for t, r, _ in events(core, namespace, "train"))


def test_permanent_failure_is_surfaced(operator_runner, k8s, namespace, tmp_path, kubectl):
    custom, core = k8s
    overrides, data, train, *_ = engines(tmp_path)
    data.faults.permanent["start_run"] = "source file:///data/news does not exist"
    with operator_runner(tmp_path / "state", overrides):
        create(custom, namespace, dpl())
        st = wait_for(phase_is(custom, namespace, "DataPipeline", "news", "Failed"), timeout=60, what="Failed")
    assert st["message"] == "source file:///data/news does not exist"
    ready = cond(st, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "EngineFailed"
    assert ("Warning", "EngineFailed", "source file:///data/news does not exist") in events(core, namespace, "news")
    out = kubectl("get", "dpl", "news", "-n", namespace)
    assert "Failed" in out.stdout


def test_a_secret_value_never_reaches_status_or_events(operator_runner, k8s, namespace, tmp_path):
    """An engine error quoting a Secret's value (a URL with a password, say) is masked in the
    status and the Event, as it is in the log."""
    from cdl.controller.redaction import MASK, redact_value

    custom, core = k8s
    overrides, data, *_ = engines(tmp_path)
    secret = "s3cr3t-pa55w0rd-xyz"
    redact_value(secret)  # as KubeClusterView.read_secret does for every Secret value it reads
    data.faults.permanent["start_run"] = f"cannot reach postgresql://cdl:{secret}@db/cdl"
    with operator_runner(tmp_path / "state", overrides):
        create(custom, namespace, dpl())
        st = wait_for(phase_is(custom, namespace, "DataPipeline", "news", "Failed"), timeout=60, what="Failed")
        seen = wait_for(lambda: [m for _, r, m in events(core, namespace, "news") if r == "EngineFailed"], 30,
                        "the EngineFailed Event")
    assert st["message"] == f"cannot reach postgresql://cdl:{MASK}@db/cdl"
    assert secret not in str(st) and secret not in str(seen)
    assert seen == [f"cannot reach postgresql://cdl:{MASK}@db/cdl"]


def test_kopfs_own_events_are_redacted_like_log_lines():
    """kopf posts its records as Events through a handler on `kopf.objects`, not below the root
    logger's handlers: the redaction filter sits on that logger too."""
    import io
    import logging

    import kopf  # noqa: F401 - attaches its Event poster to kopf.objects

    from cdl.controller import redaction

    redaction.install()
    redaction.redact_value("another-secret-value")
    out = io.StringIO()
    capture = logging.StreamHandler(out)  # formats records as kopf's Event poster does
    objects = logging.getLogger("kopf.objects")
    objects.addHandler(capture)
    try:
        try:
            raise RuntimeError("login failed with another-secret-value")
        except RuntimeError:
            objects.error("handler failed: %s", "another-secret-value", exc_info=True)
    finally:
        objects.removeHandler(capture)
    assert "another-secret-value" not in out.getvalue()
    assert "handler failed: ***" in out.getvalue() and "RuntimeError: login failed with ***" in out.getvalue()


def test_a_label_studio_url_outside_the_allow_list_fails_before_any_secret_is_read(operator_runner, k8s, namespace,
                                                                                    tmp_path):
    """labelStudio.tokenSecretRef is sent to labelStudio.url: with the operator's allow-list, a
    DataPipeline naming another server fails on the field (its Secret is never read: it does not
    even exist here, which would otherwise keep the resource waiting for it)."""
    custom, _ = k8s
    overrides, *_ = engines(tmp_path)
    with operator_runner(tmp_path / "state", overrides, label_studio_urls=["https://ls.example.com"]):
        pipeline = dpl()
        pipeline["spec"]["labeling"] = {"labelStudio": {
            "url": "https://ls.example.com.attacker.io", "project": "news",
            "tokenSecretRef": {"name": "any-secret-of-the-namespace", "key": "token"}}}
        create(custom, namespace, pipeline)
        st = wait_for(phase_is(custom, namespace, "DataPipeline", "news", "Failed"), timeout=60, what="Failed")
    assert "spec.labeling.labelStudio.url: https://ls.example.com.attacker.io is not a Label Studio server" \
        in st["message"]


def test_the_label_studio_allow_list_matches_servers_not_prefixes_of_names():
    from cdl.config import OperatorConfig

    config = OperatorConfig.load(env={"CDL_LABEL_STUDIO_URLS": "https://ls.example.com, http://10.0.0.5:8080/ls"})
    assert config.label_studio_allowed("https://ls.example.com/")
    assert config.label_studio_allowed("https://LS.example.com/projects")
    assert config.label_studio_allowed("http://10.0.0.5:8080/ls/api")
    for url in ("https://ls.example.com.attacker.io", "http://ls.example.com", "https://ls.example.com:444",
                "http://10.0.0.5:8080/lsx", "https://evil.io/?https://ls.example.com"):
        assert not config.label_studio_allowed(url), url
    assert OperatorConfig.load(env={}).label_studio_allowed("https://anything.io")  # no list: any


def test_invalid_spec_fails_with_the_field(operator_runner, k8s, namespace, tmp_path):
    custom, _ = k8s
    overrides, *_ = engines(tmp_path)
    with operator_runner(tmp_path / "state", overrides):
        bad = exp()
        bad["spec"]["hyperparameters"] = {"lr": {"type": "gaussian"}}
        create(custom, namespace, bad)
        st = wait_for(phase_is(custom, namespace, "Experiment", "train", "Failed"), timeout=30, what="Failed")
    assert "spec.hyperparameters.lr.type" in st["message"]
    assert cond(st, "Ready")["reason"] == "InvalidSpec"


def test_drift_in_scoring_data_starts_a_retrain(operator_runner, k8s, namespace, tmp_path, postgres_url):
    """Model Maintenance: predictions that drift from the training label distribution raise an
    Event and start a new run of the Experiment named in monitoring.retrain."""
    from cdl.stores.postgres import Database
    from cdl.stores.records import ScoringRow

    custom, core = k8s
    overrides, data, train, *_ = engines(tmp_path, train_polls=0)
    for label in ("business", "sport", "tech"):  # the training output the model learned from
        folder = tmp_path / "outputs" / "news" / label
        folder.mkdir(parents=True)
        for i in range(10):
            (folder / f"{i}.txt").write_text("x")
    deployment = dep()
    deployment["spec"]["monitoring"] = {"drift": {"threshold": 0.2, "window": 50},
                                        "retrain": {"experimentRef": {"name": "train"}}}
    with operator_runner(tmp_path / "state", overrides, database_url=postgres_url):
        for body in (dpl(), exp(), mv(), deployment):
            create(custom, namespace, body)
        wait_for(phase_is(custom, namespace, "Deployment", "clf", "Available"), timeout=60, what="Available")
        db = Database(postgres_url)
        db.insert_scoring_rows([
            ScoringRow(namespace=namespace, deployment="clf", model_version="clf-v1", status_code=200,
                       latency_ms=3.0, request={"data": {"ndarray": ["t"]}},
                       response={"data": {"ndarray": ["sport"]}})  # everything is sport now
            for _ in range(60)
        ])
        st = wait_for(lambda: (s := get(custom, namespace, "Deployment", "clf")["status"]).get(
            "monitoring", {}).get("driftDetected") and s, timeout=60, what="drift detected")
        assert st["monitoring"]["drift"] > 0.2 and st["monitoring"]["requests"] == 50  # the window
        assert st["monitoring"]["lastRetrain"]
        run2 = wait_for(lambda: (s := get(custom, namespace, "Experiment", "train")["status"]).get("run") == 2 and s,
                        timeout=60, what="retrain run 2")
        assert run2["engineRef"]["run"] == "2"
    assert [r.run for r in train.requests] == [1, 2]
    assert any(r == "DriftDetected" for _, r, _ in events(core, namespace, "clf"))
    assert any(r == "RetrainStarted" for _, r, _ in events(core, namespace, "clf"))
