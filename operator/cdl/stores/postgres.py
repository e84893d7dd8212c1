"""PostgreSQL records of the platform: labels, experiment runs and trials, the model registry
index, lineage and scoring data (psycopg 3, plain SQL, one small typed method per use).

`Database(url)` is safe to share between threads: every call takes a connection of its own
from a small set of idle ones (opened on demand, at most `max_idle` kept). A connection that
cannot be made or breaks raises `StoreUnavailable` (a `cdl.errors.TransientError`); callers
retry later and nothing is half-written, since every method runs in one transaction.
`migrate()` brings the schema up to date and is safe to call from every operator at start-up.
"""

from __future__ import annotations

import json
import logging
import math
import re
import select
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from cdl.stores.errors import InvalidTableName, RecordNotFound, StoreError, StoreUnavailable, mask_url
from cdl.stores.migrations import apply_migrations, load_migrations
from cdl.stores.records import (
    STAGES,
    ExperimentRun,
    LabelRow,
    LineageEdge,
    ModelVersionRecord,
    ScoringRow,
    TrialMetric,
    TrialRecord,
    from_row,
)

log = logging.getLogger(__name__)

IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
DEFAULT_LABELS_TABLE = "labels"
# cdl's own tables: a DataPipeline may not name its labels table after one of them.
PLATFORM_TABLES = frozenset({
    "experiments_runs", "trials", "trial_metrics", "model_versions", "lineage_edges", "scoring_data",
    "cdl_schema_migrations",
})
LABEL_COLUMNS = ("namespace", "pipeline", "repo", "commit", "path", "label", "labeler", "annotated_at", "split",
                 "source", "project", "task_id")
