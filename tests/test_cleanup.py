"""The cleanup job through its function's handler, on the test database."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pg8000.native
import pytest

from functions.cleanup.handler import handler
from shared import db
from shared.auth import LOGIN_LIMITS
from shared.jobs import cleanup
from shared.jobs.cleanup import TableState, needs_vacuum
from tests.conftest import User, admin_connection

# Three image columns of 3 KB each: STORAGE EXTERNAL stores them uncompressed in TOAST (a row goes
# there above ~2 KB), as real images are. md5 of the row number keeps every scan's bytes distinct.
# The original is 192 distinct md5s, which no compression shrinks: migration 009 lets PostgreSQL
# compress that column with lz4 (where the server has it), and a repeated md5 would shrink to
# almost nothing, leaving too few bytes in TOAST to measure.
INSERT_SCANS = """
    INSERT INTO scans (id, owner_id, filename, content_type, width, height, results,
                       original_image_data, annotated_image_data, thumbnail_image_data,
                       file_hash, annotated_hash, thumbnail_hash)
    SELECT 'scan_' || lpad(i::text, 16, '0'), :owner_id, 'slice.png', 'image/png', 512, 512, '{}',
           (SELECT decode(string_agg(md5(i::text || '.' || j::text), '' ORDER BY j), 'hex')
              FROM generate_series(1, 192) AS j),
           decode(repeat(md5(i::text || 'a'), 192), 'hex'),
           decode(repeat(md5(i::text || 't'), 192), 'hex'),
           md5(i::text) || md5(i::text || 'f'), md5(i::text) || md5(i::text || 'a'), md5(i::text) || md5(i::text || 't')
    FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS i
"""
DELETE_SCANS = "DELETE FROM scans WHERE id BETWEEN 'scan_' || lpad(:first, 16, '0') AND 'scan_' || lpad(:last, 16, '0')"
# Heap + TOAST (+ their free space and visibility maps), without indexes: VACUUM never shortens an
# index file, and the indexes of 2,000 scans are a few hundred KB of the ~20 MB.
SIZES = """
    SELECT pg_table_size('scans'), pg_total_relation_size(reltoastrelid) FROM pg_class WHERE oid = 'scans'::regclass
