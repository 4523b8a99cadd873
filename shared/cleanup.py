"""The cleanup job (the cleanup function, nightly, and `make cleanup`): remove what has expired, then
VACUUM what the removals and scan deletes left behind, and report.

Steps, in order, each on its own connection's autocommit statements (never inside db.transaction:
VACUUM cannot run in a transaction block, and a batch that commits on its own holds its row locks
for one statement only):

1. purge: expired sessions, login_failures older than the throttle window, audit_events older
   than AUDIT_RETENTION_DAYS; BATCH_ROWS rows per DELETE, repeated until a batch comes back short.
2. vacuum: `VACUUM (ANALYZE)` of each table in TABLES whose dead rows pass the threshold (see
   needs_vacuum). Plain VACUUM takes no lock that blocks reads or writes; it makes the space of
   dead rows (and their TOAST chunks) reusable and gives back to the filesystem only the empty
   pages at the end of a file. VACUUM FULL would give back everything but locks the table against
   reads for the whole rewrite: an ops decision (README, "Cleanup job"), never this job's.

Later steps (S3: objects of uploads never completed, images of deleted scans) go between 1 and 2,
as more purge steps with their own entries in the report's "removed".
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from pg8000.exceptions import DatabaseError
from pg8000.native import identifier

from shared import db
from shared.auth import LOGIN_LIMITS
from shared.config import Settings

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
SET_STATEMENT_TIMEOUT = "SELECT set_config('statement_timeout', :value, false)"


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


class _Clock:
    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline

    def left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def stopping(self) -> bool:
        left = self.left()
        return left is not None and left < STOP_BEFORE_DEADLINE_SECONDS


def purge_batches(con: db.Connection, sql: str, clock: _Clock, **params: Any) -> tuple[int, bool]:
    """Run a batched DELETE until a batch comes back short; (rows removed, whether it finished)."""
    removed = 0
    while not clock.stopping():
        con.run(sql, batch_rows=BATCH_ROWS, **params)
        count = con.row_count
        removed += count
        if count < BATCH_ROWS:
            return removed, True
    return removed, False


def vacuum_table(con: db.Connection, table: str, clock: _Clock) -> str | None:
    """VACUUM (ANALYZE) one table of TABLES; None when done, else why it was not (time ran out)."""
    left = clock.left()
    if left is not None and left < STOP_BEFORE_DEADLINE_SECONDS:
        return "skipped: too little time left"
    timeout_ms = 0 if left is None else int((left - VACUUM_MARGIN_SECONDS) * 1000)
    if table not in TABLES:
        raise ValueError(f"not a table the cleanup job vacuums: {table!r}")
    # set_config, not SET: a SET cannot take a parameter. (It pins the session on RDS Proxy: fine
    # for a job that runs alone once a night, as the migrate function's advisory lock is.)
    con.run(SET_STATEMENT_TIMEOUT, value=str(timeout_ms))
    try:
        con.run(f"VACUUM (ANALYZE) {identifier(table)}")
    except DatabaseError as exc:
        if db._sqlstate(exc) != QUERY_CANCELED:
            raise
        return "cancelled at the time limit"
    return None


def run_cleanup(settings: Settings, *, deadline: float | None = None) -> dict[str, Any]:
    """Run the whole job on a connection of its own and return the report (see README, "Cleanup job").

    deadline: time.monotonic() by which the job must have answered (the Lambda's), or None.
    """
    started = time.monotonic()
    clock = _Clock(deadline)
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
        }
        removed: dict[str, int] = {}
        complete = True
        for table, (sql, params) in purges.items():
            removed[table], finished = purge_batches(con, sql, clock, **params)
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
        "thresholds": {
            "batchRows": BATCH_ROWS,
            "vacuumMinDeadRows": VACUUM_MIN_DEAD_ROWS,
            "vacuumDeadShare": VACUUM_DEAD_SHARE,
            "loginFailureWindowSeconds": LOGIN_LIMITS.window_seconds,
            "auditRetentionDays": settings.audit_retention_days,
        },
        "tookMs": round((time.monotonic() - started) * 1000),
    }
