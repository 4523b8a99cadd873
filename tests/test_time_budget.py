"""Never outlive the function's timeout: a frozen database costs a JSON 503 in the invocation's time.

The database is frozen by a TCP proxy between the functions and the test server that stops moving
bytes, every socket left open (tests/db_proxy.py): to a client that is exactly a server stopped
with SIGSTOP, or a dead network.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import threading
import time
from collections.abc import Iterator

import pytest

from scripts.dev.localgw.containers import Gateway
from scripts.dev.localgw.events import LambdaContext, build_event
from scripts.dev.localgw.server import GatewayServer
from shared import db
from shared.core import config
from shared.core.config import DatabaseParams
from shared.core.errors import DatabaseUnavailable
from shared.db import connection
from tests.conftest import ROOT, User
from tests.db_proxy import FreezableProxy
from tests.lambda_client import ROUTES, LambdaClient, Result

SCANS = "/api/v1/scans"


@pytest.fixture
def proxy(database_url: str, settings_env: pytest.MonkeyPatch) -> Iterator[FreezableProxy]:
    """The functions' DATABASE_URL goes through a freezable proxy; DB_TIMEOUT_SECONDS is 5 unless a test says."""
    db.close_connection()
    frozen = FreezableProxy(config.parse_database_url(database_url))
    settings_env.setenv("DATABASE_URL", frozen.url())
    settings_env.setenv("DB_TIMEOUT_SECONDS", "5")
    yield frozen
    frozen.thaw()
    db.close_connection()
    frozen.close()


def invoke(path: str, *, token: str, function_timeout_s: int) -> tuple[Result, float]:
    """GET path through its real handler, with a Lambda context of `function_timeout_s`; and how long it took."""
    client = LambdaClient()
    found = client.gateway.match("GET", path)
    assert found is not None
    route, params = found
    event = build_event(
        method="GET",
        raw_path=path,
        raw_query="",
        headers=[("host", client.host), ("authorization", f"Bearer {token}")],
        body=b"",
        source_ip="203.0.113.9",
        route=route,
        path_params=params,
    )
    handler = client.gateway._handler(route)
    context = LambdaContext(dataclasses.replace(route, timeout_s=function_timeout_s), "req-budget")
    started = time.monotonic()
    raw = handler(event, context)
    elapsed = time.monotonic() - started
    headers = {k.lower(): v for k, v in (raw.get("headers") or {}).items()}
    return Result(raw["statusCode"], headers, (raw.get("body") or "").encode(), raw), elapsed


def assert_database_unavailable(result: Result) -> None:
    assert result.status == 503, result.body
    assert result.headers["retry-after"] == "2"
    assert result.error_code == "database_unavailable"


# ---------------------------------------------------------------- through the real handler


@pytest.mark.parametrize("connection", ["warm", "cold"])
def test_frozen_database_answers_503_before_a_3_s_function_times_out(
    proxy: FreezableProxy, alice: User, connection: str
) -> None:
    # Given a container whose connection is open (warm) or not yet (cold), and a database that freezes
    if connection == "warm":
        assert invoke(SCANS, token=alice.token, function_timeout_s=10)[0].status == 200
    proxy.freeze()

    # When a request comes with 3 s left to run
    result, elapsed = invoke(SCANS, token=alice.token, function_timeout_s=3)

    # Then it answers our JSON 503 before the function's 3 s are up (how long it waits, the 3 s less
    # the margin to answer, is a figure of `make bench`: time_budget_503_3s_function_*_s)
    assert_database_unavailable(result)
    assert elapsed < 3, elapsed


def test_frozen_database_costs_db_timeout_once_not_once_per_try(proxy: FreezableProxy, alice: User) -> None:
    # Given a warm container, DB_TIMEOUT_SECONDS=5 and a 15 s function: the database freezes
    assert invoke(SCANS, token=alice.token, function_timeout_s=15)[0].status == 200
    proxy.freeze()

    # When a request comes
    result, elapsed = invoke(SCANS, token=alice.token, function_timeout_s=15)

    # Then the statement and the reconnect share 5 s: 503 well before the 10 s of 5 s each (the
    # figure itself, about 5 s, is time_budget_503_db_timeout_5_s in `make bench`)
    assert_database_unavailable(result)
    assert elapsed < 2 * 5, elapsed


