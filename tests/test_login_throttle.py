"""Login throttling: 5 failed logins per username or 20 per source IP in 15 minutes, then 429 with Retry-After."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pg8000.native
import pytest

from shared import db
from shared.auth import passwords
from tests.conftest import User
from tests.lambda_client import LambdaClient, Result

WINDOW_SECONDS = 15 * 60
CLIENT_IP = "203.0.113.9"
OTHER_IP = "198.51.100.7"
WRONG = "not the password"


def attempt(api: LambdaClient, username: str, password: str, *, source_ip: str = CLIENT_IP) -> Result:
    return api.request(
        "POST",
        "/api/v1/auth/sessions",
        body=json.dumps({"username": username, "password": password}).encode(),
        headers={"content-type": "application/json"},
        source_ip=source_ip,
    )


def fail(api: LambdaClient, username: str, times: int, *, source_ip: str = CLIENT_IP) -> None:
    for _ in range(times):
        result = attempt(api, username, WRONG, source_ip=source_ip)
        assert (result.status, result.error_code) == (401, "invalid_credentials")


def assert_throttled(result: Result, *, at_most: int = WINDOW_SECONDS, at_least: int = WINDOW_SECONDS - 10) -> None:
    assert result.status == 429
    assert result.error_code == "too_many_attempts"
    assert result.json()["error"]["message"]
    assert at_least <= int(result.headers["retry-after"]) <= at_most


def test_after_five_failures_even_the_right_password_is_429(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    fail(api, "alice", 5)

    assert_throttled(attempt(api, "alice", alice.password))
    assert_throttled(attempt(api, "alice", WRONG))
    # Throttled attempts are not failures: the window still closes 15 minutes after the first one
    assert pg.run("SELECT count(*) FROM login_failures")[0][0] == 5
    assert pg.run("SELECT count(*) FROM sessions WHERE user_id = :id", id=alice.id)[0][0] == 1  # the fixture's
    throttled = pg.run("SELECT user_id, via, status, source_ip FROM audit_events WHERE action = 'login.throttled'")
    assert throttled == [[alice.id, "password", 429, CLIENT_IP]] * 2


def test_retry_after_is_when_the_oldest_counted_failure_leaves_the_window(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    fail(api, "alice", 5)
    pg.run("UPDATE login_failures SET at = at - interval '14 minutes' WHERE id = (SELECT min(id) FROM login_failures)")

    assert_throttled(attempt(api, "alice", alice.password), at_least=50, at_most=60)


def test_twenty_failures_from_one_address_throttle_every_username_from_it(api: LambdaClient, alice: User) -> None:
    for i in range(20):
        fail(api, f"guess{i}", 1)

    assert_throttled(attempt(api, "alice", alice.password))
    assert_throttled(attempt(api, "someone-new", WRONG))
    # Another address is not throttled, and alice has no failures of her own
    assert attempt(api, "alice", alice.password, source_ip=OTHER_IP).status == 201


def test_a_successful_login_resets_that_usernames_count_only(
    api: LambdaClient, alice: User, bob: User, pg: pg8000.native.Connection
) -> None:
    fail(api, "bob", 1)
    fail(api, "alice", 4)

    assert attempt(api, "alice", alice.password).status == 201

    # Without the reset alice would be at 8 failures after these
    fail(api, "alice", 4)
    assert attempt(api, "alice", alice.password).status == 201
    bob_key = hashlib.sha256(b"bob").hexdigest()
    assert pg.run("SELECT username_key FROM login_failures") == [[bob_key]]


def test_the_window_passing_lets_logins_through_again(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    fail(api, "alice", 5)
    assert attempt(api, "alice", alice.password).status == 429

    pg.run("UPDATE login_failures SET at = at - interval '16 minutes'")

    assert attempt(api, "alice", alice.password).status == 201
    assert pg.run("SELECT count(*) FROM login_failures")[0][0] == 0


def test_failures_that_left_the_window_are_cleared(api: LambdaClient, pg: pg8000.native.Connection) -> None:
    fail(api, "nobody", 3)
    pg.run("UPDATE login_failures SET at = at - interval '16 minutes'")

    fail(api, "nobody", 1)

    assert pg.run("SELECT count(*) FROM login_failures")[0][0] == 1


def test_unknown_usernames_are_throttled_the_same_way(api: LambdaClient, pg: pg8000.native.Connection) -> None:
    fail(api, "nobody", 5)

    assert_throttled(attempt(api, "nobody", WRONG))
    # Kept lower-cased (and hashed): another spelling is the same username
    assert_throttled(attempt(api, "NoBody", WRONG))
    assert pg.run("SELECT DISTINCT username_key, source_ip FROM login_failures") == [
        [hashlib.sha256(b"nobody").hexdigest(), CLIENT_IP]
    ]
    assert pg.run("SELECT user_id FROM audit_events WHERE action = 'login.throttled'") == [[None], [None]]


def test_an_unknown_username_costs_what_a_wrong_password_costs(
    api: LambdaClient, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a count of scrypt hashes and of database statements
    hashed: list[str] = []
    statements: list[str] = []
    real_scrypt, real_run = passwords.hashlib.scrypt, db.Connection.run

    def scrypt(*args: Any, **kwargs: Any) -> bytes:
        hashed.append("scrypt")
        return real_scrypt(*args, **kwargs)

    def run(self: db.Connection, sql: str, **kwargs: Any) -> Any:
        statements.append(sql)
        return real_run(self, sql, **kwargs)

    monkeypatch.setattr(passwords.hashlib, "scrypt", scrypt)
    monkeypatch.setattr(db.Connection, "run", run)
    attempt(api, "someone", WRONG, source_ip=OTHER_IP)  # the dummy hash is made once per container
    hashed.clear()
    statements.clear()

    # When one wrong password and one unknown username are tried
    assert attempt(api, "alice", WRONG).status == 401
    wrong_password = (list(hashed), list(statements))
    hashed.clear()
    statements.clear()
    assert attempt(api, "nobody", WRONG).status == 401

    # Then both took one scrypt hash and the same statements
    assert wrong_password == (["scrypt"], statements) and hashed == ["scrypt"]


def test_a_burst_of_parallel_guesses_gets_no_more_than_five_through(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    burst = 16
    start = threading.Barrier(burst)

    def guess(_: int) -> int:
        start.wait()
        try:
            return attempt(api, "alice", WRONG).status
        finally:
            # Each worker thread opened a database connection and an event loop of its own.
            db.close_connection()
            asyncio.get_event_loop_policy().get_event_loop().close()

    with ThreadPoolExecutor(max_workers=burst) as pool:
        statuses = list(pool.map(guess, range(burst)))

    # Each guess either was checked (401) or refused (429); at most five were checked (fewer only
    # when the burst itself filled the window before some were counted)
    assert set(statuses) <= {401, 429}
    assert statuses.count(401) <= 5, statuses
    assert pg.run("SELECT count(*) FROM login_failures")[0][0] == statuses.count(401)
