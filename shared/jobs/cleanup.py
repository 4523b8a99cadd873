"""The cleanup job (the cleanup function, nightly, and `make cleanup`): remove what has expired, then
VACUUM what the removals and scan deletes left behind, and report.

Steps, in order, on one connection of its own, in autocommit statements (never inside
db.transaction: VACUUM cannot run in a transaction block, and a batch that commits on its own holds
its row locks for one statement only), except step 2's one short transaction per S3 key:

1. purge: expired sessions, login_failures older than the throttle window, audit_events older
   than AUDIT_RETENTION_DAYS, request_outcomes older than a day (a retry's answer, seconds old when
   it is needed; shared/db/outcomes.py); BATCH_ROWS rows per DELETE, repeated until a batch comes back short.
2. S3 (with IMAGES_BUCKET; without one, only the orphan list's length is reported): keys of
   storage_orphans listed at least ORPHAN_GRACE_SECONDS ago, and presigned uploads expired at
   least as long ago (table uploads, object `uploads/<id>`). Each key is handled in a short
   transaction of its own that holds the key's lock (storage.lock_keys, the rule of
   shared/storage/locks.py) and re-reads its row under that lock: an object no scan refers to is
   deleted (its size read first from a listing of its key), then its row; a `scans/` key a scan
   refers to again only loses its row. S3 refusing one key rolls back that key's transaction (its
   row stays for the next night), is counted as failed, and the job goes on.
3. vacuum: `VACUUM (ANALYZE)` of each table in TABLES whose dead rows pass the threshold (see
   needs_vacuum). Plain VACUUM takes no lock that blocks reads or writes; it makes the space of
   dead rows (and their TOAST chunks) reusable and gives back to the filesystem only the empty
   pages at the end of a file. VACUUM FULL would give back everything but locks the table against
   reads for the whole rewrite: an ops decision (README, "Cleanup job"), never this job's.

Why step 2 never deletes an object a scan needs: a write that makes a scan refer to a key holds
the key's lock until its row commits, and the job checks key_in_use under the same lock, so it
sees either the committed reference or no write at all. Why the grace: an upload or a move lists
its keys (committed, refreshing `since`) before it takes their locks and writes to S3; a key listed
an hour ago belongs to a write that has ended, and the job re-reads `since` under the lock, so a
write that listed the key again meanwhile keeps it listed (should that write fail after its S3
PUT, the object is still on the list).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pg8000.exceptions import DatabaseError, InterfaceError
from pg8000.native import identifier

from shared import db, storage
from shared.auth import LOGIN_LIMITS
from shared.core.config import Settings
from shared.core.errors import StorageUnavailable
from shared.db import outcomes
from shared.jobs.deadline import Deadline

log = logging.getLogger(__name__)

# One DELETE removes at most this many rows: about a second of work, so no statement holds its
# row locks (or a replica's apply) for long, however much piled up.
BATCH_ROWS = 10_000
# VACUUM a table when its dead rows are at least this many and at least this share of its live
# ones. Autovacuum waits for 20 % + 50; the nightly job catches a scan delete wave below that,
# whose TOAST chunks are most of the database's bytes, while a few stray dead rows are not worth
# reading a whole table for.
VACUUM_MIN_DEAD_ROWS = 500
VACUUM_DEAD_SHARE = 0.10
# The tables the job measures and may vacuum: scans (deleted by users) and the three it purges.
# Names from this fixed tuple are the only text formatted into SQL.
TABLES = ("scans", "sessions", "login_failures", "audit_events")
# With a deadline (the Lambda's), stop starting batches this long before it, and give a VACUUM
# until VACUUM_MARGIN_SECONDS before it (statement_timeout), so the report always gets out.
STOP_BEFORE_DEADLINE_SECONDS = 60.0
VACUUM_MARGIN_SECONDS = 10.0
# Without a deadline (make cleanup), how long one statement may wait on the socket.
LOCAL_STATEMENT_TIMEOUT_SECONDS = 3600.0
QUERY_CANCELED = "57014"

DELETE_EXPIRED_SESSIONS = """
    DELETE FROM sessions WHERE token_hash IN (
        SELECT token_hash FROM sessions WHERE expires_at <= now() LIMIT :batch_rows)