# The same columns as the `labels` table of migration 0001 (a test keeps the two in step).
LABELS_TABLE_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    namespace    text        NOT NULL,
    pipeline     text        NOT NULL,
    repo         text        NOT NULL,
    commit       text        NOT NULL,
    path         text        NOT NULL,
    label        text        NOT NULL,
    labeler      text,
    annotated_at timestamptz,
    split        text,
    source       text        NOT NULL DEFAULT 'labelstudio' CHECK (source IN ('labelstudio', 'auto')),
    project      text,
    task_id      bigint,
    exported_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, pipeline, repo, commit, path)
)
"""
SCORING_COLUMNS = ("namespace", "deployment", "model_version", "request", "response", "status_code", "latency_ms",
                   "shadow", "error", "created_at")
SCORING_COPY = sql.SQL("COPY scoring_data ({}) FROM STDIN").format(sql.SQL(", ").join(map(sql.Identifier,
                                                                                     SCORING_COLUMNS)))
# SQLSTATE classes of a refusal caused by the row itself (data exception, integrity constraint,
# program limit exceeded such as a jsonb nested too deep), as opposed to the database being away.
ROW_REFUSAL_CLASSES = frozenset({"22", "23", "54"})
NUL_ESCAPED = "\\u0000"
IDLE_PING_SECONDS = 10.0


def validate_table_name(name: str) -> str:
    """Return `name` if it is a plain lowercase identifier, else raise InvalidTableName saying why."""
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        raise InvalidTableName(
            f"invalid labels table name {name!r}: use lowercase letters, digits and '_', starting with a letter or "
            "'_', at most 63 characters (^[a-z_][a-z0-9_]{0,62}$)")
    if name in PLATFORM_TABLES:
        raise InvalidTableName(f"invalid labels table name {name!r}: that is one of cdl's own tables; choose another")
    return name


class Database:
    """The platform's PostgreSQL database (optionally inside one schema)."""

    def __init__(self, url: str, *, schema: str | None = None, connect_timeout: float = 5.0,
                 max_idle: int = 4, application_name: str = "cdl") -> None:
        if not url:
            raise ValueError("database url is empty")
        if schema is not None and not IDENTIFIER.match(schema):
            raise ValueError(f"invalid schema name {schema!r}: use ^[a-z_][a-z0-9_]{{0,62}}$")
        self.url = url
        self.schema = schema
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.application_name = application_name
        self._idle: list[tuple[psycopg.Connection, float]] = []
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        where = f", schema={self.schema!r}" if self.schema else ""
        return f"Database({mask_url(self.url)}{where})"

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection:
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, math.ceil(self.connect_timeout)),
            "application_name": self.application_name,
        }
        if self.schema:
            kwargs["options"] = f"-c search_path={self.schema}"
        return psycopg.connect(self.url, **kwargs)

    def _checkout(self) -> psycopg.Connection:
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        while True:
            with self._lock:
                if not self._idle:
                    break
                conn, since = self._idle.pop()
            if conn.closed or conn.broken:
                continue
            # A server that restarted or dropped the connection leaves it readable (an error
            # message, then end of file); a healthy idle connection has nothing to read.
            if _readable(conn) or time.monotonic() - since > IDLE_PING_SECONDS:
                try:
                    conn.execute("SELECT 1")
                except psycopg.Error:
                    conn.close()
                    continue
            return conn
        return self._connect()

    def _checkin(self, conn: psycopg.Connection) -> None:
        reusable = (not conn.closed and not conn.broken
                    and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE)
        with self._lock:
            if reusable and not self._closed and len(self._idle) < self.max_idle:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """An autocommit connection for the duration of the block (returned to the idle set after)."""
        try:
            conn = self._checkout()
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL {mask_url(self.url)} is unavailable: {_first_line(exc)}") from None
        try:
            yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            conn.close()
            raise StoreUnavailable(f"PostgreSQL {mask_url(self.url)} is unavailable: {_first_line(exc)}") from None
        except psycopg.errors.UndefinedTable as exc:
            raise StoreError(f"{_first_line(exc)} in {self!r}: is the schema migrated? (Database.migrate() "
                             "runs at operator start)") from exc
        finally:
            if not conn.closed:
                self._checkin(conn)

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        """A cursor returning dict rows, inside one transaction (committed when the block ends)."""
        with self.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            yield cur

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ping(self) -> bool:
        """True when the database answers (for health checks); never raises."""
        try:
            with self.transaction() as cur:
                cur.execute("SELECT 1")
            return True
        except StoreUnavailable:
            return False

    # -- schema ------------------------------------------------------------------------------

    def migrate(self) -> list[int]:
        """Apply pending schema migrations (under an advisory lock); return the versions applied now."""
        with self.connection() as conn:
            return apply_migrations(conn, load_migrations(), self.schema)

    def schema_version(self) -> int:
        """The highest migration applied (0 for an empty database)."""
        with self.transaction() as cur:
            cur.execute("SELECT to_regclass('cdl_schema_migrations') IS NOT NULL AS present")
            if not cur.fetchone()["present"]:
                return 0
            cur.execute("SELECT coalesce(max(version), 0) AS v FROM cdl_schema_migrations")
            return int(cur.fetchone()["v"])

    # -- labels (ML Data) --------------------------------------------------------------------

    def ensure_labels_table(self, name: str = DEFAULT_LABELS_TABLE) -> str:
        """Create the labels table `name` (same columns as `labels`) if missing; return the name.

        Works on any database the caller may write to, migrated or not (a DataPipeline may
        export its labels to its own database). An existing table without the label columns
        is refused with the names of the missing columns.
        """
        name = validate_table_name(name)
        with self.transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id("cdl.labels_table", name),))
            cur.execute(sql.SQL(LABELS_TABLE_DDL).format(table=sql.Identifier(name)))
            cur.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = %s AND table_schema = current_schema()", (name,))
            have = {row["column_name"] for row in cur.fetchall()}
        missing = [c for c in (*LABEL_COLUMNS, "exported_at") if c not in have]
        if missing:
            raise StoreError(f"table {name} exists but is not a labels table: it lacks column(s) {', '.join(missing)}")
        return name

    def upsert_labels(self, table: str, rows: Iterable[LabelRow]) -> int:
        """Insert or update label rows (keyed by namespace, pipeline, repo, commit, path); return the count.

        Exporting the same items again changes nothing but the label fields and exported_at.
        """
        table = validate_table_name(table)
        params = [tuple(getattr(r, c) for c in LABEL_COLUMNS) for r in rows]
        for r in params:
            if r[9] not in ("labelstudio", "auto"):
                raise ValueError(f"label source {r[9]!r} for {r[4]}: expected 'labelstudio' or 'auto'")
        if not params:
            return 0
        keys = ("namespace", "pipeline", "repo", "commit", "path")
        query = sql.SQL(
            "INSERT INTO {table} ({cols}) VALUES ({values}) ON CONFLICT ({keys}) DO UPDATE SET {updates}, "
            "exported_at = now()"
        ).format(
            table=sql.Identifier(table),
            cols=sql.SQL(", ").join(map(sql.Identifier, LABEL_COLUMNS)),
            values=sql.SQL(", ").join(sql.Placeholder() * len(LABEL_COLUMNS)),
            keys=sql.SQL(", ").join(map(sql.Identifier, keys)),
            updates=sql.SQL(", ").join(
                sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in LABEL_COLUMNS if c not in keys),
        )
        with self.transaction() as cur:
            cur.executemany(query, params)
        return len(params)

    def labels(self, table: str = DEFAULT_LABELS_TABLE, *, namespace: str, pipeline: str,
               repo: str | None = None, commit: str | None = None) -> list[LabelRow]:
        """The label rows of one DataPipeline (optionally one repo and commit), ordered by path."""
        table = validate_table_name(table)
        where = [sql.SQL("namespace = %s"), sql.SQL("pipeline = %s")]
        args: list[Any] = [namespace, pipeline]
        for column, value in (("repo", repo), ("commit", commit)):
            if value is not None:
                where.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                args.append(value)
        query = sql.SQL("SELECT * FROM {} WHERE {} ORDER BY repo, commit, path").format(
            sql.Identifier(table), sql.SQL(" AND ").join(where))
        with self.transaction() as cur:
            cur.execute(query, args)
            return [from_row(LabelRow, row) for row in cur.fetchall()]

    # -- experiment runs, trials, metrics ----------------------------------------------------

    def record_run(self, run: ExperimentRun) -> None:
        """Insert or update a run (its started_at is kept from the first record)."""
        with self.transaction() as cur:
            cur.execute(
                """INSERT INTO experiments_runs (run_id, namespace, experiment, generation, engine, state, spec,
                                                 data_repo, data_commit, started_at, finished_at)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, coalesce(%s, now()), %s)
                   ON CONFLICT (run_id) DO UPDATE SET
                     generation = EXCLUDED.generation, engine = EXCLUDED.engine, state = EXCLUDED.state,
                     spec = EXCLUDED.spec, data_repo = EXCLUDED.data_repo, data_commit = EXCLUDED.data_commit,
                     finished_at = coalesce(EXCLUDED.finished_at, experiments_runs.finished_at)""",
                (run.run_id, run.namespace, run.experiment, run.generation, run.engine, run.state, _json(run.spec),
                 run.data_repo, run.data_commit, run.started_at, run.finished_at))

    def set_run_state(self, run_id: str, state: str, *, finished: bool = False) -> None:
        """Change a run's state; `finished` stamps finished_at (once)."""
        with self.transaction() as cur:
            cur.execute(
                "UPDATE experiments_runs SET state = %s, finished_at = CASE WHEN %s THEN coalesce(finished_at, now()) "
                "ELSE finished_at END WHERE run_id = %s", (state, finished, run_id))
            if cur.rowcount == 0:
                raise RecordNotFound(f"experiment run {run_id} is not recorded")

    def get_run(self, run_id: str) -> ExperimentRun | None:
        with self.transaction() as cur:
            cur.execute("SELECT * FROM experiments_runs WHERE run_id = %s", (run_id,))
            row = cur.fetchone()
        return from_row(ExperimentRun, row) if row else None

    def runs(self, namespace: str, experiment: str) -> list[ExperimentRun]:
        """The runs of one Experiment, oldest first."""
        with self.transaction() as cur:
            cur.execute("SELECT * FROM experiments_runs WHERE namespace = %s AND experiment = %s "
                        "ORDER BY started_at, run_id", (namespace, experiment))
            return [from_row(ExperimentRun, row) for row in cur.fetchall()]

    def delete_run(self, run_id: str) -> bool:
        """Forget a run with its trials and metrics; True when it existed."""
        with self.transaction() as cur:
            cur.execute("DELETE FROM experiments_runs WHERE run_id = %s", (run_id,))
            return cur.rowcount > 0

    def record_trial(self, trial: TrialRecord) -> None:
        """Insert or update a trial of a recorded run."""
        values = asdict(trial)
        values.pop("updated_at")
        for name in ("hparams", "metadata"):
            values[name] = _json(values[name] or {})
        columns = list(values)
        query = sql.SQL(
            "INSERT INTO trials ({cols}) VALUES ({vals}) ON CONFLICT (run_id, trial_id) DO UPDATE SET {upd}, "
            "updated_at = now()"
        ).format(
            cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
            vals=sql.SQL(", ").join(sql.Placeholder(c) for c in columns),
            upd=sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c))
                                   for c in columns if c not in ("run_id", "trial_id")),
        )
        with self.transaction() as cur:
            try:
                cur.execute(query, values)
            except psycopg.errors.ForeignKeyViolation:
                raise RecordNotFound(f"trial {trial.trial_id}: experiment run {trial.run_id} is not recorded "
                                     "(record_run first)") from None

    def trials(self, run_id: str) -> list[TrialRecord]:
        """The trials of a run, in trial id order (numeric ids numerically)."""
        with self.transaction() as cur:
            cur.execute("SELECT * FROM trials WHERE run_id = %s ORDER BY length(trial_id), trial_id", (run_id,))
            return [from_row(TrialRecord, row) for row in cur.fetchall()]

    def record_metrics(self, rows: Iterable[TrialMetric]) -> int:
        """Insert metric reports (a report again for the same trial, kind and batches replaces it)."""
        params = []
        for m in rows:
            if m.kind not in ("training", "validation"):
                raise ValueError(f"metric kind {m.kind!r}: expected 'training' or 'validation'")
            params.append((m.run_id, m.trial_id, m.kind, int(m.batches), m.epoch, _json(m.metrics),
                           m.recorded_at or _now()))
        if not params:
            return 0
        with self.transaction() as cur:
            try:
                cur.executemany(
                    """INSERT INTO trial_metrics (run_id, trial_id, kind, batches, epoch, metrics, recorded_at)
                       VALUES (%s, %s, %s, %s, %s, %s, %s)
                       ON CONFLICT (run_id, trial_id, kind, batches) DO UPDATE SET
                         epoch = EXCLUDED.epoch, metrics = EXCLUDED.metrics, recorded_at = EXCLUDED.recorded_at""",
                    params)
            except psycopg.errors.ForeignKeyViolation:
                raise RecordNotFound("metrics for a trial that is not recorded (record_trial first)") from None
        return len(params)

    def trial_metrics(self, run_id: str, trial_id: str | None = None,
                      kind: Literal["training", "validation"] | None = None) -> list[TrialMetric]:
        """Metric reports of a run (or one trial, one kind), by trial then batches."""
        query = "SELECT * FROM trial_metrics WHERE run_id = %s"
        args: list[Any] = [run_id]
        if trial_id is not None:
            query += " AND trial_id = %s"
            args.append(trial_id)
        if kind is not None:
            query += " AND kind = %s"
            args.append(kind)
        query += " ORDER BY length(trial_id), trial_id, batches, kind"
        with self.transaction() as cur:
            cur.execute(query, args)
            return [from_row(TrialMetric, row) for row in cur.fetchall()]

    # -- model registry index ----------------------------------------------------------------

    def next_model_version(self, model: str, *, namespace: str | None = None, resource: str | None = None) -> int:
        """Reserve and return the next version number of `model` in `namespace` (1, 2, 3 ... per
        namespace and model name: a namespace is a team's boundary).

        Safe when several operators or threads register versions of one model at once. Given
        the ModelVersion resource (namespace and name), a number it reserved but never
        recorded an artifact for is handed back again, so a retried registration leaves no gap.
        """
        ns = namespace or ""
        with self.transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id("cdl.model_version", f"{ns}/{model}"),))
            if resource is not None:
                cur.execute(
                    "SELECT version FROM model_versions WHERE namespace = %s AND model = %s AND resource = %s "
                    "AND artifact_uri IS NULL ORDER BY version DESC LIMIT 1", (ns, model, resource))
                row = cur.fetchone()
                if row:
                    return int(row["version"])
            cur.execute(
                "INSERT INTO model_versions (model, version, namespace, resource) "
                "SELECT %s, coalesce(max(version), 0) + 1, %s, %s FROM model_versions "
                "WHERE namespace = %s AND model = %s RETURNING version", (model, ns, resource, ns, model))
            return int(cur.fetchone()["version"])

    def record_model_version(self, model: str, version: int, *, namespace: str | None = None,
                             resource: str | None = None, stage: str = "candidate",
                             artifact: Mapping[str, Any] | Any | None = None,
                             lineage: Mapping[str, Any] | None = None) -> None:
        """Insert or update a registered version: its resource, stage, artifact and lineage.

        `artifact` is a mapping with uri, sha256, bytes and format (ModelVersion status.artifact)
        or a StoredArtifact.
        """
        _check_stage(stage)
        art = _artifact_fields(artifact)
        with self.transaction() as cur:
            cur.execute(
                """INSERT INTO model_versions (model, version, namespace, resource, stage, artifact_uri,
                                               artifact_sha256, artifact_bytes, artifact_format, lineage)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (namespace, model, version) DO UPDATE SET
                     resource = coalesce(EXCLUDED.resource, model_versions.resource),
                     stage = EXCLUDED.stage,
                     artifact_uri = EXCLUDED.artifact_uri, artifact_sha256 = EXCLUDED.artifact_sha256,
                     artifact_bytes = EXCLUDED.artifact_bytes, artifact_format = EXCLUDED.artifact_format,
                     lineage = EXCLUDED.lineage""",
                (model, int(version), namespace or "", resource, stage, art["uri"], art["sha256"], art["bytes"],
                 art["format"], _json(dict(lineage or {}))))

    def record_evaluation(self, model: str, version: int, *, metrics: Mapping[str, Any],
                          gates: Iterable[Mapping[str, Any]], passed: bool, report_uri: str | None = None,
                          namespace: str | None = None) -> None:
        """Store the evaluation of a recorded version: metrics, gate results, verdict and report."""
        with self.transaction() as cur:
            cur.execute(
                "UPDATE model_versions SET metrics = %s, gates = %s, passed = %s, report_uri = %s "
                "WHERE namespace = %s AND model = %s AND version = %s",
                (_json(dict(metrics)), _json([dict(g) for g in gates]), bool(passed), report_uri, namespace or "",
                 model, _version(model, version)))
            if cur.rowcount == 0:
                raise RecordNotFound(f"model {_where(namespace)}{model} version {version} is not recorded")

    def set_model_stage(self, model: str, version: int, stage: str, *, namespace: str | None = None) -> None:
        """Move a recorded version to a stage (promoted_at is stamped when the stage changes)."""
        _check_stage(stage)
        with self.transaction() as cur:
            cur.execute(
                "UPDATE model_versions SET promoted_at = CASE WHEN stage IS DISTINCT FROM %s THEN now() "
                "ELSE promoted_at END, stage = %s WHERE namespace = %s AND model = %s AND version = %s",
                (stage, stage, namespace or "", model, _version(model, version)))
            if cur.rowcount == 0:
                raise RecordNotFound(f"model {_where(namespace)}{model} version {version} is not recorded")

    def get_model_version(self, model: str, version: int, *, namespace: str | None = None) -> ModelVersionRecord | None:
        with self.transaction() as cur:
            cur.execute("SELECT * FROM model_versions WHERE namespace = %s AND model = %s AND version = %s",
                        (namespace or "", model, int(version)))
            row = cur.fetchone()
        return from_row(ModelVersionRecord, row) if row else None

    def model_versions(self, model: str, *, namespace: str | None = None) -> list[ModelVersionRecord]:
        """Every recorded version of a model in a namespace, oldest first."""
        with self.transaction() as cur:
            cur.execute("SELECT * FROM model_versions WHERE namespace = %s AND model = %s ORDER BY version",
                        (namespace or "", model))
            return [from_row(ModelVersionRecord, row) for row in cur.fetchall()]

    def model_in_stage(self, model: str, stage: str, *, namespace: str | None = None) -> ModelVersionRecord | None:
        """The newest version of a model in a stage in a namespace (what 'production' means there now)."""
        _check_stage(stage)
        with self.transaction() as cur:
            cur.execute("SELECT * FROM model_versions WHERE namespace = %s AND model = %s AND stage = %s "
                        "ORDER BY version DESC LIMIT 1", (namespace or "", model, stage))
            row = cur.fetchone()
        return from_row(ModelVersionRecord, row) if row else None

    # -- lineage -----------------------------------------------------------------------------

    def add_lineage(self, from_kind: str, from_id: str, to_kind: str, to_id: str, relation: str,
                    attrs: Mapping[str, Any] | None = None) -> None:
        """Record that (from_kind, from_id) feeds (to_kind, to_id); recording it again updates attrs."""
        with self.transaction() as cur:
            cur.execute(
                """INSERT INTO lineage_edges (from_kind, from_id, to_kind, to_id, relation, attrs)
                   VALUES (%s, %s, %s, %s, %s, %s)
                   ON CONFLICT (from_kind, from_id, to_kind, to_id, relation) DO UPDATE SET attrs = EXCLUDED.attrs""",
                (from_kind, str(from_id), to_kind, str(to_id), relation, _json(dict(attrs or {}))))

    def lineage_chain(self, kind: str, id: str, *, direction: Literal["upstream", "downstream"] = "upstream",
                      max_depth: int = 32) -> list[LineageEdge]:
        """The edges reachable from (kind, id): upstream = what it came from (a deployment back to
        its data commit), downstream = what came of it. Nearest first; cycles are walked once."""
        if direction not in ("upstream", "downstream"):
            raise ValueError(f"direction {direction!r}: expected 'upstream' or 'downstream'")
        near, far = ("to", "from") if direction == "upstream" else ("from", "to")
        query = sql.SQL("""
            WITH RECURSIVE walk AS (
                SELECT e.*, 1 AS depth, ARRAY[e.id] AS seen
                FROM lineage_edges e WHERE e.{near_kind} = %(kind)s AND e.{near_id} = %(id)s
              UNION ALL
                SELECT e.*, w.depth + 1, w.seen || e.id
                FROM lineage_edges e
                JOIN walk w ON e.{near_kind} = w.{far_kind} AND e.{near_id} = w.{far_id}
                WHERE w.depth < %(max)s AND NOT e.id = ANY(w.seen)
            )
            SELECT * FROM (SELECT DISTINCT ON (id) * FROM walk ORDER BY id, depth) nearest ORDER BY depth, id
        """).format(near_kind=sql.Identifier(f"{near}_kind"), near_id=sql.Identifier(f"{near}_id"),
                    far_kind=sql.Identifier(f"{far}_kind"), far_id=sql.Identifier(f"{far}_id"))
        with self.transaction() as cur:
            cur.execute(query, {"kind": kind, "id": str(id), "max": max_depth})
            return [from_row(LineageEdge, row) for row in cur.fetchall()]

    # -- scoring data ------------------------------------------------------------------------

    def insert_scoring_rows(self, rows: Iterable[ScoringRow]) -> int:
        """Append scoring rows in one COPY (fast for the request logger's batches); return how many
        were stored.

        A row PostgreSQL refuses never blocks the others: NUL characters (which neither text nor
        jsonb can hold) are stored escaped as the six characters `\\u0000`, and a row refused for
        any other reason of its own (a data or limit error) is found by halving the batch and set
        aside in `scoring_rejects` with the refusal, in the same transaction as the rest. Only an
        unavailable database raises (`StoreUnavailable`): then nothing of the batch was written."""
        prepared: list[tuple[ScoringRow, tuple[Any, ...]]] = []
        rejected: list[tuple[ScoringRow, str]] = []
        for r in rows:
            try:
                prepared.append((r, _scoring_values(r)))
            except (ValueError, TypeError, RecursionError, orjson.JSONEncodeError) as exc:
                rejected.append((r, f"not storable: {type(exc).__name__}: {exc}"))
        if not prepared and not rejected:
            return 0
        with self.transaction() as cur:
            written = self._copy_isolating(cur, prepared, rejected)
            if rejected:
                self._set_aside(cur, rejected)
        return written

    def _copy_isolating(self, cur: psycopg.Cursor[Any], items: list[tuple[ScoringRow, tuple[Any, ...]]],
                        rejected: list[tuple[ScoringRow, str]]) -> int:
        """COPY `items` inside a savepoint; when PostgreSQL refuses the data, halve and retry, so
        a refused row ends up alone in `rejected` (log2 of the batch extra round trips per row)."""
        if not items:
            return 0
        try:
            with cur.connection.transaction(), cur.copy(SCORING_COPY) as copy:
                for _, values in items:
                    copy.write_row(values)
            return len(items)
        except psycopg.Error as exc:
            if not _refused_data(exc):
                raise
            if len(items) == 1:
                rejected.append((items[0][0], _first_line(exc)))
                log.warning("scoring row of %s/%s set aside in scoring_rejects: %s", items[0][0].namespace,
                            items[0][0].deployment, _first_line(exc))
                return 0
        half = len(items) // 2
        return self._copy_isolating(cur, items[:half], rejected) + self._copy_isolating(cur, items[half:], rejected)

    def _set_aside(self, cur: psycopg.Cursor[Any], rejected: list[tuple[ScoringRow, str]]) -> None:
        with cur.copy("COPY scoring_rejects (namespace, deployment, model_version, row_json, error, created_at) "
                      "FROM STDIN") as copy:
            for row, error in rejected:
                copy.write_row((_text(row.namespace), _text(row.deployment), _text(row.model_version),
                                _row_text(row), _text(error)[:10_000], row.created_at or _now()))

    def scoring_rejects(self, namespace: str, deployment: str, limit: int = 100) -> list[dict[str, Any]]:
        """The newest scoring rows set aside for `deployment`, newest first: row_json (the row as
        JSON text) and the error PostgreSQL gave."""
        with self.transaction() as cur:
            cur.execute("SELECT * FROM scoring_rejects WHERE namespace = %s AND deployment = %s "
                        "ORDER BY created_at DESC, id DESC LIMIT %s", (namespace, deployment, max(0, int(limit))))
            return list(cur.fetchall())

    def scoring_window(self, namespace: str, deployment: str, limit: int = 1000, *,
                       shadow: bool | None = None) -> list[ScoringRow]:
        """The newest `limit` scoring rows of a Deployment, oldest first (optionally only shadow or
        only live traffic)."""
        query = "SELECT * FROM scoring_data WHERE namespace = %s AND deployment = %s"
        args: list[Any] = [namespace, deployment]
        if shadow is not None:
            query += " AND shadow = %s"
            args.append(shadow)
        query += " ORDER BY created_at DESC, id DESC LIMIT %s"
        args.append(max(0, int(limit)))
        with self.transaction() as cur:
            cur.execute(query, args)
            rows = [from_row(ScoringRow, row) for row in cur.fetchall()]
        rows.reverse()
        return rows

    def delete_scoring_rows(self, namespace: str, deployment: str, *, before: datetime | None = None) -> int:
        """Drop a Deployment's scoring rows (all, or those created before `before`); return the count."""
        query = "DELETE FROM scoring_data WHERE namespace = %s AND deployment = %s"
        args: list[Any] = [namespace, deployment]
        if before is not None:
            query += " AND created_at < %s"
            args.append(before)
        with self.transaction() as cur:
            cur.execute(query, args)
            return cur.rowcount


