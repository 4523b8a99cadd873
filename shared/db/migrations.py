"""A small migration runner: numbered SQL files, applied once each, under an advisory lock."""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pg8000.exceptions import InterfaceError

from shared.db.connection import transaction
from shared.db.protocol import Connection

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
FILE_PATTERN = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
# Any constant both runs agree on; "ctscan" in ASCII.
LOCK_KEY = 0x637473636E
IMAGE_COLUMNS = ("original_image_data", "preview_image_data", "annotated_image_data", "thumbnail_image_data")

CREATE_SCHEMA_MIGRATIONS = """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version    TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        checksum   CHAR(64) NOT NULL,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
"""
SELECT_APPLIED = "SELECT version, checksum FROM schema_migrations"
INSERT_APPLIED = "INSERT INTO schema_migrations (version, name, checksum) VALUES (:version, :name, :checksum)"
TRY_LOCK = "SELECT pg_try_advisory_lock(:key)"
UNLOCK = "SELECT pg_advisory_unlock(:key)"
SELECT_COLUMNS = """
    SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attstorage, a.attnotnull, a.attcompression
    FROM pg_attribute a
    WHERE a.attrelid = to_regclass('scans') AND a.attnum > 0 AND NOT a.attisdropped
"""
STORAGE_NAMES = {"p": "plain", "e": "external", "m": "main", "x": "extended"}
# Migration 009: the original is lz4-compressed (EXTENDED) where the server has lz4, else EXTERNAL.
LZ4_ORIGINAL = ("original_image_data", "extended", "l")


class MigrationError(Exception):
    """A migration could not be applied, or the schema is not what the code expects."""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file, to notice a migration edited after it landed."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in version order; a misnamed or duplicate-numbered file is an error."""
    found: dict[str, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = FILE_PATTERN.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNN_description.sql")
        version = match.group(1)
        if version in found:
            raise MigrationError(f"two migrations numbered {version}")
        found[version] = Migration(version, path.stem, path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def run_migrations(
    con: Connection, *, directory: Path = MIGRATIONS_DIR, lock_wait_seconds: float = 120.0
) -> dict[str, Any]:
    """Apply every pending migration, each with its bookkeeping row in one transaction; return a report."""
    migrations = load_migrations(directory)
    _acquire_lock(con, lock_wait_seconds)
    try:
        con.run(CREATE_SCHEMA_MIGRATIONS)
        applied_before = {row[0]: row[1].strip() for row in con.run(SELECT_APPLIED)}
        applied: list[str] = []
        already: list[str] = []
        for migration in migrations:
            recorded = applied_before.get(migration.version)
            if recorded is not None:
                if recorded != migration.checksum:
                    raise MigrationError(f"{migration.name} was edited after it was applied; add a new migration")
                already.append(migration.name)
                continue
            with transaction(con):
                con.run(migration.sql)
                con.run(INSERT_APPLIED, version=migration.version, name=migration.name, checksum=migration.checksum)
            applied.append(migration.name)
        unknown = sorted(set(applied_before) - {m.version for m in migrations})
        columns = verify_image_columns(con)
    finally:
        # If the connection died the server has already dropped the session lock.
        with contextlib.suppress(InterfaceError, OSError):
            con.run(UNLOCK, key=LOCK_KEY)
    ok = all(column["ok"] for column in columns)
    report: dict[str, Any] = {
        "status": "ok" if ok else "error",
        "applied": applied,
        "alreadyApplied": already,
        "unknownVersions": unknown,
        "columns": columns,
    }
    if not ok:
        raise MigrationError(f"image columns are not as expected: {report}")
    return report


def verify_image_columns(con: Connection) -> list[dict[str, Any]]:
    """Each image column with its type and storage, and whether it is the expected bytea EXTERNAL
    (or, for the original, EXTENDED with lz4: migration 009)."""
    found = {row[0]: row for row in con.run(SELECT_COLUMNS)}
    report = []
    for name in IMAGE_COLUMNS:
        row = found.get(name)
        column_type = row[1] if row else None
        storage = STORAGE_NAMES.get(row[2], row[2]) if row else None
        report.append(
            {
                "column": name,
                "type": column_type,
                "storage": storage,
                "notNull": bool(row[3]) if row else None,
                "ok": column_type == "bytea"
                and (storage == "external" or (name, storage, row and row[4]) == LZ4_ORIGINAL),
            }
        )
    return report


def _acquire_lock(con: Connection, wait_seconds: float) -> None:
    # Polling pg_try_advisory_lock instead of blocking in pg_advisory_lock keeps every call
    # shorter than the socket timeout, and lets us give up with a clear message.
    deadline = time.monotonic() + wait_seconds
    while not con.run(TRY_LOCK, key=LOCK_KEY)[0][0]:
        if time.monotonic() > deadline:
            raise MigrationError(f"another migration run held the lock for over {wait_seconds:.0f} s")
        time.sleep(0.1)