"""
DELETE_OLD_LOGIN_FAILURES = """
    DELETE FROM login_failures WHERE id IN (
        SELECT id FROM login_failures
        WHERE at <= now() - make_interval(secs => CAST(:window_seconds AS integer)) LIMIT :batch_rows)
"""
DELETE_OLD_AUDIT_EVENTS = """
    DELETE FROM audit_events WHERE id IN (
        SELECT id FROM audit_events
        WHERE at < now() - make_interval(days => CAST(:retention_days AS integer)) LIMIT :batch_rows)
"""
# The statistics of this backend's own deletes reach pg_stat_user_tables when it next goes idle,
# at most once a second unless told to flush now (PostgreSQL 15+).
FLUSH_STATS = "SELECT pg_stat_force_next_flush()"
# pg_total_relation_size: the table, its TOAST table and every index; toast_bytes: TOAST alone
# (with its index), where deleted images leave their bytes.
SELECT_TABLE_STATE = """
    SELECT s.relname::text, s.n_live_tup, s.n_dead_tup, pg_total_relation_size(s.relid),
           COALESCE(pg_total_relation_size(NULLIF(c.reltoastrelid, 0)), 0)
    FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
    WHERE s.schemaname = current_schema() AND s.relname::text = ANY(CAST(:tables AS text[]))
"""
# The VACUUM's time limit is a session setting: VACUUM cannot run in a transaction block, so a SET
# LOCAL (or set_config(..., true)) would end before it starts. An explicit SET, not set_config():
# SET is what RDS Proxy recognises and pins the session for (so the VACUUM runs on the backend that
# got the setting); RESET_STATEMENT_TIMEOUT then takes it off again, so a backend that goes back to
# a pool carries nothing to its next client. SET takes no parameters: the value is an int we
# computed, formatted as one.
SET_STATEMENT_TIMEOUT = "SET statement_timeout = {milliseconds:d}"
RESET_STATEMENT_TIMEOUT = "RESET statement_timeout"

# An orphan-list row, or an upload past its expiry, is acted on only once it is this old: the
# upload, move or presigned POST that wrote it has long finished (each takes seconds to minutes).
ORPHAN_GRACE_SECONDS = 3600
# Keys read per SELECT of the S3 steps; each key is then handled in a transaction of its own.
S3_BATCH_KEYS = 500
# Keyset pages (key > :after) so that a key left in place (S3 failed) is not read again this run.
SELECT_DUE_ORPHANS = """
    SELECT key FROM storage_orphans
    WHERE since <= now() - make_interval(secs => CAST(:grace_seconds AS integer)) AND key > :after
    ORDER BY key LIMIT :batch
"""
# Under the key's lock: is the row still there and still old? (A write in progress refreshes
# `since` when it lists the key again, and takes the key off the list when its row commits.)
CLAIM_ORPHAN = """
    SELECT key FROM storage_orphans
    WHERE key = :key AND since <= now() - make_interval(secs => CAST(:grace_seconds AS integer))
    FOR UPDATE
"""
DELETE_ORPHAN = "DELETE FROM storage_orphans WHERE key = :key"
COUNT_ORPHANS = "SELECT count(*) FROM storage_orphans"
SELECT_DUE_UPLOADS = """
    SELECT id FROM uploads
    WHERE expires_at <= now() - make_interval(secs => CAST(:grace_seconds AS integer)) AND id > :after
    ORDER BY id LIMIT :batch
"""
CLAIM_UPLOAD = """
    SELECT id FROM uploads
    WHERE id = :key AND expires_at <= now() - make_interval(secs => CAST(:grace_seconds AS integer))
    FOR UPDATE