# ---------------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _lock_id(space: str, name: str) -> int:
    """A signed 64-bit advisory lock id for (space, name)."""
    value = (zlib.crc32(space.encode()) << 32) | zlib.crc32(name.encode())
    return value - (1 << 64) if value >= (1 << 63) else value


def _where(namespace: str | None) -> str:
    return f"{namespace}/" if namespace else ""


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"model stage {stage!r}: expected one of {', '.join(STAGES)}")


def _version(model: str, version: Any) -> int:
    try:
        return int(version)
    except (TypeError, ValueError):
        raise RecordNotFound(f"model {model} has no version {version!r}") from None


def _artifact_fields(artifact: Any) -> dict[str, Any]:
    if artifact is None:
        return {"uri": None, "sha256": None, "bytes": None, "format": None}
    if not isinstance(artifact, Mapping):
        artifact = {k: getattr(artifact, k, None) for k in ("uri", "sha256", "bytes", "format")}
    size = artifact.get("bytes")
    return {"uri": artifact.get("uri"), "sha256": artifact.get("sha256"),
            "bytes": int(size) if size is not None else None, "format": artifact.get("format")}


def _json(value: Any) -> Jsonb:
    """JSONB that PostgreSQL accepts: NaN and infinities become null, numpy values plain numbers,
    NUL characters (which jsonb refuses) the six characters `\\u0000`. orjson does that natively
    and fast (a 5,000-value request row costs microseconds, not the milliseconds of a Python walk);
    anything it refuses goes through `_jsonable` first."""
    text = _json_text(value)
    return Jsonb(value, dumps=lambda _: text)


