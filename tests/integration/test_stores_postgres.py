"""The PostgreSQL records against a real PostgreSQL 16 (pgserver), one fresh schema per test."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from cdl.errors import TransientError
from cdl.stores.embedded_postgres import EmbeddedPostgres
from cdl.stores.errors import InvalidTableName, MigrationError, RecordNotFound, StoreError, StoreUnavailable
from cdl.stores.migrations import Migration, apply_migrations, load_migrations
from cdl.stores.postgres import Database
from cdl.stores.records import ExperimentRun, LabelRow, ScoringRow, TrialMetric, TrialRecord

pytestmark = pytest.mark.slow

TABLES = {"labels", "experiments_runs", "trials", "trial_metrics", "model_versions", "lineage_edges", "scoring_data",
          "scoring_rejects",
          "cdl_schema_migrations"}


def _tables(url: str, schema: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                            (schema,)).fetchall()
    return {r[0] for r in rows}


# -- migrations --------------------------------------------------------------------------------


def test_migrations_are_versioned_and_run_once(postgres_url, postgres_schema):
    db = Database(postgres_url, schema=postgres_schema)
    assert db.schema_version() == 0

    shipped = [m.version for m in load_migrations()]
    assert db.migrate() == shipped
    assert db.migrate() == []  # idempotent: every operator start calls it
    assert db.schema_version() == shipped[-1]
    assert _tables(postgres_url, postgres_schema) == TABLES
    with psycopg.connect(postgres_url) as conn:
        applied = conn.execute(f"SELECT version, name FROM {postgres_schema}.cdl_schema_migrations").fetchall()
    assert applied == [(m.version, m.name) for m in load_migrations()]

    # a later release ships one more: only it is applied
    nxt = len(load_migrations()) + 1
    extra = Migration(nxt, "label_confidence", "ALTER TABLE labels ADD COLUMN confidence real;")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert apply_migrations(conn, [*load_migrations(), extra], postgres_schema) == [nxt]
        assert apply_migrations(conn, [*load_migrations(), extra], postgres_schema) == []
        # editing a migration that was applied already is refused, not silently ignored
        edited = Migration(nxt, "label_confidence", "ALTER TABLE labels ADD COLUMN confidence double precision;")
        with pytest.raises(MigrationError, match=f"{nxt:04d}_label_confidence was changed after it was applied"):
            apply_migrations(conn, [*load_migrations(), edited], postgres_schema)
    assert db.schema_version() == nxt
    db.close()


def test_using_a_database_that_was_not_migrated_says_so(postgres_url, postgres_schema):
    db = Database(postgres_url, schema=postgres_schema)
    with pytest.raises(StoreError, match="is the schema migrated"):
        db.next_model_version("news")
    db.close()


def test_a_failing_migration_is_rolled_back_and_named(postgres_url, postgres_schema):
    nxt = len(load_migrations()) + 1
    broken = Migration(nxt, "broken", "CREATE TABLE half_done (x int); SELECT no_such_function();")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        with pytest.raises(MigrationError, match=f"migration {nxt:04d}_broken failed"):
            apply_migrations(conn, [*load_migrations(), broken], postgres_schema)
    assert "half_done" not in _tables(postgres_url, postgres_schema)
    # the shipped ones stay applied
    assert Database(postgres_url, schema=postgres_schema).schema_version() == nxt - 1


def test_two_operators_migrating_at_once_apply_each_migration_once(postgres_url, postgres_schema):
    barrier = threading.Barrier(2)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def start_operator() -> None:
        db = Database(postgres_url, schema=postgres_schema)
        try:
            barrier.wait()
            results.append(db.migrate())
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=start_operator) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert sorted(results) == [[], [m.version for m in load_migrations()]]
    assert _tables(postgres_url, postgres_schema) == TABLES


# -- labels ------------------------------------------------------------------------------------


def _labels(label_of_b: str = "tech") -> list[LabelRow]:
    annotated = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    common = dict(namespace="ml", pipeline="bbc-news", repo="bbc-news-train", commit="c0ffee")
    return [
        LabelRow(**common, path="/business/001.txt", label="business", labeler="ann@example.com",
                 annotated_at=annotated, split="train", project="bbc-news", task_id=1),
        LabelRow(**common, path="/tech/002.txt", label=label_of_b, labeler="ann@example.com", annotated_at=annotated,
                 split="train", project="bbc-news", task_id=2),
        LabelRow(**common, path="/sport/003.txt", label="sport", split="train", source="auto"),
    ]


def test_label_export_is_idempotent(database):
    assert database.upsert_labels("labels", _labels()) == 3
    first = database.labels(namespace="ml", pipeline="bbc-news")
    assert [(r.path, r.label, r.source) for r in first] == [
        ("/business/001.txt", "business", "labelstudio"), ("/sport/003.txt", "sport", "auto"),
        ("/tech/002.txt", "tech", "labelstudio")]
    assert first[0].annotated_at == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert first[0].exported_at is not None

    # exporting again (one label corrected) updates in place: still three rows
    assert database.upsert_labels("labels", _labels(label_of_b="business")) == 3
    again = database.labels(namespace="ml", pipeline="bbc-news", repo="bbc-news-train", commit="c0ffee")
    assert len(again) == 3
    assert {r.path: r.label for r in again}["/tech/002.txt"] == "business"
    assert database.labels(namespace="ml", pipeline="bbc-news", commit="other") == []
    assert database.upsert_labels("labels", []) == 0


def test_a_pipeline_can_export_into_its_own_table(database, postgres_url, postgres_schema):
    assert database.ensure_labels_table("bbc_news_labels") == "bbc_news_labels"
    assert database.ensure_labels_table("bbc_news_labels") == "bbc_news_labels"  # again: nothing changes
    database.upsert_labels("bbc_news_labels", _labels())
    database.upsert_labels("bbc_news_labels", _labels())
    assert len(database.labels("bbc_news_labels", namespace="ml", pipeline="bbc-news")) == 3
    assert database.labels(namespace="ml", pipeline="bbc-news") == []  # the default table is untouched

    def columns(table: str) -> list[tuple]:
        with psycopg.connect(postgres_url) as conn:
            return conn.execute(
                "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                (postgres_schema, table)).fetchall()

    assert columns("bbc_news_labels") == columns("labels")


def test_a_database_that_was_never_migrated_can_hold_a_labels_table(postgres_url, postgres_schema):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {postgres_schema}")
    db = Database(postgres_url, schema=postgres_schema)
    db.ensure_labels_table("team_labels")
    assert db.upsert_labels("team_labels", _labels()) == 3
    db.close()


@pytest.mark.parametrize("name", ["Bad-Name", "1labels", "labels; DROP TABLE trials", "a" * 64, "", "trials",
                                  "model_versions", "étiquettes"])
def test_bad_labels_table_names_are_refused_with_the_rule(database, name, postgres_url, postgres_schema):
    with pytest.raises(InvalidTableName) as err:
        database.ensure_labels_table(name)
    message = str(err.value)
    assert repr(name) in message
    assert "^[a-z_][a-z0-9_]{0,62}$" in message or "cdl's own tables" in message
    with pytest.raises(InvalidTableName):
        database.upsert_labels(name, _labels())
    assert _tables(postgres_url, postgres_schema) == TABLES  # nothing created, nothing dropped


def test_an_existing_table_that_is_not_a_labels_table_is_refused(database):
    with database.transaction() as cur:
        cur.execute("CREATE TABLE customers (id int)")
    with pytest.raises(Exception, match="lacks column"):
        database.ensure_labels_table("customers")


# -- experiment runs, trials, metrics ----------------------------------------------------------


def test_runs_trials_and_metrics_round_trip(database):
    run = ExperimentRun(run_id="ml-bbc-asha-1", namespace="ml", experiment="bbc-asha", engine="local",
                        state="Running", generation=1, spec={"searcher": {"name": "asha", "maxTrials": 4}},
                        data_repo="bbc-news-train", data_commit="c0ffee")
    database.record_run(run)
    trial = TrialRecord(
        run_id=run.run_id, trial_id="2", state="COMPLETED", hparams={"learning_rate": 0.01, "hidden_size": 128},
        stop_reason="early_stopping", metadata={"framework": "torch", "version": "2.13.0", "params": 640004,
                                                "layers": ["Embedding", "Linear"], "seed": 42},
        wall_seconds=12.5, cpu_seconds=20.25, peak_rss_bytes=512 * 1024 * 1024, gpu_utilization=None,
        best_metric=0.93, checkpoint_uuid="ck-2", checkpoint_uri="file:///ck/ck-2")
    database.record_trial(trial)
    database.record_trial(TrialRecord(run_id=run.run_id, trial_id="10", state="RUNNING"))

    got = database.trials(run.run_id)
    assert [t.trial_id for t in got] == ["2", "10"]  # numeric ids in numeric order
    assert got[0].hparams == trial.hparams and got[0].metadata == trial.metadata
    assert (got[0].stop_reason, got[0].wall_seconds, got[0].peak_rss_bytes, got[0].best_metric) == (
        "early_stopping", 12.5, 512 * 1024 * 1024, 0.93)
    assert got[0].checkpoint_uri == "file:///ck/ck-2" and got[0].updated_at is not None

    metrics = [
        TrialMetric(run.run_id, "2", "training", batches=100, epoch=1.0, metrics={"loss": 0.9}),
        TrialMetric(run.run_id, "2", "validation", batches=100, epoch=1.0, metrics={"validation_accuracy": 0.81}),
        TrialMetric(run.run_id, "2", "training", batches=200, epoch=2.0, metrics={"loss": float("nan")}),
    ]
    assert database.record_metrics(metrics) == 3
    # the same report again (a restarted operator replaying events) replaces, never duplicates
    database.record_metrics([TrialMetric(run.run_id, "2", "training", batches=100, epoch=1.0, metrics={"loss": 0.8})])
    training = database.trial_metrics(run.run_id, "2", kind="training")
    assert [(m.batches, m.metrics) for m in training] == [(100, {"loss": 0.8}), (200, {"loss": None})]
    assert [m.metrics for m in database.trial_metrics(run.run_id, kind="validation")] == [
        {"validation_accuracy": 0.81}]
    assert len(database.trial_metrics(run.run_id)) == 3

    database.set_run_state(run.run_id, "Completed", finished=True)
    stored = database.get_run(run.run_id)
    assert stored.state == "Completed" and stored.finished_at is not None
    assert stored.spec == run.spec and stored.data_commit == "c0ffee"
    assert [r.run_id for r in database.runs("ml", "bbc-asha")] == [run.run_id]

    with pytest.raises(RecordNotFound, match="record_run first"):
        database.record_trial(TrialRecord(run_id="no-such-run", trial_id="1", state="RUNNING"))
    with pytest.raises(RecordNotFound):
        database.set_run_state("no-such-run", "Failed")

    assert database.delete_run(run.run_id)
    assert database.trials(run.run_id) == [] and database.trial_metrics(run.run_id) == []


# -- model versions ----------------------------------------------------------------------------


def test_model_version_numbers_increase_per_model_under_concurrency(database):
    barrier = threading.Barrier(2)
    got: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def register(worker: str) -> None:
        try:
            barrier.wait()
            got[worker] = [database.next_model_version("news-classifier") for _ in range(15)]
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(w,)) for w in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert sorted(got["a"] + got["b"]) == list(range(1, 31))  # no number twice, none skipped
    assert all(seq == sorted(seq) for seq in got.values())  # each caller sees them increase
    assert database.next_model_version("fashion-mnist") == 1  # numbering is per model name
    assert database.next_model_version("news-classifier") == 31


def test_model_version_register_evaluate_promote(database):
    version = database.next_model_version("news", namespace="ml", resource="news-v1")
    # a retried registration of the same resource gets the same number back (no gap)
    assert database.next_model_version("news", namespace="ml", resource="news-v1") == version == 1
    database.record_model_version(
        "news", version, namespace="ml", resource="news-v1", stage="candidate",
        artifact={"uri": "file:///a/news/1/package.tar", "sha256": "ab" * 32, "bytes": 1234, "format": "torch"},
        lineage={"experiment": "bbc-asha", "trial": "2", "data": {"repo": "bbc-news-train", "commit": "c0ffee"}})
    assert database.next_model_version("news", namespace="ml", resource="news-v1") == 2  # 1 is taken now

    database.record_evaluation("news", version, metrics={"accuracy": 0.91, "f1": 0.9},
                               gates=[{"metric": "accuracy", "passed": True, "value": 0.91, "threshold": 0.7}],
                               passed=True, report_uri="file:///a/reports/news/1/report.md", namespace="ml")
    database.set_model_stage("news", version, "production", namespace="ml")
    record = database.get_model_version("news", version, namespace="ml")
    assert (record.stage, record.passed, record.metrics["accuracy"], record.artifact_bytes) == (
        "production", True, 0.91, 1234)
    assert record.lineage["data"]["commit"] == "c0ffee"
    assert record.gates[0]["metric"] == "accuracy" and record.promoted_at is not None
    assert database.model_in_stage("news", "production", namespace="ml").version == version
    assert [v.version for v in database.model_versions("news", namespace="ml")] == [1, 2]

    with pytest.raises(RecordNotFound, match="ml/news version 99 is not recorded"):
        database.set_model_stage("news", 99, "staging", namespace="ml")
    with pytest.raises(ValueError, match="expected one of candidate, staging, production, archived"):
        database.set_model_stage("news", version, "prod", namespace="ml")


def test_versions_and_stages_are_per_namespace(database):
    """A namespace is a team's boundary: the same model name counts 1, 2 ... in each, and each
    has its own production version."""
    for team in ("team-a", "team-b"):
        version = database.next_model_version("digits", namespace=team, resource="digits-v1")
        assert version == 1
        database.record_model_version("digits", version, namespace=team, resource="digits-v1", stage="candidate",
                                      artifact={"uri": f"file:///{team}/digits/1", "sha256": "ab" * 32})
        database.set_model_stage("digits", version, "production", namespace=team)
    assert database.next_model_version("digits", namespace="team-a", resource="digits-v2") == 2
    assert [v.version for v in database.model_versions("digits", namespace="team-b")] == [1]
    database.set_model_stage("digits", 1, "archived", namespace="team-a")
    assert database.model_in_stage("digits", "production", namespace="team-a") is None
    assert database.model_in_stage("digits", "production", namespace="team-b").artifact_uri == \
        "file:///team-b/digits/1"


# -- lineage -----------------------------------------------------------------------------------


def test_lineage_chain_walks_from_a_deployment_back_to_its_data(database):
    chain = [
        ("data_commit", "bbc-news-train@c0ffee", "experiment_run", "ml/bbc-asha/1", "trained_on"),
        ("experiment_run", "ml/bbc-asha/1", "trial", "ml/bbc-asha/1/2", "ran"),
        ("trial", "ml/bbc-asha/1/2", "checkpoint", "ck-2", "saved"),
        ("checkpoint", "ck-2", "model_version", "news/1", "registered_as"),
        ("model_version", "news/1", "deployment", "ml/news-api", "served_by"),
    ]
    for edge in chain:
        database.add_lineage(*edge, attrs={"by": "test"})
    database.add_lineage(*chain[0], attrs={"by": "test", "files": 2225})  # recorded again: updated, not doubled
    database.add_lineage("data_commit", "other@1", "experiment_run", "ml/other/1", "trained_on")  # unrelated

    upstream = database.lineage_chain("deployment", "ml/news-api")
    assert [(e.from_kind, e.to_kind, e.depth) for e in upstream] == [
        ("model_version", "deployment", 1), ("checkpoint", "model_version", 2), ("trial", "checkpoint", 3),
        ("experiment_run", "trial", 4), ("data_commit", "experiment_run", 5)]
    assert upstream[-1].from_id == "bbc-news-train@c0ffee" and upstream[-1].attrs == {"by": "test", "files": 2225}

    downstream = database.lineage_chain("data_commit", "bbc-news-train@c0ffee", direction="downstream")
    assert [e.to_id for e in downstream] == ["ml/bbc-asha/1", "ml/bbc-asha/1/2", "ck-2", "news/1", "ml/news-api"]
    assert database.lineage_chain("deployment", "ml/unknown") == []

    # a cycle (a retrained model fed back as data) is walked once, not forever
    database.add_lineage("deployment", "ml/news-api", "data_commit", "bbc-news-train@c0ffee", "scored_into")
    assert len(database.lineage_chain("deployment", "ml/news-api")) == 6


# -- scoring data ------------------------------------------------------------------------------


def test_scoring_rows_batch_insert_and_window(database):
    start = datetime(2025, 6, 1, tzinfo=UTC)
    rows = [
        ScoringRow(namespace="ml", deployment="news-api", model_version="news-3", status_code=200,
                   latency_ms=2.0 + i % 5, request={"data": {"ndarray": [[i]]}},
                   response={"data": {"ndarray": [["tech" if i % 2 else "sport"]]}}, shadow=(i % 10 == 0),
                   created_at=start + timedelta(seconds=i))
        for i in range(250)
    ]
    rows.append(ScoringRow(namespace="ml", deployment="news-api", model_version="news-3", status_code=500,
                           latency_ms=9.5, request={"data": {"ndarray": [["x"]]}},
                           response=None, error="predictor raised ValueError", created_at=start + timedelta(hours=1)))
    rows.append(ScoringRow(namespace="other", deployment="news-api", model_version="x", status_code=200,
                           latency_ms=1.0, created_at=start + timedelta(hours=2)))
    assert database.insert_scoring_rows(rows) == 252
    assert database.insert_scoring_rows([]) == 0

    window = database.scoring_window("ml", "news-api", 100)
    assert len(window) == 100
    assert [r.created_at for r in window] == sorted(r.created_at for r in window)  # oldest first
    assert window[-1].status_code == 500 and window[-1].error == "predictor raised ValueError"
    assert window[-1].response is None
    assert window[0].created_at == start + timedelta(seconds=151)  # the newest 100 of 251
    assert window[0].request == {"data": {"ndarray": [[151]]}}

    live = database.scoring_window("ml", "news-api", 1000, shadow=False)
    shadow = database.scoring_window("ml", "news-api", 1000, shadow=True)
    assert (len(live), len(shadow)) == (226, 25)
    assert all(r.namespace == "ml" for r in live + shadow)

    assert database.delete_scoring_rows("ml", "news-api", before=start + timedelta(seconds=200)) == 200
    assert len(database.scoring_window("ml", "news-api", 1000)) == 51
    assert len(database.scoring_window("other", "news-api", 10)) == 1


def test_json_values_postgres_cannot_hold_are_stored_as_null(database):
    database.insert_scoring_rows([ScoringRow("ml", "d", "v", 200, 1.0, request={"x": [1.0, float("inf")]},
                                             response={"p": float("nan")})])
    row = database.scoring_window("ml", "d", 1)[0]
    assert row.request == {"x": [1.0, None]} and row.response == {"p": None}


def test_the_routers_bytes_are_stored_as_json_without_a_second_parse_yet_safely(database):
    """The router hands over the bytes it received and sent. A prediction's (200) are stored as
    they are; NaN (which seldon's lenient parser accepts) still becomes null, a NUL escape is still
    escaped, a refused request that is not JSON is kept as its first bytes."""
    big = b'{"data":{"ndarray":[[' + b",".join(b"%d.5" % i for i in range(3000)) + b']]}}'
    rows = [ScoringRow("ml", "bytes", "v", 200, 1.0, request=big, response=b'{"data":{"ndarray":["a"]}}'),
            ScoringRow("ml", "bytes", "v", 200, 1.0, request=b'{"data":{"ndarray":[[1, NaN, -Infinity]]}}'),
            ScoringRow("ml", "bytes", "v", 200, 1.0, request=b'{"strData":"a\\u0000b"}'),
            ScoringRow("ml", "bytes", "v", 400, 1.0, request=b"{broken", error="not JSON")]
    assert database.insert_scoring_rows(rows) == 4
    stored = database.scoring_window("ml", "bytes", 10)
    requests = [r.request for r in stored]
    assert {"data": {"ndarray": [[1, None, None]]}} in requests
    assert {"strData": "a\\u0000b"} in requests and {"raw": "{broken"} in requests
    big_row = next(r for r in stored if len(str(r.request)) > 1000)
    assert big_row.request["data"]["ndarray"][0][2999] == 2999.5 and big_row.response == {"data": {"ndarray": ["a"]}}


def test_a_scoring_row_postgresql_refuses_never_blocks_the_rows_behind_it(database):
    """A NUL character (text and jsonb cannot hold one) is stored escaped; a row refused for a
    reason of its own (here a status code beyond integer) is set aside with PostgreSQL's error;
    every other row of the batch is stored, once."""
    rows = [ScoringRow("ml", "news", "v1", 200, 1.0, request={"data": {"ndarray": [[i]]}}) for i in range(300)]
    rows[10] = ScoringRow("ml", "news", "v1", 200, 1.0, request={"strData": "a\u0000b", "k\x00": 1},
                          response={"x": "\x00"}, error="nul \x00 in error")
    rows[200] = ScoringRow("ml", "news", "v1", 2**40, 1.0, request={"data": {"ndarray": [[200]]}})
    assert database.insert_scoring_rows(rows) == 299

    stored = database.scoring_window("ml", "news", 1000)
    assert len(stored) == 299
    nul_row = next(r for r in stored if r.error)
    assert nul_row.request == {"strData": "a\\u0000b", "k\\u0000": 1}
    assert nul_row.response == {"x": "\\u0000"} and nul_row.error == "nul \\u0000 in error"
    assert sorted(r.request["data"]["ndarray"][0][0] for r in stored if r is not nul_row) == \
        [i for i in range(300) if i not in (10, 200)]

    rejects = database.scoring_rejects("ml", "news")
    assert len(rejects) == 1
    assert "out of range" in rejects[0]["error"] and '"status_code":1099511627776' in rejects[0]["row_json"]


# -- failures ----------------------------------------------------------------------------------


def test_an_unreachable_database_is_a_transient_error_without_the_password(tmp_path):
    db = Database(f"postgresql://cdl:s3cret-pw@/cdl?host={tmp_path}&port=5999", connect_timeout=1)
    assert db.ping() is False
    with pytest.raises(StoreUnavailable) as err:
        db.migrate()
    assert isinstance(err.value, TransientError)
    assert "unavailable" in str(err.value) and "s3cret-pw" not in str(err.value)
    assert "s3cret-pw" not in repr(db)


def test_embedded_postgres_keeps_its_data_across_restarts():
    import shutil
    import tempfile
    from pathlib import Path

    import psutil

    base = Path(tempfile.mkdtemp(prefix="cdl-test-pg-"))  # see the postgres_url fixture for why not tmp_path
    try:
        with EmbeddedPostgres(base / "data") as pg:
            url = pg.url
            db = Database(url)  # kept open across the restart, as a long-running operator would
            db.migrate()
            assert db.next_model_version("news") == 1
            pid = pg.pid
        assert not pg.running
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        with pytest.raises(StoreUnavailable):
            db.next_model_version("news")

        with EmbeddedPostgres(base / "data") as again:
            assert again.url == url  # same socket, so open Database objects reconnect
            assert db.migrate() == []
            assert db.next_model_version("news") == 2  # the first version survived the restart
            db.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
