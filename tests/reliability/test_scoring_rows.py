"""Scoring Data survives any request and any stop: a row PostgreSQL refuses is isolated (stored
escaped or set aside), never blocking the rows behind it, and rows queued when a router stops with
the database away are spooled to disk and written by the next router.

Real PostgreSQL, the real router and seldon model server (through the local serving engine)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cdl.engines.serving.local.router import ScoringWriter
from cdl.stores.postgres import Database
from cdl.stores.records import ScoringRow
from cdl.stores.spool import ScoringSpool
from tests.fixtures.serving.build import sample
from tests.plugins.serving import served

pytestmark = pytest.mark.slow


def wait_for(condition, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_a_poison_request_never_stops_prediction_logging(serving_packages, serving_deploy, serving_post,
                                                         serving_database) -> None:
    key, status = serving_deploy("poison-row", [served(serving_packages["v1"])])
    x, _ = sample(201, seed=5)
    rows = [[float(v) for v in row] for row in x]
    codes = []
    for i, row in enumerate(rows):
        tags = {"note": "nul \u0000 here", "\u0000key": i} if i == 1 else {"i": i}
        code, _, _ = serving_post(status.url, {"data": {"ndarray": [row]}, "meta": {"tags": tags}})
        codes.append(code)
    assert codes == [200] * len(rows)

    stored = wait_for(lambda: (lambda r: r if len(r) >= len(rows) else [])(
        serving_database.scoring_window(key.namespace, key.name, 1000)), 30, f"{len(rows)} scoring rows")
    poison = [r for r in stored if "note" in r.request["meta"]["tags"]]
    print(f"\npoison scoring row: {len(rows)} requests answered 200, {len(stored)} rows stored, "
          f"{len(serving_database.scoring_rejects(key.namespace, key.name))} set aside")
    assert len(stored) == len(rows)
    assert poison[0].request["meta"]["tags"] == {"note": "nul \\u0000 here", "\\u0000key": 1}


def test_rows_queued_when_the_router_stops_with_the_database_away_are_written_later(
        tmp_path: Path, database: Database) -> None:
    spool = ScoringSpool(tmp_path / "scoring-spool")
    away = Database(f"postgresql://cdl@/cdl?host={tmp_path}&port=5999", connect_timeout=1)
    rows = [ScoringRow("ml", "news", "v1", 200, 1.0, request={"data": {"ndarray": [[i]]}},
                       created_at=datetime.now(UTC)) for i in range(700)]

    first = ScoringWriter(None, database=away, spool=spool)
    first.start()
    for row in rows:
        first.put(row)
    first.stop(timeout=2.0)
    assert first.written == 0 and first.spooled == 700 and len(spool) == 700
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in spool.directory.iterdir())

    second = ScoringWriter(None, database=database, spool=spool)  # the next router of the Deployment
    second.start()
    wait_for(lambda: second.written == 700, 30, "the spooled rows written")
    second.stop()
    assert second.replayed == 700 and second.spooled == 0 and len(spool) == 0
    stored = database.scoring_window("ml", "news", 1000)
    assert sorted(r.request["data"]["ndarray"][0][0] for r in stored) == list(range(700))
    assert stored[0].created_at == rows[0].created_at  # the request's time, not the replay's