"""


class Context:
    """What the job reads of a Lambda context: the time left."""

    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def sizes(pg: pg8000.native.Connection) -> tuple[int, int]:
    table, toast = pg.run(SIZES)[0]
    return int(table), int(toast)


def quiet_stats(pg: pg8000.native.Connection, tables: tuple[str, ...], timeout_s: float = 15.0) -> None:
    """Start the tables' statistics from zero, once no other backend can still add to them.

    n_live_tup is an estimate every backend adds its counts to when it flushes them: at a
    transaction's end, or about a second after it goes idle. A backend of an earlier test (a
    function's kept connection, a gateway's container) can flush its inserts after this test's
    TRUNCATE and seed, and the report's liveRows then counts rows long gone. So: wait until every
    other backend of this database is gone or idle for over two seconds, then reset the counters.
    """
    db.close_connection()
    deadline = time.monotonic() + timeout_s
    busy = """SELECT count(*) FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
                 AND (state <> 'idle' OR state_change > now() - interval '2 seconds')"""
    while pg.run(busy)[0][0]:
        assert time.monotonic() < deadline, "other backends stayed busy"
        time.sleep(0.2)
    for table in tables:
        pg.run("SELECT pg_stat_reset_single_table_counters(CAST(:t AS regclass))", t=table)


def flush_stats(pg: pg8000.native.Connection) -> None:
    # Our deletes reach pg_stat_user_tables when this backend next goes idle; now, not within a second.
    pg.run("SELECT pg_stat_force_next_flush()")
    pg.run("SELECT 1")


@pytest.fixture
def scans_without_autovacuum(pg: pg8000.native.Connection) -> Iterator[pg8000.native.Connection]:
    """The scans table with autovacuum off, so that only the job vacuums it during the test."""
    pg.run("ALTER TABLE scans SET (autovacuum_enabled = off, toast.autovacuum_enabled = off)")
    try:
        yield pg
    finally:
        pg.run("ALTER TABLE scans RESET (autovacuum_enabled, toast.autovacuum_enabled)")


def seed_expiring_rows(pg: pg8000.native.Connection, user: User, *, old: int, retention_days: int) -> None:
    """`old` expired or out-of-window rows in each table the job purges, and one fresh row in each."""
    window = LOGIN_LIMITS.window_seconds
    for i in range(old):
        pg.run(
            "INSERT INTO sessions (token_hash, user_id, expires_at) VALUES (:h, :u, now() - interval '1 second')",
            h=f"{i:064x}",
            u=user.id,
        )
        pg.run(
            "INSERT INTO login_failures (at, username_key, source_ip)"
            " VALUES (now() - make_interval(secs => :s), :k, '192.0.2.1')",
            s=window + 60 + i,
            k=f"{i:064x}",
        )
        pg.run(
            "INSERT INTO audit_events (at, action, status) VALUES (now() - make_interval(days => :d), 'logout', 204)",
            d=retention_days + 1 + i,
        )
    pg.run(
        "INSERT INTO login_failures (at, username_key, source_ip)"
        " VALUES (now() - make_interval(secs => :s), :k, '192.0.2.1')",
        s=window - 60,
        k="f" * 64,
    )
    pg.run(
        "INSERT INTO audit_events (at, action, status) VALUES (now() - make_interval(days => :d), 'logout', 204)",
        d=retention_days - 1,
    )
    # A retried write's outcome (shared/db/outcomes.py) is kept a day: `old` older ones, one fresh.
    for i in range(old):
        pg.run(
            "INSERT INTO request_outcomes (key, result, created_at)"
            " VALUES (gen_random_uuid(), '{}', now() - make_interval(hours => :h))",
            h=25 + i,
        )
    pg.run("INSERT INTO request_outcomes (key, result) VALUES (gen_random_uuid(), '{}')")


def counts(pg: pg8000.native.Connection) -> dict[str, int]:
    return {
        table: pg.run(f"SELECT count(*) FROM {table}")[0][0] for table in ("sessions", "login_failures", "audit_events")
    }


def test_cleanup_removes_expired_rows_in_batches_and_keeps_fresh_ones(
    pg: pg8000.native.Connection,
    alice: User,
    settings_env: pytest.MonkeyPatch,
) -> None:
    # Given: 7 expired or out-of-window rows per table (three batches of 3), one fresh row per table
    # (alice's live session, a failure inside the window, an event inside a 30-day retention)
    settings_env.setenv("AUDIT_RETENTION_DAYS", "30")
    settings_env.setattr(cleanup, "BATCH_ROWS", 3)
    quiet_stats(pg, ("sessions", "login_failures", "audit_events"))
    seed_expiring_rows(pg, alice, old=7, retention_days=30)
    assert counts(pg) == {"sessions": 8, "login_failures": 8, "audit_events": 8}
    flush_stats(pg)

    # When
    report = handler({}, None)

    # Then: the old rows are gone, the fresh ones kept, and the report says so
    assert counts(pg) == {"sessions": 1, "login_failures": 1, "audit_events": 1}
    assert pg.run("SELECT count(*) FROM request_outcomes")[0][0] == 1
    assert pg.run("SELECT user_id FROM sessions")[0][0] == alice.id
    assert report["status"] == "ok"
    assert report["removed"] == {"sessions": 7, "login_failures": 7, "audit_events": 7, "request_outcomes": 7}
    assert report["thresholds"]["auditRetentionDays"] == 30
    assert report["thresholds"]["loginFailureWindowSeconds"] == LOGIN_LIMITS.window_seconds
    tables = report["tables"]
    assert set(tables) == {"scans", "sessions", "login_failures", "audit_events"}
    for name, table in tables.items():
        assert table["rowsRemoved"] == report["removed"].get(name, 0)
        assert table["bytesReclaimed"] == table["bytesBefore"] - table["bytesAfter"], name
        # A handful of dead rows is under the threshold: no VACUUM, and the report says why.
        assert table["vacuumed"] is False and "under 500" in table["reason"], (name, table)
    assert tables["audit_events"]["deadRows"] == 7 and tables["audit_events"]["liveRows"] == 1
    assert report["bytesReclaimed"] == sum(t["bytesReclaimed"] for t in tables.values())
    assert report["vacuumed"] == []
    assert isinstance(report["tookMs"], int) and report["tookMs"] >= 0

    # And: a second run finds nothing more to do
    again = handler({}, None)
    assert again["status"] == "ok"
    assert again["removed"] == {"sessions": 0, "login_failures": 0, "audit_events": 0, "request_outcomes": 0}
    assert counts(pg) == {"sessions": 1, "login_failures": 1, "audit_events": 1}


def test_cleanup_stops_before_the_functions_deadline_and_says_partial(
    pg: pg8000.native.Connection, alice: User
) -> None:
    seed_expiring_rows(pg, alice, old=2, retention_days=2190)

    report = handler({}, Context(remaining_ms=30_000))  # under the 60 s it keeps for itself

    assert report["status"] == "partial"
    assert report["removed"] == {"sessions": 0, "login_failures": 0, "audit_events": 0, "request_outcomes": 0}
    assert counts(pg) == {"sessions": 3, "login_failures": 3, "audit_events": 3}


def test_cleanup_leaves_no_statement_timeout_on_a_pooled_server_connection(
    pg: pg8000.native.Connection,
    alice: User,
    database_url: str,
    through_pgbouncer: Callable[..., str],
    settings_env: pytest.MonkeyPatch,
) -> None:
    # Given enough expired sessions that the job vacuums their table (with a time limit: the
    # Lambda's), run through pgbouncer in transaction mode with one server connection, which the
    # next client then gets: what the job's session leaves there, that client inherits
    seed_expiring_rows(pg, alice, old=600, retention_days=2190)
    pooled = through_pgbouncer(database_url, pool_size=1)
    settings_env.setenv("DATABASE_URL", pooled)

    report = handler({}, Context(remaining_ms=900_000))

    assert report["status"] == "ok" and "sessions" in report["vacuumed"]
    # Then the next client of that server connection runs under the server's default, no time limit
    con = admin_connection(pooled)
    try:
        assert con.run("SHOW statement_timeout")[0][0] == "0"
    finally:
        con.close()


@pytest.mark.parametrize(
    ("dead", "live", "vacuum"),
    [(499, 0, False), (500, 0, True), (500, 5000, True), (999, 10_000, False), (1000, 10_000, True)],
)
def test_needs_vacuum_at_500_dead_rows_and_a_tenth_of_the_live_ones(dead: int, live: int, vacuum: bool) -> None:
    decided, reason = needs_vacuum(TableState(live_rows=live, dead_rows=dead, total_bytes=0, toast_bytes=0))
    assert decided is vacuum
    assert reason.startswith(f"{dead} dead rows, {live} live")


def run_job_on_half_deleted(pg: pg8000.native.Connection, delete: tuple[int, int]) -> dict[str, Any]:
    pg.run(DELETE_SCANS, first=str(delete[0]), last=str(delete[1]))
    assert pg.row_count == 1000
    flush_stats(pg)
    report = handler({}, None)
    assert report["status"] == "ok"
    scans = report["tables"]["scans"]
    assert scans["vacuumed"] is True and report["vacuumed"] == ["scans"], scans
    # liveRows is the statistics collector's estimate (an earlier ANALYZE of a truncated table can
    # linger in it); the dead rows, which decide, are exact here.
    assert scans["deadRows"] == 1000
    assert scans["reason"].startswith("1000 dead rows, ") and ": at least 500 " in scans["reason"]
    return report


def test_cleanup_gives_back_the_space_of_the_newest_half_of_2000_scans(
    scans_without_autovacuum: pg8000.native.Connection, alice: User
) -> None:
    """VACUUM returns the empty pages at the end of the table and of its TOAST to the filesystem."""
    pg = scans_without_autovacuum
    pg.run(INSERT_SCANS, owner_id=alice.id, first=1, last=1000)
    table_1000, toast_1000 = sizes(pg)
    pg.run(INSERT_SCANS, owner_id=alice.id, first=1001, last=2000)
    table_2000, toast_2000 = sizes(pg)
    assert toast_2000 > 1.8 * toast_1000 > 10_000_000  # the images are in TOAST

    report = run_job_on_half_deleted(pg, delete=(1001, 2000))

    table_after, toast_after = sizes(pg)
    # Back to the size of 1,000 scans (within 10 %: VACUUM adds free-space and visibility maps).
    assert toast_after <= 1.1 * toast_1000, (toast_1000, toast_2000, toast_after)
    assert table_after <= 1.1 * table_1000, (table_1000, table_2000, table_after)
    scans = report["tables"]["scans"]
    assert scans["toastBytesBefore"] >= toast_2000 and scans["toastBytesAfter"] == toast_after
    assert scans["bytesReclaimed"] >= toast_2000 - toast_after - 1_000_000 > 8_000_000


def test_cleanup_makes_the_space_of_the_oldest_half_of_2000_scans_reusable(
    scans_without_autovacuum: pg8000.native.Connection, alice: User
) -> None:
    """Rows deleted from the middle leave free space, not a shorter file: 1,000 new scans fill it."""
    pg = scans_without_autovacuum
    pg.run(INSERT_SCANS, owner_id=alice.id, first=1, last=2000)
    table_2000, toast_2000 = sizes(pg)

    run_job_on_half_deleted(pg, delete=(1, 1000))
    pg.run(INSERT_SCANS, owner_id=alice.id, first=2001, last=3000)

    # Without the VACUUM the new scans would add half again (~+50 %); with it they fit in the old space.
    table_after, toast_after = sizes(pg)
    assert toast_after <= 1.1 * toast_2000, (toast_2000, toast_after)
    assert table_after <= 1.1 * table_2000, (table_2000, table_after)
