"""The ops-invoked admin function: users in a deployed stack, passwords generated and shown once."""

from __future__ import annotations

import json
import logging

import pg8000.native
import pytest

from functions.admin.handler import handler
from tests.conftest import User
from tests.lambda_client import LambdaClient


def log_in(api: LambdaClient, username: str, password: str) -> int:
    body = json.dumps({"username": username, "password": password}).encode()
    return api.request("POST", "/api/v1/auth/sessions", body=body, headers={"content-type": "application/json"}).status


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
