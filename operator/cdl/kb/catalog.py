"""The knowledge base's reads: experiments, runs, trials, model versions and deployments as
plain JSON-ready dicts, paged and filtered, straight from PostgreSQL (and, for reports, the
artifact store). Read-only: nothing here writes.

Every statement is parameterised; a user's query arrives compiled by `cdl.kb.query`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql

from cdl.errors import CdlError
from cdl.kb.query import MODEL_VERSIONS, TRIALS, compile_query

MAX_LIMIT = 500
DEFAULT_LIMIT = 50


class NotFound(CdlError):
    """The record asked for is not in the knowledge base."""


@dataclass(frozen=True)
class Page:
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    @classmethod
    def parse(cls, limit: Any, offset: Any) -> Page:
        """A page from query parameters; a clear error naming the parameter when one is wrong."""
        out = []
        for name, value, default, top in (("limit", limit, DEFAULT_LIMIT, MAX_LIMIT), ("offset", offset, 0, None)):
            if value in (None, ""):
                out.append(default)
                continue
            try:
                number = int(value)
            except (TypeError, ValueError):
                raise CdlError(f"{name}: {value!r} is not a whole number") from None
            if number < (1 if name == "limit" else 0) or (top is not None and number > top):
                allowed = f"1 to {top}" if top else "0 or more"
                raise CdlError(f"{name}: {number} is out of range; allowed: {allowed}")
            out.append(number)
        return cls(out[0], out[1])


def _paged(items: list[dict[str, Any]], total: int, page: Page) -> dict[str, Any]:
    nxt = page.offset + page.limit
    return {"items": items, "total": total, "limit": page.limit, "offset": page.offset,
            "next": nxt if nxt < total else None}


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _iso(v) for k, v in row.items()}


class Catalog:
    """Reads over one Database (and optionally the artifact store, for reports)."""

    def __init__(self, database: Any, artifacts: Any | None = None) -> None:
        self.db = database
        self.artifacts = artifacts

    def _all(self, query: sql.Composable | str, args: Any = ()) -> list[dict[str, Any]]:
        with self.db.transaction() as cur:
            cur.execute(query, args)
            return [_row(r) for r in cur.fetchall()]

    # -- experiments and runs -----------------------------------------------------------------

    def experiments(self, namespace: str | None = None, page: Page = Page()) -> dict[str, Any]:
        """Experiments, most recently started first, each with its latest run and trial count."""
        where, args = ("WHERE namespace = %s", [namespace]) if namespace else ("", [])
        rows = self._all(f"""
            WITH latest AS (
              SELECT DISTINCT ON (namespace, experiment) * FROM experiments_runs {where}
              ORDER BY namespace, experiment, started_at DESC, run_id DESC)
            SELECT l.namespace, l.experiment AS name, l.run_id AS latest_run, l.state, l.engine,
                   l.started_at, l.finished_at, l.data_repo, l.data_commit,
                   (SELECT count(*) FROM experiments_runs r
                     WHERE r.namespace = l.namespace AND r.experiment = l.experiment) AS runs,
                   (SELECT count(*) FROM trials t WHERE t.run_id = l.run_id) AS trials,
                   l.spec #>> '{{searcher,metric}}' AS metric,
                   (SELECT max(t.best_metric) FROM trials t WHERE t.run_id = l.run_id) AS best_largest,
                   (SELECT min(t.best_metric) FROM trials t WHERE t.run_id = l.run_id) AS best_smallest,
                   coalesce((l.spec #>> '{{searcher,smallerIsBetter}}')::boolean, false) AS smaller_is_better,
                   count(*) OVER () AS total
            FROM latest l ORDER BY l.started_at DESC, l.experiment LIMIT %s OFFSET %s""",
                         [*args, page.limit, page.offset])
        total = rows[0]["total"] if rows else self._count_experiments(namespace)
        for r in rows:
            r.pop("total", None)
            r["best"] = r.pop("best_smallest") if r["smaller_is_better"] else r["best_largest"]
            r.pop("best_largest", None)
            r.pop("best_smallest", None)
        return _paged(rows, total, page)

    def _count_experiments(self, namespace: str | None) -> int:
        where, args = ("WHERE namespace = %s", [namespace]) if namespace else ("", [])
        return int(self._all(f"SELECT count(DISTINCT (namespace, experiment)) AS n FROM experiments_runs {where}",
                             args)[0]["n"])

    def runs(self, namespace: str, experiment: str) -> list[dict[str, Any]]:
        """The runs of an Experiment, newest first."""
        rows = self._all(
            "SELECT r.*, (SELECT count(*) FROM trials t WHERE t.run_id = r.run_id) AS trials "
            "FROM experiments_runs r WHERE namespace = %s AND experiment = %s ORDER BY started_at DESC, run_id DESC",
            (namespace, experiment))
        if not rows:
            raise NotFound(f"experiment {namespace}/{experiment} has no recorded runs")
        return rows

    def run(self, run_id: str) -> dict[str, Any]:
        rows = self._all("SELECT * FROM experiments_runs WHERE run_id = %s", (run_id,))
        if not rows:
            raise NotFound(f"experiment run {run_id} is not recorded")
        return rows[0]

    # -- trials --------------------------------------------------------------------------------

    def trials(self, namespace: str, experiment: str, *, run_id: str | None = None, query: str | None = None,
               page: Page = Page()) -> dict[str, Any]:
        """Trials of an Experiment's run (default its latest), best first, filtered by `query`."""
        run = self.run(run_id) if run_id else self.runs(namespace, experiment)[0]
        if (run["namespace"], run["experiment"]) != (namespace, experiment):
            raise NotFound(f"run {run_id} is not a run of experiment {namespace}/{experiment}")
        condition, params = compile_query(query, TRIALS)
        searcher = (run.get("spec") or {}).get("searcher") or {}
        direction = sql.SQL("ASC" if searcher.get("smallerIsBetter") else "DESC")
        statement = sql.SQL(
            "SELECT *, count(*) OVER () AS total FROM trials WHERE run_id = %s AND {cond} "
            "ORDER BY best_metric {dir} NULLS LAST, length(trial_id), trial_id LIMIT %s OFFSET %s"
        ).format(cond=condition, dir=direction)
        rows = self._all(statement, [run["run_id"], *params, page.limit, page.offset])
        total = rows[0]["total"] if rows else 0
        items = [trial_view(r, searcher.get("metric")) for r in rows]
        out = _paged(items, total, page)
        out.update(run=run["run_id"], metric=searcher.get("metric"),
                   smallerIsBetter=bool(searcher.get("smallerIsBetter")), query=query or "")
        return out

    def trial(self, run_id: str, trial_id: str) -> dict[str, Any]:
        """One trial with its metric series (training and validation) and resources."""
        run = self.run(run_id)
        rows = self._all("SELECT * FROM trials WHERE run_id = %s AND trial_id = %s", (run_id, trial_id))
        if not rows:
            raise NotFound(f"run {run_id} has no trial {trial_id!r}")
        metric = ((run.get("spec") or {}).get("searcher") or {}).get("metric")
        out = trial_view(rows[0], metric)
        series = self._all("SELECT kind, batches, epoch, metrics, recorded_at FROM trial_metrics "
                           "WHERE run_id = %s AND trial_id = %s ORDER BY batches, kind", (run_id, trial_id))
        out["series"] = {"training": [s for s in series if s["kind"] == "training"],
                         "validation": [s for s in series if s["kind"] == "validation"]}
        for points in out["series"].values():
            for p in points:
                p.pop("kind")
        out["experiment"] = {"namespace": run["namespace"], "name": run["experiment"]}
        return out

    # -- models and versions -------------------------------------------------------------------

    def projects(self) -> list[dict[str, Any]]:
        """Each registered model with its versions' count, its production version and the
        experiments its versions came from."""
        return self._all("""
            SELECT model, count(*) AS versions, max(version) AS latest,
                   max(version) FILTER (WHERE stage = 'production') AS production,
                   max(created_at) AS updated_at,
                   array_remove(array_agg(DISTINCT lineage->>'experiment'), NULL) AS experiments,
                   min(namespace) AS namespace
            FROM model_versions WHERE artifact_uri IS NOT NULL GROUP BY model ORDER BY max(created_at) DESC""")

    def model_versions(self, *, model: str | None = None, query: str | None = None,
                       page: Page = Page()) -> dict[str, Any]:
        condition, params = compile_query(query, MODEL_VERSIONS)
        where = [sql.SQL("artifact_uri IS NOT NULL"), condition]
        args: list[Any] = []
        if model:
            where.insert(0, sql.SQL("model = %s"))
            args.append(model)
        statement = sql.SQL("SELECT *, count(*) OVER () AS total FROM model_versions WHERE {} "
                            "ORDER BY model, version DESC LIMIT %s OFFSET %s").format(sql.SQL(" AND ").join(where))
        rows = self._all(statement, [*args, *params, page.limit, page.offset])
        total = rows[0]["total"] if rows else 0
        for r in rows:
            r.pop("total")
        return _paged(rows, total, page)

    def model_version(self, model: str, version: int) -> dict[str, Any]:
        """A version with its report (JSON, confusion matrix included) and lineage chain."""
        rows = self._all("SELECT * FROM model_versions WHERE model = %s AND version = %s", (model, int(version)))
        if not rows or not rows[0].get("artifact_uri"):
            raise NotFound(f"model {model} has no registered version {version}")
        out = rows[0]
        out["report"] = self.report(out.get("report_uri"))
        out["lineageChain"] = self.lineage(model, int(version), out)
        return out

    def model_version_named(self, namespace: str, name: str) -> dict[str, Any]:
        """The version a ModelVersion resource registered (its newest, if re-registered)."""
        rows = self._all("SELECT model, version FROM model_versions WHERE namespace = %s AND resource = %s "
                         "AND artifact_uri IS NOT NULL ORDER BY version DESC LIMIT 1", (namespace, name))
        if not rows:
            raise NotFound(f"ModelVersion {namespace}/{name} has no registered version")
        return self.model_version(rows[0]["model"], rows[0]["version"])

    def report(self, report_uri: str | None) -> dict[str, Any] | None:
        if not report_uri or self.artifacts is None:
            return None
        key = self.artifacts.key_for(report_uri.removesuffix(".md") + ".json")
        try:
            return json.loads(self.artifacts.get_bytes(key))
        except (CdlError, OSError, ValueError):
            return None

    def report_markdown(self, model: str, version: int) -> str:
        rows = self._all("SELECT report_uri FROM model_versions WHERE model = %s AND version = %s",
                         (model, int(version)))
        uri = rows[0]["report_uri"] if rows else None
        if not uri or self.artifacts is None:
            raise NotFound(f"model {model} version {version} has no report yet")
        return self.artifacts.get_bytes(self.artifacts.key_for(uri)).decode()

    def package_stream(self, model: str, version: int) -> tuple[Any, int | None, str]:
        """(open binary stream, size, file name) of a version's registered package archive."""
        rows = self._all("SELECT artifact_uri, artifact_bytes FROM model_versions WHERE model = %s AND version = %s",
                         (model, int(version)))
        if not rows or not rows[0]["artifact_uri"] or self.artifacts is None:
            raise NotFound(f"model {model} has no registered version {version}")
        key = self.artifacts.key_for(rows[0]["artifact_uri"])
        return self.artifacts.open_read(key), rows[0]["artifact_bytes"], f"{model}-v{version}.tar.gz"

    def lineage(self, model: str, version: int, record: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The chain data commit -> experiment run -> trial -> checkpoint -> version -> deployments."""
        record = record or self.model_version(model, version)
        lin = record.get("lineage") or {}
        data = lin.get("data") or {}
        code = lin.get("code") or {}
        chain: list[dict[str, Any]] = []
        if data:
            chain.append({"kind": "data", "id": f"{data.get('repo', '?')}@{data.get('commit', '?')}",
                          "detail": {k: v for k, v in data.items() if k not in ("repo", "commit")}})
        if lin.get("experiment"):
            chain.append({"kind": "experiment", "id": str(lin["experiment"]),
                          "detail": {"run": lin.get("run"), "runId": lin.get("runId")}})
        if lin.get("trial") is not None:
            chain.append({"kind": "trial", "id": str(lin["trial"]), "detail": {}})
        if lin.get("checkpoint"):
            chain.append({"kind": "checkpoint", "id": str(lin["checkpoint"]), "detail": {}})
        if code:
            chain.append({"kind": "code", "id": (code.get("gitCommit") or "unknown")[:12],
                          "detail": {"image": code.get("image")}})
        chain.append({"kind": "model-version", "id": f"{model} v{version}",
                      "detail": {"name": record.get("resource"), "stage": record.get("stage"),
                                 "artifact": record.get("artifact_uri"), "sha256": record.get("artifact_sha256")}})
        name = record.get("resource")
        deployments = self._all(
            "SELECT DISTINCT namespace, deployment FROM scoring_data WHERE model_version = %s AND namespace = %s "
            "ORDER BY deployment", (name, record.get("namespace"))) if name else []
        for d in deployments:
            chain.append({"kind": "deployment", "id": f"{d['namespace']}/{d['deployment']}", "detail": {}})
        return chain

    # -- deployments ----------------------------------------------------------------------------

    def deployments(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Deployments that answered requests, with their totals."""
        where, args = ("WHERE namespace = %s", [namespace]) if namespace else ("", [])
        return self._all(f"""
            SELECT namespace, deployment AS name, count(*) AS requests,
                   count(*) FILTER (WHERE status_code >= 400 OR error IS NOT NULL) AS errors,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50_ms,
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99_ms,
                   array_agg(DISTINCT model_version) AS model_versions,
                   min(created_at) AS first_request, max(created_at) AS last_request
            FROM scoring_data {where} GROUP BY namespace, deployment ORDER BY namespace, deployment""", args)

    def deployment(self, namespace: str, name: str, *, bucket_seconds: int = 60,
                   points: int = 120) -> dict[str, Any]:
        """A Deployment's scoring figures over time: requests, errors and latency per bucket."""
        if not 1 <= bucket_seconds <= 86_400:
            raise CdlError(f"bucket: {bucket_seconds} seconds is out of range; allowed: 1 to 86400")
        totals = [d for d in self.deployments(namespace) if d["name"] == name]
        if not totals:
            raise NotFound(f"deployment {namespace}/{name} has no scoring data")
        series = self._all("""
            SELECT to_timestamp(floor(extract(epoch FROM created_at) / %(b)s) * %(b)s) AS at,
                   count(*) AS requests,
                   count(*) FILTER (WHERE status_code >= 400 OR error IS NOT NULL) AS errors,
                   count(*) FILTER (WHERE shadow) AS shadow,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50_ms,
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99_ms
            FROM scoring_data WHERE namespace = %(ns)s AND deployment = %(d)s
            GROUP BY 1 ORDER BY 1 DESC LIMIT %(n)s""", {"b": bucket_seconds, "ns": namespace, "d": name, "n": points})
        series.reverse()
        by_version = self._all(
            "SELECT model_version, shadow, count(*) AS requests, avg(latency_ms) AS mean_ms FROM scoring_data "
            "WHERE namespace = %s AND deployment = %s GROUP BY model_version, shadow ORDER BY model_version, shadow",
            (namespace, name))
        return {**totals[0], "bucketSeconds": bucket_seconds, "series": series, "byVersion": by_version}


def trial_view(row: dict[str, Any], metric: str | None) -> dict[str, Any]:
    """A trial row as the API shows it: hyperparameters, metrics, model facts and resources."""
    meta = dict(row.get("metadata") or {})
    best = meta.pop("best_metrics", None) or {}
    model = meta.pop("model", None) or {}
    series = meta.pop("resource_series", None) or []
    return {
        "run": row["run_id"], "trial": row["trial_id"], "state": row["state"], "stopReason": row.get("stop_reason"),
        "hparams": row.get("hparams") or {}, "metric": metric, "best": row.get("best_metric"), "metrics": best,
        "model": model,
        "resources": {"wallSeconds": row.get("wall_seconds"), "cpuSeconds": row.get("cpu_seconds"),
                      "peakRssBytes": row.get("peak_rss_bytes"), "gpuUtilization": row.get("gpu_utilization"),
                      "series": series},
        "checkpoint": {"uuid": row.get("checkpoint_uuid"), "uri": row.get("checkpoint_uri")},
        "metadata": meta, "updatedAt": _iso(row.get("updated_at")),
    }