def _json_text(value: Any, parsed_by_server: bool = False) -> str:
    """`value` as JSON text PostgreSQL's jsonb accepts (see `_json`).

    `bytes` are JSON text as it went over the wire (the router's scoring rows): passed on as they
    are when orjson reads them (it refuses NaN and infinities, as PostgreSQL does) and they hold no
    NUL escape; otherwise parsed leniently (NaN becomes null), and a body that is not JSON at all is
    stored as `{"raw": "<its first 4 KB>"}`. With `parsed_by_server` (a request and answer of a
    prediction the model server made: both were valid JSON to it) the bytes are not parsed again
    unless they hold what PostgreSQL refuses or the standard library's lenient parser accepted
    (a NUL escape, NaN, Infinity): a 22 KB row costs a few byte scans instead of a parse (PostgreSQL
    checks the JSON anyway, and a row it refuses is set aside). A value with a `scoring_json()`
    method (the router's gRPC messages) is stored as what that returns: both are decoded here, on
    the writer's thread."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if parsed_by_server and ((b"\\" not in raw and b"N" not in raw and b"I" not in raw)  # memchr: ~1 us
                                 or (b"\\u0000" not in raw and b"NaN" not in raw and b"Infinity" not in raw)):
            try:
                return raw.decode()
            except UnicodeDecodeError:
                pass
        try:
            value = orjson.loads(raw)
            if b"\\u0000" not in raw:
                return raw.decode()
        except (orjson.JSONDecodeError, UnicodeDecodeError):
            try:
                value = json.loads(raw)
            except ValueError:
                value = {"raw": raw[:4096].decode("utf-8", errors="replace")}
    else:
        encode = getattr(value, "scoring_json", None)
        if callable(encode):
            value = encode()
    try:
        text = orjson.dumps(value, default=_jsonable,
                            option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):  # also deeper than orjson's 254 levels
        text = json.dumps(_jsonable(value), separators=(",", ":"))
    if "\\u0000" in text:  # rare: only then pay for the walk that escapes NULs in strings and keys
        text = json.dumps(_without_nul(json.loads(text)), separators=(",", ":"))
    return text


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", NUL_ESCAPED)
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def _text(value: Any) -> Any:
    """A text column's value with NULs escaped (PostgreSQL text cannot hold them)."""
    return value.replace("\x00", NUL_ESCAPED) if isinstance(value, str) else value


