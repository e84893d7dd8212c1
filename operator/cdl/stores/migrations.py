"""Versioned schema migrations, applied at operator start-up.

Migrations are the files `cdl/stores/migrations/NNNN_name.sql`, applied in order, each in its own
transaction, and recorded in `cdl_schema_migrations` with a checksum of the file. Everything runs
under a PostgreSQL advisory lock, so two operators (or two threads) starting together apply each
migration exactly once; running it again applies nothing. A migration whose file changed after it
was applied is reported, never re-run.
"""

from __future__ import annotations

import hashlib
import logging
import re
import zlib
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql

from cdl.stores.errors import MigrationError

log = logging.getLogger(__name__)

TRACKING_TABLE = "cdl_schema_migrations"
FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.replace("\r\n", "\n").strip().encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def load_migrations(package: str = "cdl.stores", folder: str = "migrations") -> list[Migration]:
    """The migration files shipped with cdl, in version order (a gap or duplicate is an error)."""
    found: dict[int, Migration] = {}
    for entry in resources.files(package).joinpath(folder).iterdir():
        match = FILE_NAME.match(entry.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations with version {version:04d}: {found[version].label} and {entry.name}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    ordered = [found[v] for v in sorted(found)]
    for expected, migration in enumerate(ordered, start=1):
        if migration.version != expected:
            raise MigrationError(f"migration {expected:04d} is missing (next is {migration.label})")
    return ordered


def lock_key(schema: str | None) -> int:
    """The advisory lock id for migrating one schema (a signed 64-bit number)."""
    value = zlib.crc32(f"cdl.migrate:{schema or ''}".encode()) | (0x5CD1 << 32)
    return value - (1 << 64) if value >= (1 << 63) else value


def apply_migrations(conn: psycopg.Connection, migrations: list[Migration], schema: str | None = None) -> list[int]:
    """Apply the pending migrations on an autocommit connection; return the versions applied now."""
    if not conn.autocommit:
        raise ValueError("apply_migrations needs an autocommit connection (each migration is its own transaction)")
    key = lock_key(schema)
    conn.execute("SELECT pg_advisory_lock(%s)", (key,))
    try:
        if schema:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, name text NOT NULL, "
            "checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        ).format(_table(schema)))
        applied = {
            version: (name, checksum)
            for version, name, checksum in conn.execute(
                sql.SQL("SELECT version, name, checksum FROM {}").format(_table(schema))).fetchall()
        }
        known = {m.version for m in migrations}
        newer = sorted(v for v in applied if v not in known)
        if newer:
            log.warning("database schema has migrations this cdl does not know (%s); a newer cdl migrated it",
                        ", ".join(f"{v:04d}" for v in newer))
        done = []
        for migration in migrations:
            if migration.version in applied:
                name, checksum = applied[migration.version]
                if checksum != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.label} was changed after it was applied to this database; "
                        "add a new migration instead of editing an applied one")
                continue
            try:
                with conn.transaction():
                    if schema:
                        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
                    conn.execute(migration.sql)  # type: ignore[arg-type]  # a file of statements
                    conn.execute(
                        sql.SQL("INSERT INTO {} (version, name, checksum) VALUES (%s, %s, %s)").format(_table(schema)),
                        (migration.version, migration.name, migration.checksum))
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                raise MigrationError(f"migration {migration.label} failed: {exc}") from exc
            log.info("applied schema migration %s", migration.label)
            done.append(migration.version)
        return done
    finally:
        if not conn.closed and not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def _table(schema: str | None) -> sql.Composable:
    return sql.Identifier(schema, TRACKING_TABLE) if schema else sql.Identifier(TRACKING_TABLE)
