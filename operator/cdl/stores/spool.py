"""Scoring rows kept on disk while they cannot reach PostgreSQL.

A router that stops (`cdl down`, a redeploy) with rows still queued, because the database is
away or slow, writes them here instead of dropping them; the next router of the Deployment reads
them back first and writes them in order. Each spool file is written whole (temporary file, then
rename) with mode 0600, since rows hold the clients' requests.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import orjson

from cdl.stores.records import ScoringRow, from_row

log = logging.getLogger(__name__)


class ScoringSpool:
    """A folder of JSON-lines files of `ScoringRow`s, oldest file first."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def save(self, rows: list[ScoringRow]) -> Path | None:
        """Write `rows` to a new spool file; return its path (None when there is nothing to keep)."""
        if not rows:
            return None
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.directory / f"rows-{time.time_ns():020d}-{os.getpid()}.jsonl"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            for row in rows:
                out.write(orjson.dumps(asdict(row), default=str, option=orjson.OPT_SERIALIZE_NUMPY))
                out.write(b"\n")
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
        return path

    def take(self) -> list[ScoringRow]:
        """Every spooled row, oldest first; the files are removed (the caller now holds the rows).
        A line that does not parse (a file cut short by a crash) is skipped and logged."""
        if not self.directory.is_dir():
            return []
        rows: list[ScoringRow] = []
        for path in sorted(self.directory.glob("rows-*.jsonl")):
            skipped = 0
            for line in path.read_bytes().splitlines():
                try:
                    data = orjson.loads(line)
                    if data.get("created_at"):
                        data["created_at"] = datetime.fromisoformat(data["created_at"])
                    rows.append(from_row(ScoringRow, data))
                except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
                    skipped += 1
            if skipped:
                log.warning("%d unreadable line(s) of spool file %s skipped", skipped, path)
            path.unlink()
        return rows

    def __len__(self) -> int:
        if not self.directory.is_dir():
            return 0
        return sum(len(p.read_bytes().splitlines()) for p in self.directory.glob("rows-*.jsonl"))