def _scoring_values(r: ScoringRow) -> tuple[Any, ...]:
    """One scoring_data row for COPY, in SCORING_COLUMNS order (jsonb columns as JSON text)."""
    return (
        _text(r.namespace), _text(r.deployment), _text(r.model_version),
        None if r.request is None else _json_text(r.request, r.status_code == 200),
        None if r.response is None else _json_text(r.response, r.status_code == 200),
        int(r.status_code), float(r.latency_ms), bool(r.shadow), _text(r.error), r.created_at or _now(),
    )


def _row_text(row: ScoringRow) -> str:
    """A refused row as JSON text (never refused itself: orjson escapes control characters)."""
    try:
        return orjson.dumps(row, default=str)[:1_000_000].decode("utf-8", errors="replace")
    except (TypeError, orjson.JSONEncodeError):
        return _text(repr(row)[:1_000_000])


def _refused_data(exc: BaseException) -> bool:
    """Did PostgreSQL refuse the data itself (rather than fail to be reached)?"""
    state = getattr(exc, "sqlstate", None)
    return bool(state) and state[:2] in ROW_REFUSAL_CLASSES


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        try:
            return _jsonable(item())
        except (TypeError, ValueError):
            pass
    tolist = getattr(value, "tolist", None)  # numpy arrays
    if callable(tolist):
        return _jsonable(tolist())
    return str(value)


def _readable(conn: psycopg.Connection) -> bool:
    try:
        ready, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return bool(ready)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return mask_url(text[0]) if text else type(exc).__name__
