"""A small migration runner: numbered SQL files, applied once each, under a lock row with a lease.

Why a row and not an advisory lock: a session advisory lock belongs to a server connection, and a
transaction pooler (pgbouncer in transaction mode; RDS Proxy multiplexes the same way unless it pins)
hands that connection to other clients between transactions. Through pgbouncer two runners both got
pg_try_advisory_lock = true on the same backend and applied migrations at once, and an unlock that
landed on another backend left the lock held by an idle pooled connection. A transaction-scoped
advisory lock would survive a pooler but rules out statements that cannot run in a transaction
(CREATE INDEX CONCURRENTLY) in later migrations. A row in `migration_lock`, taken and given back in
statements that each commit on their own, means the same thing on any connection: whoever holds
the row holds the lock, until it gives it back or its lease runs out (a runner that crashed, or a
Lambda killed at its time limit, blocks the next run for at most the lease).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pg8000.exceptions import DatabaseError, InterfaceError

from shared.db.connection import UNIQUE_VIOLATION, sqlstate, transaction
from shared.db.protocol import Connection

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
FILE_PATTERN = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
# How long a runner holds the lock without renewing it. It renews before each migration, so this
# bounds one migration (the migrate function's own limit is 900 s), and how long a crashed runner
# keeps the next one waiting.
LOCK_LEASE_SECONDS = 1200.0
# How often a runner that finds the lock held asks again.
LOCK_POLL_SECONDS = 0.2
DUPLICATE_TABLE = "42P07"
DUPLICATE_OBJECT = "42710"  # the table's row type, when two CREATEs race for its name in pg_type
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
# The lock must exist before migration 001 on a fresh database, so the runner creates it itself.
CREATE_MIGRATION_LOCK = """
    CREATE TABLE IF NOT EXISTS migration_lock (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        holder      TEXT NOT NULL,
        acquired_at TIMESTAMPTZ NOT NULL,
        expires_at  TIMESTAMPTZ NOT NULL
    )
"""
# One statement, committed on its own: take the row when there is none or its lease has run out.
# A concurrent taker waits for the first one's commit, then sees a live lease and gets no row back.
# `previous` names a holder whose expired lease this took over (for the log).
TAKE_LOCK = """
    WITH previous AS (SELECT holder FROM migration_lock WHERE id = 1)
    INSERT INTO migration_lock (id, holder, acquired_at, expires_at)
    VALUES (1, :holder, now(), now() + make_interval(secs => CAST(:lease_seconds AS double precision)))
    ON CONFLICT (id) DO UPDATE
        SET holder = EXCLUDED.holder, acquired_at = EXCLUDED.acquired_at, expires_at = EXCLUDED.expires_at
        WHERE migration_lock.expires_at < now()
    RETURNING (SELECT holder FROM previous)
"""
# Renewing also proves the lease is still ours: no row back means another runner took it over.
# clock_timestamp(), not now(): inside a migration's transaction now() is when that transaction began.
RENEW_LOCK = """
    UPDATE migration_lock
    SET expires_at = clock_timestamp() + make_interval(secs => CAST(:lease_seconds AS double precision))
    WHERE id = 1 AND holder = :holder
    RETURNING holder
"""
SELECT_LOCK = "SELECT holder, expires_at FROM migration_lock WHERE id = 1"
RELEASE_LOCK = "DELETE FROM migration_lock WHERE id = 1 AND holder = :holder"
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
    con: Connection,
    *,
    directory: Path = MIGRATIONS_DIR,
    lock_wait_seconds: float = 120.0,
    lease_seconds: float = LOCK_LEASE_SECONDS,
) -> dict[str, Any]:
    """Apply every pending migration, each with its bookkeeping row in one transaction; return a report."""
    migrations = load_migrations(directory)
    holder = _acquire_lock(con, wait_seconds=lock_wait_seconds, lease_seconds=lease_seconds)
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
            # A fresh lease for each migration, committed before it starts (inside its transaction the
            # renewal would hold the row's lock, and a waiting runner's statement with it).
            _renew_lock(con, holder=holder, lease_seconds=lease_seconds)
            with transaction(con):
                con.run(migration.sql)
                con.run(INSERT_APPLIED, version=migration.version, name=migration.name, checksum=migration.checksum)
                # Last before COMMIT, so the row is locked only for that instant: the migration commits
                # only if its lease is still ours.
                _renew_lock(con, holder=holder, lease_seconds=lease_seconds)
            applied.append(migration.name)
        unknown = sorted(set(applied_before) - {m.version for m in migrations})
        columns = verify_image_columns(con)
    finally:
        # If the connection died, the lease runs out on its own.
        with contextlib.suppress(InterfaceError, OSError):
            con.run(RELEASE_LOCK, holder=holder)
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


def _acquire_lock(con: Connection, *, wait_seconds: float, lease_seconds: float) -> str:
    """Take the lock row, asking again until `wait_seconds` have passed; return this run's holder name."""
    _create_lock_table(con)
    # Host and pid tell ops whose lock it is; the random part tells two runs of one process apart.
    holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    # Polling instead of waiting on the row keeps every statement shorter than the socket timeout,
    # and lets us give up with a clear message.
    deadline = time.monotonic() + wait_seconds
    while not (rows := con.run(TAKE_LOCK, holder=holder, lease_seconds=lease_seconds)):
        if time.monotonic() > deadline:
            held = con.run(SELECT_LOCK)
            by = f" ({held[0][0]}, lease until {held[0][1].isoformat()})" if held else ""
            raise MigrationError(f"another migration run held the lock for over {wait_seconds:.0f} s{by}")
        time.sleep(LOCK_POLL_SECONDS)
    if rows[0][0] is not None:
        log.warning("took over the migration lock of %s, whose lease had run out", rows[0][0])
    return holder


def _create_lock_table(con: Connection) -> None:
    # Two first runs on a fresh database may both find the table missing; the loser's CREATE fails
    # (duplicate type name or table) once the winner commits, and then the table is there.
    try:
        con.run(CREATE_MIGRATION_LOCK)
    except DatabaseError as exc:
        if sqlstate(exc) not in (UNIQUE_VIOLATION, DUPLICATE_TABLE, DUPLICATE_OBJECT):
            raise
        con.run(CREATE_MIGRATION_LOCK)


def _renew_lock(con: Connection, *, holder: str, lease_seconds: float) -> None:
    if not con.run(RENEW_LOCK, holder=holder, lease_seconds=lease_seconds):
        raise MigrationError("the migration lock's lease ran out and another run took it over; run again")