"""
DELETE_UPLOAD = "DELETE FROM uploads WHERE id = :key"
COUNT_DUE_UPLOADS = """
    SELECT count(*) FROM uploads WHERE expires_at <= now() - make_interval(secs => CAST(:grace_seconds AS integer))
"""
UPLOADS_PREFIX = "uploads/"


@dataclass(frozen=True)
class TableState:
    """A table's row counts (from the statistics collector) and its size on disk, at one moment."""

    live_rows: int
    dead_rows: int
    total_bytes: int
    toast_bytes: int


def needs_vacuum(state: TableState) -> tuple[bool, str]:
    """Whether the dead rows pass the threshold, and the reason in words (for the report)."""
    floor = max(VACUUM_MIN_DEAD_ROWS, VACUUM_DEAD_SHARE * state.live_rows)
    counts = f"{state.dead_rows} dead rows, {state.live_rows} live"
    if state.dead_rows >= floor:
        return True, f"{counts}: at least {floor:.0f} ({VACUUM_MIN_DEAD_ROWS} and {VACUUM_DEAD_SHARE:.0%} of live)"
    return False, f"{counts}: under {floor:.0f} ({VACUUM_MIN_DEAD_ROWS} and {VACUUM_DEAD_SHARE:.0%} of live)"


def read_table_states(con: db.Connection) -> dict[str, TableState]:
    """TableState of each table in TABLES."""
    rows = con.run(SELECT_TABLE_STATE, tables=list(TABLES))
    return {name: TableState(int(live), int(dead), int(total), int(toast)) for name, live, dead, total, toast in rows}


def purge_batches(con: db.Connection, sql: str, clock: Deadline, **params: Any) -> tuple[int, bool]:
    """Run a batched DELETE until a batch comes back short; (rows removed, whether it finished)."""
    removed = 0
    while not clock.stopping():
        con.run(sql, batch_rows=BATCH_ROWS, **params)
        count = con.row_count
        removed += count
        if count < BATCH_ROWS:
            return removed, True
    return removed, False


@dataclass
class S3Tally:
    """What the S3 steps did, for the report."""

    orphan_objects: int = 0
    orphan_rows_without_object: int = 0
    orphan_rows_referenced_again: int = 0
    expired_uploads: int = 0
    bytes_reclaimed: int = 0
    failed: int = 0


def run_s3_steps(
    con: db.Connection, settings: Settings, clock: Deadline
) -> tuple[dict[str, int], dict[str, Any], bool]:
    """Step 2: (entries for the report's "removed", its "s3" section, whether the steps finished).

    Without IMAGES_BUCKET nothing can be deleted: every row stays, and the orphan list's length is
    reported so that a list growing on a stack that lost its bucket setting gets noticed.
    """
    if settings.images_bucket is None:
        return {}, {"skipped": "no images bucket", "orphanKeysLeft": con.run(COUNT_ORPHANS)[0][0]}, True
    store = storage.ObjectStore(settings.images_bucket)
    tally = S3Tally()
    finished = for_each_due(con, SELECT_DUE_ORPHANS, clock, tally, lambda key: remove_orphan(con, store, key, tally))
    finished = finished and for_each_due(
        con, SELECT_DUE_UPLOADS, clock, tally, lambda upload_id: remove_expired_upload(con, store, upload_id, tally)
    )
    removed = {
        "s3OrphanObjects": tally.orphan_objects,
        "s3OrphanRowsWithoutObject": tally.orphan_rows_without_object,
        "s3OrphanRowsReferencedAgain": tally.orphan_rows_referenced_again,
        "expiredUploads": tally.expired_uploads,
    }
    section = {
        "bytesReclaimed": tally.bytes_reclaimed,
        "failed": tally.failed,
        "orphanKeysLeft": con.run(COUNT_ORPHANS)[0][0],
        "expiredUploadsLeft": con.run(COUNT_DUE_UPLOADS, grace_seconds=ORPHAN_GRACE_SECONDS)[0][0],
    }
    return removed, section, finished and tally.failed == 0


