"""The per-container connection: lazy, timed out, reconnects once, then 503 with Retry-After."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pg8000.core
import pg8000.native
import pytest

from shared import db
from shared.core.config import get_settings
from tests.conftest import User, admin_connection
from tests.lambda_client import LambdaClient


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung database)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_unreachable_database_is_503_with_retry_after(
    api: LambdaClient, alice: User, settings_env: pytest.MonkeyPatch
) -> None:
    db.close_connection()
    settings_env.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")

    result = api.request("GET", "/api/v1/scans", token=alice.token)

    assert result.status == 503
    assert result.headers["retry-after"] == "2"
    assert result.error_code == "database_unavailable"


def test_hung_database_answers_503_within_the_timeout_instead_of_hanging(
    api: LambdaClient, alice: User, settings_env: pytest.MonkeyPatch, silent_server: int
) -> None:
    db.close_connection()
    settings_env.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{silent_server}/nothing")
    settings_env.setenv("DB_TIMEOUT_SECONDS", "0.5")

    started = time.monotonic()
    result = api.request("GET", "/api/v1/scans", token=alice.token)
    elapsed = time.monotonic() - started

    assert result.status == 503
    assert result.error_code == "database_unavailable"
    # Connect is attempted at most twice with a 0.5 s socket timeout; far from a Lambda timeout.
    assert elapsed < 10, elapsed


def test_a_killed_backend_is_replaced_transparently(api: LambdaClient, alice: User, unpooled_database_url: str) -> None:
    assert api.request("GET", "/api/v1/scans", token=alice.token).status == 200
    backend = db.call(lambda con: con.run("SELECT pg_backend_pid()")[0][0])

    # The database drops the container's connection (failover, idle timeout, proxy restart). Killed
    # from outside any pooler: through one, the killer could be handed the very backend it kills.
    killer = admin_connection(unpooled_database_url)
    try:
        killer.run("SELECT pg_terminate_backend(:pid)", pid=backend)
    finally:
        killer.close()

    result = api.request("GET", "/api/v1/scans", token=alice.token)
    assert result.status == 200
    assert db.call(lambda con: con.run("SELECT pg_backend_pid()")[0][0]) != backend


def test_connection_is_reused_between_requests(api: LambdaClient, alice: User) -> None:
    api.request("GET", "/api/v1/scans", token=alice.token)
    first = db.call(lambda con: con.run("SELECT pg_backend_pid()")[0][0])
    api.request("GET", "/api/v1/scans", token=alice.token)
    assert db.call(lambda con: con.run("SELECT pg_backend_pid()")[0][0]) == first


# ---------------------------------------------------------------- one round trip per statement


def test_a_statement_with_parameters_takes_one_round_trip(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    flushes: list[int] = []
    real_flush = pg8000.core._flush
    monkeypatch.setattr(pg8000.core, "_flush", lambda sock: (flushes.append(1), real_flush(sock)))
    con = db.connect(get_settings().database, timeout=10)
    try:
        flushes.clear()
        rows = con.run(
            "SELECT CAST(:a AS integer) + 1, CAST(:b AS text), CAST(:c AS bytea)", a=41, b="x", c=b"\x00\xff"
        )
        assert flushes == [1]
        assert rows == [[42, "x", b"\x00\xff"]]
        assert [column["name"] for column in con.columns] == ["?column?", "text", "bytea"]
    finally:
        con.close()


def test_one_trip_statements_behave_as_pg8000s_own(database_url: str) -> None:
    con = db.connect(get_settings().database, timeout=10)
    plain = pg8000.native.Connection.run  # pg8000's three-trip run(), the reference
    try:
        con.run("CREATE TEMP TABLE t (id integer PRIMARY KEY, note text)")
        for run in (plain, db.Connection.run):
            con.run("TRUNCATE t")
            assert run(con, "INSERT INTO t VALUES (:id, :note)", id=1, note="a") is None
            assert con.row_count == 1
            assert run(con, "UPDATE t SET note = :note WHERE id > :id", note="b", id=0) is None
            assert con.row_count == 1
            assert run(con, "SELECT id, note FROM t WHERE id = :id", id=99) == []
            assert run(con, "SELECT note, CAST(:n AS text) FROM t WHERE id = :id", id=1, n=None) == [["b", None]]
            with pytest.raises(pg8000.native.DatabaseError) as duplicate:
                run(con, "INSERT INTO t VALUES (:id, :note)", id=1, note="again")
            assert duplicate.value.args[0]["C"] == "23505"
            with pytest.raises(pg8000.native.DatabaseError) as syntax:
                run(con, "SELEC :id", id=1)
            assert syntax.value.args[0]["C"] == "42601"
            # After each error the connection is ready for the next statement.
            assert run(con, "SELECT count(*) FROM t WHERE id >= :id", id=0) == [[1]]
    finally:
        con.close()


def test_a_failed_statement_inside_a_transaction_rolls_back_cleanly(database_url: str) -> None:
    con = db.connect(get_settings().database, timeout=10)
    try:
        con.run("CREATE TEMP TABLE u (id integer PRIMARY KEY)")
        con.run("START TRANSACTION")
        con.run("INSERT INTO u VALUES (:id)", id=1)
        with pytest.raises(pg8000.native.DatabaseError):
            con.run("INSERT INTO u VALUES (:id)", id=1)
        with pytest.raises(pg8000.native.DatabaseError) as aborted:
            con.run("SELECT count(*) FROM u WHERE id = :id", id=1)
        assert aborted.value.args[0]["C"] == "25P02"  # in_failed_sql_transaction
        con.run("ROLLBACK")
        assert con.run("SELECT count(*) FROM u WHERE id >= :id", id=0) == [[0]]
    finally:
        con.close()


def test_a_bytea_column_can_arrive_raw_in_the_same_one_trip(database_url: str) -> None:
    con = db.connect(get_settings().database, timeout=10)
    try:
        data = bytes(range(256)) * 3
        sql = "SELECT CAST(:n AS integer), CAST(:b AS bytea), CAST(:t AS text)"
        assert con.run_with_raw_bytes(sql, {"n": 7, "b": data, "t": "x"}, column_count=3, raw_column=1) == [
            [7, data, "x"]
        ]
        assert con.run_with_raw_bytes(sql, {"n": None, "b": None, "t": None}, column_count=3, raw_column=1) == [
            [None, None, None]
        ]
        assert con.run(sql, n=7, b=data, t="x") == [[7, data, "x"]]  # and text format as before
    finally:
        con.close()


def test_bytes_parameters_go_as_themselves_and_store_what_pg8000_would(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[bytes] = []
    con = db.connect(get_settings().database, timeout=10)
    real_send = con._send_message
    monkeypatch.setattr(con, "_send_message", lambda code, data: (sent.append(bytes(data)), real_send(code, data)))
    plain = pg8000.native.Connection.run  # pg8000's own run(): bytes as hex text, the reference
    try:
        con.run("CREATE TEMP TABLE b (id integer PRIMARY KEY, note text, data bytea)")
        image = bytes(range(256)) * 4096  # 1 MiB, every byte value
        values: list[Any] = [image, bytearray(b"\x00\x01"), memoryview(b"\xff" * 3), b"", None]
        for i, value in enumerate(values):
            sent.clear()
            db.Connection.run(con, "INSERT INTO b VALUES (:id, :note, :data)", id=i, note=f"n{i}", data=value)
            if value is image:  # the Bind carries the MiB once, not as 2 MiB of hex
                assert len(image) < len(max(sent, key=len)) < len(image) + 1000
            plain(con, "INSERT INTO b VALUES (:id, :note, :data)", id=100 + i, note=f"n{i}", data=value)
        rows = con.run("SELECT id, note, data FROM b ORDER BY id")
        ours, reference = rows[: len(values)], rows[len(values) :]
        # pg8000's own run() stores a memoryview's repr (b"<memory at 0x...>"): ours stores its bytes.
        assert [row[1:] for i, row in enumerate(ours) if i != 2] == [
            row[1:] for i, row in enumerate(reference) if i != 2
        ]
        assert [row[2] for row in ours] == [image, b"\x00\x01", b"\xff\xff\xff", b"", None]
        # Beside text and numbers, and where the statement casts: the same as pg8000's.
        sql = "SELECT CAST(:b AS bytea) || CAST(:c AS bytea), length(:t), CAST(:n AS integer)"
        assert con.run(sql, b=b"ab", c=b"\x00", t="xyz", n=5) == plain(con, sql, b=b"ab", c=b"\x00", t="xyz", n=5)
    finally:
        con.close()


def test_a_transaction_sends_begin_with_its_first_statement(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    flushes: list[int] = []
    real_flush = pg8000.core._flush
    monkeypatch.setattr(pg8000.core, "_flush", lambda sock: (flushes.append(1), real_flush(sock)))
    con = db.connect(get_settings().database, timeout=10)
    try:
        con.run("CREATE TEMP TABLE v (id integer PRIMARY KEY)")
        flushes.clear()
        with db.transaction(con):
            con.run("INSERT INTO v VALUES (:id)", id=1)  # BEGIN goes out with it
            assert con._transaction_status == b"T"  # in a transaction block
            con.run("INSERT INTO v VALUES (2)")
        assert flushes == [1, 1, 1]  # BEGIN + INSERT, INSERT, COMMIT: no round trip for BEGIN alone
        # A simple query (no parameters) as the first statement carries BEGIN too, and the block
        # is one transaction: its failure undoes the first INSERT.
        with pytest.raises(pg8000.native.DatabaseError), db.transaction(con):
            con.run("INSERT INTO v VALUES (3)")
            con.run("INSERT INTO v VALUES (:id)", id=1)
        assert con.run("SELECT array_agg(id ORDER BY id) FROM v") == [[[1, 2]]]
        flushes.clear()
        with db.transaction(con):
            pass
        assert flushes == []  # a block that ran nothing sends nothing
        with pytest.raises(pg8000.native.DatabaseError), db.transaction(con):
            con.run("SELECT 1 / (:zero - :zero)", zero=0)  # fails with BEGIN in the same write
        assert con.run("SELECT count(*) FROM v WHERE id >= :id", id=0) == [[2]]  # and the connection is in step
    finally:
        con.close()


def test_commit_can_go_out_with_a_transactions_last_statement(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushes: list[int] = []
    real_flush = pg8000.core._flush
    monkeypatch.setattr(pg8000.core, "_flush", lambda sock: (flushes.append(1), real_flush(sock)))
    con = db.connect(get_settings().database, timeout=10)
    other = db.connect(get_settings().database, timeout=10)
    try:
        con.run("CREATE TABLE IF NOT EXISTS w_commit_test (id integer PRIMARY KEY)")
        con.run("TRUNCATE w_commit_test")
        flushes.clear()
        with db.transaction(con):
            con.commit_with_next_statement()
            con.run("INSERT INTO w_commit_test VALUES (:id)", id=1)  # BEGIN, INSERT, COMMIT: one write
        assert flushes == [1]
        assert con._transaction_status == b"I"  # committed: no transaction left open
        assert other.run("SELECT count(*) FROM w_commit_test WHERE id = :id", id=1) == [[1]]  # seen outside
        # A failing last statement: its error is raised, the server rolled the transaction back
        # (COMMIT answered as ROLLBACK), and the connection is in step.
        with pytest.raises(pg8000.native.DatabaseError) as duplicate, db.transaction(con):
            con.run("INSERT INTO w_commit_test VALUES (2)")
            con.commit_with_next_statement()
            con.run("INSERT INTO w_commit_test VALUES (:id)", id=1)
        assert duplicate.value.args[0]["C"] == "23505"
        assert other.run("SELECT array_agg(id) FROM w_commit_test WHERE id >= :id", id=0) == [[[1]]]
        assert con.run("SELECT count(*) FROM w_commit_test WHERE id >= :id", id=0) == [[1]]
    finally:
        with contextlib.suppress(Exception):
            con.run("DROP TABLE IF EXISTS w_commit_test")
        con.close()
        other.close()


def test_a_sent_statement_is_answered_later_and_the_connection_stays_in_step(database_url: str) -> None:
    # Connection.send(): the statement goes out, the caller goes on, and its answer is read by its
    # result() or before the connection's next statement, whichever comes first.
    con = db.connect(get_settings().database, timeout=10)
    other = db.connect(get_settings().database, timeout=10)
    try:
        con.run("CREATE TEMP TABLE p (id integer PRIMARY KEY)")
        sent = con.send("INSERT INTO p VALUES (:id) RETURNING id * 10", id=1)
        assert sent.result() == [[10]]
        assert sent.result() == [[10]]  # read once, answered again
        # The next statement reads the pending answer first, then its own.
        sent = con.send("INSERT INTO p VALUES (:id) RETURNING id * 10", id=2)
        assert con.run("SELECT array_agg(id ORDER BY id) FROM p") == [[[1, 2]]]
        assert sent.result() == [[20]]
        # A failing sent statement: its error is its result's; the next statement runs as ever.
        failing = con.send("INSERT INTO p VALUES (:id)", id=1)
        assert con.run("SELECT count(*) FROM p WHERE id > :id", id=0) == [[2]]
        with pytest.raises(pg8000.native.DatabaseError) as duplicate:
            failing.result()
        assert duplicate.value.args[0]["C"] == "23505"
        # Each sent statement is a transaction of its own: committed when answered.
        con.run("CREATE TABLE IF NOT EXISTS p_sent_test (id integer PRIMARY KEY)")
        con.run("TRUNCATE p_sent_test")
        con.send("INSERT INTO p_sent_test VALUES (:id)", id=7).result()
        assert other.run("SELECT array_agg(id) FROM p_sent_test WHERE id > :id", id=0) == [[[7]]]
        # send() is for statements of their own, never the first of a transaction.
        con.begin_with_next_statement()
        with pytest.raises(pg8000.native.InterfaceError):
            con.send("SELECT CAST(:id AS integer)", id=1)
        con.take_pending_begin()
    finally:
        with contextlib.suppress(Exception):
            con.run("DROP TABLE IF EXISTS p_sent_test")
        con.close()
        other.close()


def test_a_sent_statement_whose_answer_is_lost_closes_the_connection(database_url: str) -> None:
    # A network error while the answer is read leaves the connection out of step: it is closed, so
    # that no later statement can read that answer as its own.
    con = db.connect(get_settings().database, timeout=10)
    try:
        sent = con.send("SELECT pg_sleep(:s), 1", s=0.2)
        con._usock.shutdown(socket.SHUT_RD)
        with pytest.raises((pg8000.native.InterfaceError, OSError)):
            sent.result()
        assert con._usock is None
        with pytest.raises(pg8000.native.InterfaceError):
            con.run("SELECT 1")
    finally:
        with contextlib.suppress(Exception):
            con.close()
