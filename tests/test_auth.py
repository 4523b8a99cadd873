"""POST /api/v1/auth/sessions and DELETE /api/v1/auth/sessions/current."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta

import pg8000.native
import pytest

from tests.conftest import User
from tests.lambda_client import LambdaClient, Result


def log_in(api: LambdaClient, body: object) -> Result:
    return api.request(
        "POST", "/api/v1/auth/sessions", body=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )


def test_login_issues_a_token_that_authenticates(api: LambdaClient, alice: User) -> None:
    result = log_in(api, {"username": "alice", "password": alice.password})

    assert result.status == 201
    body = result.json()
    expires = datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00"))
    assert timedelta(hours=11) < expires - datetime.now(expires.tzinfo) <= timedelta(hours=12)
    assert len(body["token"]) >= 43  # 256 bits, base64url
    assert api.request("GET", "/api/v1/scans", token=body["token"]).status == 200


def test_tokens_and_passwords_are_stored_only_as_hashes(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    token = log_in(api, {"username": "alice", "password": alice.password}).json()["token"]

    stored = [row[0].strip() for row in pg.run("SELECT token_hash FROM sessions")]
    assert hashlib.sha256(token.encode()).hexdigest() in stored
    assert token not in stored
    password_hash = pg.run("SELECT password_hash FROM users WHERE username = 'alice'")[0][0]
    assert password_hash.startswith("scrypt$") and alice.password not in password_hash


@pytest.mark.parametrize(
    "body", [{"username": "alice", "password": "wrong"}, {"username": "nobody", "password": "whatever"}]
)
def test_login_with_wrong_credentials_is_401(api: LambdaClient, alice: User, body: dict[str, str]) -> None:
    result = log_in(api, body)
    assert result.status == 401
    assert result.error_code == "invalid_credentials"
    assert result.json()["error"]["message"] == "Wrong username or password."


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{not json",
        b'{"username": "alice"}',
        b'{"username": 5, "password": []}',
        b"[]",
        json.dumps({"username": "a" * 65, "password": "x"}).encode(),
    ],
)
def test_login_with_a_malformed_body_is_422(api: LambdaClient, alice: User, raw: bytes) -> None:
    result = api.request("POST", "/api/v1/auth/sessions", body=raw, headers={"content-type": "application/json"})
    assert result.status == 422
    assert result.error_code == "invalid_request"


def test_logout_ends_the_session(api: LambdaClient, alice: User) -> None:
    assert api.request("DELETE", "/api/v1/auth/sessions/current", token=alice.token).status == 204
    after = api.request("GET", "/api/v1/scans", token=alice.token)
    assert after.status == 401
    assert api.request("DELETE", "/api/v1/auth/sessions/current", token=alice.token).status == 401


def test_logout_ends_only_that_session(api: LambdaClient, alice: User) -> None:
    other = log_in(api, {"username": "alice", "password": alice.password}).json()["token"]
    api.request("DELETE", "/api/v1/auth/sessions/current", token=alice.token)
    assert api.request("GET", "/api/v1/scans", token=other).status == 200


def test_login_clears_that_users_expired_sessions(
    api: LambdaClient, alice: User, bob: User, pg: pg8000.native.Connection
) -> None:
    pg.run("UPDATE sessions SET expires_at = now() - interval '1 hour'")

    log_in(api, {"username": "alice", "password": alice.password})

    rows = pg.run("SELECT user_id, expires_at > now() FROM sessions ORDER BY user_id")
    assert rows == [[alice.id, True], [bob.id, False]]


def test_login_with_a_nul_in_the_username_is_400(api: LambdaClient) -> None:
    result = log_in(api, {"username": "alice\u0000", "password": "whatever"})
    assert result.status == 400
    assert result.error_code == "invalid_request"