def for_each_due(
    con: db.Connection, select_sql: str, clock: Deadline, tally: S3Tally, handle: Callable[[str], None]
) -> bool:
    """handle() each key select_sql lists, a page at a time; False when the deadline stopped it.

    S3 failing on one key (StorageUnavailable) rolled back that key's transaction, so its row
    stays for the next run; it is counted and the job goes on with the next key.
    """
    after = ""
    while True:
        rows = con.run(select_sql, grace_seconds=ORPHAN_GRACE_SECONDS, after=after, batch=S3_BATCH_KEYS)
        for (key,) in rows:
            if clock.stopping():
                return False
            try:
                handle(key)
            except StorageUnavailable as exc:
                # The class only: ObjectStore already logged the operation and S3's error code.
                log.warning("cleanup: an S3 key is left for the next run (%s)", type(exc).__name__)
                tally.failed += 1
        if len(rows) < S3_BATCH_KEYS:
            return True
        after = rows[-1][0]


def remove_orphan(con: db.Connection, store: storage.ObjectStore, key: str, tally: S3Tally) -> None:
    """One listed key, in a transaction that holds its lock: drop the row of a `scans/` key a scan
    refers to again; otherwise delete the object, then the row (an `uploads/` key is never referred to)."""
    with db.transaction(con):
        storage.lock_keys(con, [key])
        if not con.run(CLAIM_ORPHAN, key=key, grace_seconds=ORPHAN_GRACE_SECONDS):
            return  # listed again by a write in progress, or taken off by one that committed
        if not key.startswith(UPLOADS_PREFIX) and storage.key_in_use(con, key):
            con.run(DELETE_ORPHAN, key=key)
            referenced_again, size = True, None
        else:
            size = delete_object(store, key)
            con.run(DELETE_ORPHAN, key=key)
            referenced_again = False
    if referenced_again:
        tally.orphan_rows_referenced_again += 1
    elif size is None:
        tally.orphan_rows_without_object += 1
    else:
        tally.orphan_objects += 1
        tally.bytes_reclaimed += size


def remove_expired_upload(con: db.Connection, store: storage.ObjectStore, upload_id: str, tally: S3Tally) -> None:
    """One presigned upload past its expiry and the grace: its object (if the client ever sent
    one), then its row, in a transaction that holds the object key's lock."""
    key = UPLOADS_PREFIX + upload_id
    with db.transaction(con):
        storage.lock_keys(con, [key])
        if not con.run(CLAIM_UPLOAD, key=upload_id, grace_seconds=ORPHAN_GRACE_SECONDS):
            return  # completed (or removed) meanwhile
        size = delete_object(store, key)
        con.run(DELETE_UPLOAD, key=upload_id)
        storage.forget_orphans(con, [key])
    tally.expired_uploads += 1
    tally.bytes_reclaimed += size or 0


def delete_object(store: storage.ObjectStore, key: str) -> int | None:
    """Delete an object; its size as a listing of its key found it just before, None when there was none.

    The size comes from ListBucket, which the cleanup role has, not from a HEAD, which would need
    GetObject: this job never needs to read an image. The DELETE goes out even when nothing was
    listed: a presigned POST to an `uploads/` key holds no lock, and a DELETE of nothing is cheap.
    """
    size = store.size_of(key)
    store.delete(key)
    return size


def vacuum_table(con: db.Connection, table: str, clock: Deadline) -> str | None:
    """VACUUM (ANALYZE) one table of TABLES; None when done, else why it was not (time ran out)."""
    left = clock.left()
    if left is not None and left < STOP_BEFORE_DEADLINE_SECONDS:
        return "skipped: too little time left"
    timeout_ms = 0 if left is None else int((left - VACUUM_MARGIN_SECONDS) * 1000)
    if table not in TABLES:
        raise ValueError(f"not a table the cleanup job vacuums: {table!r}")
    # Pins this connection's session on RDS Proxy until it closes: fine for a job that runs alone
    # once a night on a connection of its own. Reset right after, whatever the VACUUM did.
    con.run(SET_STATEMENT_TIMEOUT.format(milliseconds=int(timeout_ms)))
    try:
        con.run(f"VACUUM (ANALYZE) {identifier(table)}")
    except DatabaseError as exc:
        if db.sqlstate(exc) != QUERY_CANCELED:
            raise
        return "cancelled at the time limit"
    finally:
        # A dead connection takes its session, setting and all, with it.
        with contextlib.suppress(InterfaceError, OSError):
            con.run(RESET_STATEMENT_TIMEOUT)
    return None