def test_statements_of_an_invocation_share_one_budget(database_url: str, settings_env: pytest.MonkeyPatch) -> None:
    # Given DB_TIMEOUT_SECONDS=1 and statements that each take 0.4 s (a slow database, not a dead one)
    settings_env.setenv("DB_TIMEOUT_SECONDS", "1")
    ran: list[int] = []

    def slow_statements(con: db.Connection) -> None:
        for n in range(4):
            con.run("SELECT pg_sleep(0.4)")
            ran.append(n)

    # When one invocation runs four of them
    with db.invocation_budget(10_000), pytest.raises(DatabaseUnavailable):
        db.call(slow_statements)

    # Then the third one gets the 0.2 s left and no more (cut, not run whole): 503 after 1 s in all
    assert ran == [0, 1]


def test_outside_an_invocation_every_wait_gets_db_timeout_as_before(
    proxy: FreezableProxy, settings_env: pytest.MonkeyPatch, alice: User
) -> None:
    # Given DB_TIMEOUT_SECONDS=1 and a connection whose socket timeout an invocation's budget set
    settings_env.setenv("DB_TIMEOUT_SECONDS", "1")
    config.get_settings.cache_clear()
    assert invoke(SCANS, token=alice.token, function_timeout_s=10)[0].status == 200
    assert db.call(lambda con: (con.run("SELECT 1"), con._usock.gettimeout())[1]) == 1.0
    connects: list[float] = []
    real_connect = connection.connect

    def connect(params: DatabaseParams, *, timeout: float) -> db.Connection:
        connects.append(timeout)
        return real_connect(params, timeout=timeout)

    settings_env.setattr(connection, "connect", connect)

    # When a script's call meets the frozen database, outside any invocation
    proxy.freeze()
    socket_timeouts: list[float | None] = []

    def select(con: db.Connection) -> None:
        socket_timeouts.append(con._usock.gettimeout())
        con.run("SELECT 1")

    with pytest.raises(DatabaseUnavailable):
        db.call(select)

    # Then the statement and the reconnect each wait DB_TIMEOUT_SECONDS, as scripts always have (the
    # time it takes, about 2 s, is time_budget_script_two_waits_of_1_s in `make bench`)
    assert socket_timeouts == [1.0]
    assert connects == [1.0]


# ---------------------------------------------------------------- through the local gateway


def test_local_gateway_answers_503_from_a_frozen_database_before_the_function_times_out(
    proxy: FreezableProxy, alice: User
) -> None:
    # Given the local gateway with the real handlers, their functions' timeout cut to 2 s
    routes = [dataclasses.replace(route, timeout_s=2) for route in ROUTES]
    server = GatewayServer(("127.0.0.1", 0), Gateway(routes, containers=1), docs_root=ROOT)
    server.access_log = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def get(path: str) -> tuple[int, dict[str, str], bytes, float]:
        conn = http.client.HTTPConnection(*server.server_address, timeout=30)
        try:
            started = time.monotonic()
            conn.request("GET", path, headers={"Authorization": f"Bearer {alice.token}"})
            reply = conn.getresponse()
            body = reply.read()
            return reply.status, {k.lower(): v for k, v in reply.getheaders()}, body, time.monotonic() - started
        finally:
            conn.close()

    try:
        assert get(SCANS)[0] == 200
        # When the database freezes under the warm container
        proxy.freeze()
        status, headers, body, elapsed = get(SCANS)
    finally:
        proxy.thaw()
        server.shutdown()
        server.server_close()
        thread.join(10)

    # Then the client gets our JSON 503 with Retry-After, before the gateway's 2 s timeout
    assert (status, headers["retry-after"], headers["content-type"]) == (503, "2", "application/json"), body
    assert json.loads(body)["error"]["code"] == "database_unavailable"
    assert elapsed < 2, elapsed
