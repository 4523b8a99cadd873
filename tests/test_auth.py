"""Log in, log out (here or everywhere), change the password; sessions end when they should; the audit trail."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from datetime import datetime, timedelta
from typing import Any

import pg8000.native
import pytest

from tests.conftest import User
from tests.lambda_client import LambdaClient, Result

CLIENT_IP = "203.0.113.9"
UUID = re.compile(r"^[0-9a-f-]{36}$")
NEW_PASSWORD = "a brand new passphrase"


def log_in(api: LambdaClient, body: object) -> Result:
    return api.request(
        "POST", "/api/v1/auth/sessions", body=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )


def change_password(api: LambdaClient, token: str | None, body: object) -> Result:
    return api.request(
        "POST",
        "/api/v1/auth/password",
        token=token,
        body=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )


def works(api: LambdaClient, token: str) -> bool:
    status = api.request("GET", "/api/v1/scans", token=token).status
    assert status in (200, 401)
    return status == 200


def trail(pg: pg8000.native.Connection) -> list[dict[str, Any]]:
    keys = ("action", "user_id", "via", "status", "source_ip", "request_id")
    rows = pg.run(f"SELECT {', '.join(keys)} FROM audit_events ORDER BY id")
    return [dict(zip(keys, row, strict=True)) for row in rows]


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


def test_logout_everywhere_ends_every_session_of_that_user_only(api: LambdaClient, alice: User, bob: User) -> None:
    other = log_in(api, {"username": "alice", "password": alice.password}).json()["token"]

    assert api.request("DELETE", "/api/v1/auth/sessions", token=alice.token).status == 204

    assert not works(api, alice.token) and not works(api, other)
    assert works(api, bob.token)
    assert api.request("DELETE", "/api/v1/auth/sessions", token=alice.token).status == 401


def test_the_21st_session_ends_the_first_only(api: LambdaClient, alice: User, pg: pg8000.native.Connection) -> None:
    # Given alice's first session (the fixture's) and 19 more: 20 in all
    tokens = [log_in(api, {"username": "alice", "password": alice.password}).json()["token"] for _ in range(19)]
    assert works(api, alice.token)

    # When a 21st is issued
    tokens.append(log_in(api, {"username": "alice", "password": alice.password}).json()["token"])

    # Then the first has ended and the 20 newest work
    assert not works(api, alice.token)
    assert all(works(api, token) for token in tokens)
    assert pg.run("SELECT count(*) FROM sessions WHERE user_id = :id", id=alice.id) == [[20]]


def test_password_change_ends_every_session_and_answers_a_new_one(api: LambdaClient, alice: User, bob: User) -> None:
    other = log_in(api, {"username": "alice", "password": alice.password}).json()["token"]

    result = change_password(api, alice.token, {"currentPassword": alice.password, "newPassword": NEW_PASSWORD})

    assert result.status == 201
    body = result.json()
    assert set(body) == {"token", "expiresAt"}
    assert works(api, body["token"])
    assert not works(api, alice.token) and not works(api, other)
    assert works(api, bob.token)
    assert log_in(api, {"username": "alice", "password": alice.password}).status == 401
    assert log_in(api, {"username": "alice", "password": NEW_PASSWORD}).status == 201


def test_password_change_with_a_wrong_current_password_is_401_and_changes_nothing(
    api: LambdaClient, alice: User
) -> None:
    result = change_password(api, alice.token, {"currentPassword": "not it at all", "newPassword": NEW_PASSWORD})

    assert (result.status, result.error_code) == (401, "invalid_credentials")
    assert works(api, alice.token)
    assert log_in(api, {"username": "alice", "password": alice.password}).status == 201


def test_wrong_current_passwords_count_as_failed_logins(api: LambdaClient, alice: User) -> None:
    for _ in range(5):
        assert (
            change_password(api, alice.token, {"currentPassword": "guess", "newPassword": NEW_PASSWORD}).status == 401
        )

    assert log_in(api, {"username": "alice", "password": alice.password}).status == 429
    throttled = change_password(api, alice.token, {"currentPassword": alice.password, "newPassword": NEW_PASSWORD})
    assert throttled.status == 429 and int(throttled.headers["retry-after"]) >= 1
    assert works(api, alice.token)


@pytest.mark.parametrize(
    ("token", "body", "status"),
    [
        (None, {"currentPassword": "x", "newPassword": NEW_PASSWORD}, 401),
        ("not-a-token", {"currentPassword": "x", "newPassword": NEW_PASSWORD}, 401),
        ("alice", {"currentPassword": "x", "newPassword": "short"}, 422),
        ("alice", {"currentPassword": "x"}, 422),
        ("alice", {"current_password": "x", "new_password": NEW_PASSWORD}, 422),
    ],
)
def test_password_change_refuses_a_bad_request(
    api: LambdaClient, alice: User, token: str | None, body: dict[str, str], status: int
) -> None:
    result = change_password(api, alice.token if token == "alice" else token, body)
    assert result.status == status
    assert works(api, alice.token)


def test_a_reset_by_make_user_ends_every_session(api: LambdaClient, alice: User, pg: pg8000.native.Connection) -> None:
    from shared import auth, db

    assert db.call(auth.create_or_reset_user, username="alice", password=NEW_PASSWORD) is False

    assert not works(api, alice.token)
    assert log_in(api, {"username": "alice", "password": NEW_PASSWORD}).status == 201
    [reset, _] = trail(pg)
    assert (reset["action"], reset["user_id"], reset["via"], reset["status"]) == (
        "admin.reset_password",
        alice.id,
        "admin",
        200,
    )


def test_logins_logouts_and_password_changes_are_audited(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    log_in(api, {"username": "alice", "password": "wrong password"})
    log_in(api, {"username": "nobody", "password": "wrong password"})
    token = log_in(api, {"username": "alice", "password": alice.password}).json()["token"]
    api.request("DELETE", "/api/v1/auth/sessions/current", token=token)
    change_password(api, alice.token, {"currentPassword": "wrong password", "newPassword": NEW_PASSWORD})
    token = change_password(api, alice.token, {"currentPassword": alice.password, "newPassword": NEW_PASSWORD})
    api.request("DELETE", "/api/v1/auth/sessions", token=token.json()["token"])

    rows = trail(pg)
    assert [(r["action"], r["user_id"], r["via"], r["status"]) for r in rows] == [
        ("login.failure", alice.id, "password", 401),
        ("login.failure", None, "password", 401),
        ("login.success", alice.id, "password", 201),
        ("logout", alice.id, "token", 204),
        ("password.change", alice.id, "password", 401),
        ("password.change", alice.id, "password", 201),
        ("logout.all", alice.id, "token", 204),
    ]
    assert {r["source_ip"] for r in rows} == {CLIENT_IP}
    assert all(UUID.match(r["request_id"]) for r in rows)
    assert len({r["request_id"] for r in rows}) == len(rows)


def test_no_password_token_or_typed_username_is_stored_in_the_trail_or_the_failures(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    typed = ["nobody-typed-this", "Hunter2-typed-as-a-username"]
    passwords = ["wrong password one", "wrong password two", alice.password, NEW_PASSWORD]
    log_in(api, {"username": typed[0], "password": passwords[0]})
    log_in(api, {"username": typed[1], "password": passwords[1]})
    token = log_in(api, {"username": "alice", "password": alice.password}).json()["token"]
    new = change_password(api, token, {"currentPassword": alice.password, "newPassword": NEW_PASSWORD}).json()["token"]
    log_in(api, {"username": "alice", "password": passwords[0]})  # a failure of alice's, kept

    dumped = json.dumps(
        pg.run("SELECT row_to_json(e)::text FROM audit_events e")
        + pg.run("SELECT row_to_json(f)::text FROM login_failures f")
    )
    assert len(trail(pg)) == 5
    for secret in [*typed, *passwords, alice.token, token, new]:
        assert secret not in dumped
    assert pg.run("SELECT username_key FROM login_failures ORDER BY id") == [
        [hashlib.sha256(name.lower().encode()).hexdigest()] for name in [*typed, "alice"]
    ]


@pytest.mark.parametrize(
    "stored",
    [
        "scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$not base64!",  # the digest part undecodable
        "scrypt$16384$8$1$!!$AAAA",  # the salt undecodable
        "scrypt$3$8$1$c2FsdA==$AAAA",  # n not a power of two
        "bcrypt$2b$12$abcdefghijklmnopqrstuv",  # another scheme
        "garbage",
    ],
)
def test_login_against_a_malformed_stored_hash_is_401_and_logged_not_500(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection, caplog: pytest.LogCaptureFixture, stored: str
) -> None:
    pg.run("UPDATE users SET password_hash = :h WHERE username = 'alice'", h=stored)

    with caplog.at_level(logging.ERROR, logger="shared.auth.passwords"):
        result = log_in(api, {"username": "alice", "password": alice.password})

    assert result.status == 401 and result.error_code == "invalid_credentials"
    logged = [r.getMessage() for r in caplog.records if r.name == "shared.auth.passwords"]
    assert len(logged) == 1 and "malformed" in logged[0]
    assert stored not in logged[0] and alice.password not in logged[0]