def run_cleanup(settings: Settings, *, deadline: float | None = None) -> dict[str, Any]:
    """Run the whole job on a connection of its own and return the report (see README, "Cleanup job").

    deadline: time.monotonic() by which the job must have answered (the Lambda's), or None.
    """
    started = time.monotonic()
    clock = Deadline(deadline, stop_before=STOP_BEFORE_DEADLINE_SECONDS)
    # A generous connect timeout, as the migrate function: the proxy may be waking a cold database.
    con = db.connect(settings.database, timeout=max(settings.db_timeout_seconds, 60.0))
    try:
        left = clock.left()
        con.default_timeout = LOCAL_STATEMENT_TIMEOUT_SECONDS if left is None else max(left, 1.0)
        before = read_table_states(con)
        purges = {
            "sessions": (DELETE_EXPIRED_SESSIONS, {}),
            "login_failures": (DELETE_OLD_LOGIN_FAILURES, {"window_seconds": LOGIN_LIMITS.window_seconds}),
            "audit_events": (DELETE_OLD_AUDIT_EVENTS, {"retention_days": settings.audit_retention_days}),
            "request_outcomes": (outcomes.DELETE_OLD_OUTCOMES, {}),
        }
        removed: dict[str, int] = {}
        complete = True
        for table, (sql, params) in purges.items():
            removed[table], finished = purge_batches(con, sql, clock, **params)
            complete = complete and finished
        s3_removed, s3, finished = run_s3_steps(con, settings, clock)
        removed.update(s3_removed)
        complete = complete and finished
        con.run(FLUSH_STATS)
        after_purge = read_table_states(con)
        tables: dict[str, dict[str, Any]] = {}
        for table in TABLES:
            vacuum, reason = needs_vacuum(after_purge[table])
            if vacuum:
                problem = vacuum_table(con, table, clock)
                if problem is not None:
                    vacuum, reason, complete = False, f"{reason}; {problem}", False
            tables[table] = {"vacuumed": vacuum, "reason": reason}
        after = read_table_states(con)
    finally:
        con.close()
    for table in TABLES:
        tables[table] = {
            "rowsRemoved": removed.get(table, 0),
            "bytesBefore": before[table].total_bytes,
            "bytesAfter": after[table].total_bytes,
            # Negative when rows arrived meanwhile faster than space was given back.
            "bytesReclaimed": before[table].total_bytes - after[table].total_bytes,
            "toastBytesBefore": before[table].toast_bytes,
            "toastBytesAfter": after[table].toast_bytes,
            "deadRows": after_purge[table].dead_rows,
            "liveRows": after_purge[table].live_rows,
            **tables[table],
        }
    return {
        "status": "ok" if complete else "partial",
        "removed": removed,
        "bytesReclaimed": sum(t["bytesReclaimed"] for t in tables.values()),
        "vacuumed": [table for table in TABLES if tables[table]["vacuumed"]],
        "tables": tables,
        "s3": s3,
        "thresholds": {
            "batchRows": BATCH_ROWS,
            "vacuumMinDeadRows": VACUUM_MIN_DEAD_ROWS,
            "vacuumDeadShare": VACUUM_DEAD_SHARE,
            "loginFailureWindowSeconds": LOGIN_LIMITS.window_seconds,
            "auditRetentionDays": settings.audit_retention_days,
            "s3GraceSeconds": ORPHAN_GRACE_SECONDS,
        },
        "tookMs": round((time.monotonic() - started) * 1000),
    }
