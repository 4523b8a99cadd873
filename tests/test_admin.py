"""The ops-invoked admin function: users in a deployed stack, passwords generated and shown once."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from typing import Any

import pg8000.native
import pytest

from functions.admin.handler import handler
from tests.conftest import User
from tests.lambda_client import LambdaClient


def log_in(api: LambdaClient, username: str, password: str) -> int:
    body = json.dumps({"username": username, "password": password}).encode()
    return api.request("POST", "/api/v1/auth/sessions", body=body, headers={"content-type": "application/json"}).status


def admin_trail(pg: pg8000.native.Connection) -> list[tuple[Any, ...]]:
    rows = pg.run(
        "SELECT action, user_id, via, status, source_ip, request_id FROM audit_events"
        " WHERE action LIKE 'admin.%' ORDER BY id"
    )
    return [tuple(row) for row in rows]


def test_create_user_returns_a_password_that_logs_in(
    api: LambdaClient, pg: pg8000.native.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    result = handler({"action": "create_user", "username": "dr.chen"}, None)

    assert result["ok"] is True and len(result["password"]) >= 20
    assert log_in(api, "dr.chen", result["password"]) == 201
    assert result["password"] not in caplog.text


def test_reset_password_replaces_the_old_one(api: LambdaClient, alice: User) -> None:
    result = handler({"action": "reset_password", "username": "alice"}, None)

    assert result["ok"] is True
    assert log_in(api, "alice", alice.password) == 401
    assert log_in(api, "alice", result["password"]) == 201


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ({"action": "create_user", "username": "alice"}, "exists"),
        ({"action": "reset_password", "username": "nobody"}, "no user"),
        ({"action": "drop_tables", "username": "alice"}, "action"),
        ({"action": "create_user"}, "username"),
        ({"action": "create_user", "username": "x" * 65}, "64 characters"),
    ],
)
def test_bad_admin_requests_say_why(alice: User, event: dict[str, str], error: str) -> None:
    result = handler(event, None)
    assert result["ok"] is False
    assert error in result["error"]


def test_reset_password_ends_every_session(api: LambdaClient, alice: User, bob: User) -> None:
    assert api.request("GET", "/api/v1/scans", token=alice.token).status == 200

    assert handler({"action": "reset_password", "username": "alice"}, None)["ok"] is True

    assert api.request("GET", "/api/v1/scans", token=alice.token).status == 401
    assert api.request("GET", "/api/v1/scans", token=bob.token).status == 200


def test_admin_actions_are_audited_with_the_invocations_request_id(alice: User, pg: pg8000.native.Connection) -> None:
    context = SimpleNamespace(aws_request_id="8f5e6c1a-0000-4000-8000-000000000001")

    created = handler({"action": "create_user", "username": "dr.chen"}, context)
    reset = handler({"action": "reset_password", "username": "alice"}, None)

    dr_chen = pg.run("SELECT id FROM users WHERE username = 'dr.chen'")[0][0]
    assert admin_trail(pg) == [
        ("admin.create_user", dr_chen, "admin", 200, None, context.aws_request_id),
        ("admin.reset_password", alice.id, "admin", 200, None, None),
    ]
    dumped = json.dumps(pg.run("SELECT row_to_json(e)::text FROM audit_events e"))
    assert created["password"] not in dumped and reset["password"] not in dumped


def test_refused_admin_actions_are_audited_as_400(alice: User, pg: pg8000.native.Connection) -> None:
    context = SimpleNamespace(aws_request_id="8f5e6c1a-0000-4000-8000-000000000002")
    handler({"action": "create_user", "username": "alice"}, context)
    handler({"action": "reset_password", "username": "nobody"}, context)
    handler({"action": "create_user", "username": "x" * 65}, context)
    handler({"action": "drop_tables", "username": "alice"}, context)  # not an action: nothing to audit

    assert admin_trail(pg) == [
        ("admin.create_user", alice.id, "admin", 400, None, context.aws_request_id),
        ("admin.reset_password", None, "admin", 400, None, context.aws_request_id),
        ("admin.create_user", None, "admin", 400, None, context.aws_request_id),
    ]
