"""The auth function is plain Starlette (its cold start, paid by the first login after an idle spell);
shared.http.plain reads and checks its JSON bodies as FastAPI checked its Pydantic models. Held here
against FastAPI itself: each request goes to the real handler through its Lambda entry point and to
the FastAPI stub that describes the route in openapi.json (scripts/build/openapi.py), run with the
FastAPI functions' error handling (shared.http.app), and the answers must agree: the same 4xx error,
or both take the body (the stub's endpoints then fail on purpose: they only describe)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.routing import APIRoute

from scripts.build import openapi
from scripts.dev.localgw.events import LambdaContext
from shared.http.app import create_app
from shared.http.entry import lambda_handler
from tests.conftest import User
from tests.lambda_client import ROUTES, LambdaClient, Result

LOGIN = "/api/v1/auth/sessions"
PASSWORD = "/api/v1/auth/password"
JSON = "application/json"


class StubClient(LambdaClient):
    """The same events, to the auth stub run by FastAPI with our error handlers."""

    def __init__(self) -> None:
        super().__init__()
        app = create_app("auth-stub")
        app.router.routes.extend(r for r in openapi.auth_stub().routes if isinstance(r, APIRoute))
        self.stub = lambda_handler(app)

    def invoke(self, function_name: str, event: dict[str, Any]) -> Result:
        route = next(r for r in ROUTES if r.function_name == function_name)
        raw = json.loads(json.dumps(self.stub(event, LambdaContext(route, event["requestContext"]["requestId"]))))
        headers = {k.lower(): v for k, v in (raw.get("headers") or {}).items()}
        return Result(raw["statusCode"], headers, (raw.get("body") or "").encode(), raw)


@pytest.fixture(scope="module")
def fastapi_stub() -> StubClient:
    return StubClient()


def agree(ours: Result, fastapi: Result) -> None:
    """FastAPI's refusal, word for word; or FastAPI took the body (its stub endpoint then fails with a
    500) and so do we (whatever the handler then decides: 201, 401, ...)."""
    if fastapi.status in (400, 422):
        assert (ours.status, ours.json()) == (fastapi.status, fastapi.json())
    else:
        assert fastapi.status == 500, fastapi.body  # the stub's endpoint was reached
        assert ours.status not in (400, 422), ours.body


def object_body(**members: Any) -> bytes:
    return json.dumps(members).encode()


BODIES: list[tuple[str | None, bytes]] = [
    (JSON, object_body(username="nobody", password="secret")),
    (JSON, b""),
    (JSON, b"{"),
    (JSON, b'{"username": "nobody", "password": "secret"} trailing'),
    (JSON, b"[]"),
    (JSON, b'"text"'),
    (JSON, b"null"),
    (JSON, b"42"),
    (JSON, b"\xff\xfe\xfa"),
    (JSON, b"[" * 100_000),
    (JSON, object_body(username="", password="secret")),
    (JSON, object_body(username="u" * 65, password="secret")),
    (JSON, object_body(username="u" * 64, password="p" * 1024)),
    (JSON, object_body(username="nobody", password="p" * 1025)),
    (JSON, object_body(username=7, password=None)),
    (JSON, object_body(password="secret")),
    (JSON, object_body()),
    (JSON, object_body(username="nobody", password="secret", remember=True)),
    (JSON, object_body(extra=1, username="nobody")),
    (JSON, object_body(username="ü" * 64, password="secret")),
    ("text/plain", object_body(username="nobody", password="secret")),
    (None, object_body(username="nobody", password="secret")),
    ("application/x-www-form-urlencoded", b"username=nobody&password=secret"),
    ("application/vnd.api+json", object_body(username="nobody", password="secret")),
    ("Application/JSON; charset=utf-8", object_body(username="nobody", password="secret")),
    ("application/json/extra", object_body(username="nobody", password="secret")),
    ("json", object_body(username="nobody", password="secret")),
]


@pytest.mark.parametrize(("content_type", "body"), BODIES)
def test_a_login_body_is_taken_or_refused_as_fastapi_did(
    api: LambdaClient, fastapi_stub: StubClient, pg: Any, content_type: str | None, body: bytes
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    agree(
        api.request("POST", LOGIN, headers=headers, body=body),
        fastapi_stub.request("POST", LOGIN, headers=headers, body=body),
    )


CHANGES: list[bytes] = [
    object_body(currentPassword="not-the-password", newPassword="a new long passphrase"),
    object_body(currentPassword="not-the-password", newPassword="short"),
    object_body(current_password="x", new_password="a new long passphrase"),
    object_body(currentPassword="", newPassword=""),
    object_body(newPassword=["a new long passphrase"]),
    b"{}",
    b"",
    b"{,}",
]


@pytest.mark.parametrize("body", CHANGES)
def test_a_password_change_body_is_taken_or_refused_as_fastapi_did(
    api: LambdaClient, fastapi_stub: StubClient, alice: User, body: bytes
) -> None:
    headers = {"content-type": JSON}
    ours = api.request("POST", PASSWORD, token=alice.token, headers=headers, body=body)
    agree(ours, fastapi_stub.request("POST", PASSWORD, token=alice.token, headers=headers, body=body))


def test_a_password_change_reads_its_json_before_the_token_and_checks_it_after(api: LambdaClient) -> None:
    # FastAPI's order: a body that is not JSON is refused before the owner is resolved (422), a
    # well-formed one with bad members after it (401 without a token).
    headers = {"content-type": JSON}
    assert api.request("POST", PASSWORD, headers=headers, body=b"{,}").status == 422
    assert api.request("POST", PASSWORD, headers=headers, body=b"{}").status == 401
    assert api.request("POST", PASSWORD, token="not-a-token", headers=headers, body=b"{}").status == 401


def test_login_logout_and_a_viewer_token_still_work(api: LambdaClient, alice: User) -> None:
    headers = {"content-type": JSON}
    login = api.request(
        "POST", LOGIN, headers=headers, body=object_body(username=alice.username, password=alice.password)
    )
    assert login.status == 201 and login.headers["cache-control"] == "no-store"
    token = login.json()["token"]
    viewer = api.request("POST", "/api/v1/auth/viewer-tokens", token=token)
    assert viewer.status == 201 and viewer.json()["token"] != token
    assert api.request("DELETE", LOGIN + "/current", token=token).status == 204
    assert api.request("GET", "/api/v1/scans", token=token).status == 401
    assert api.request("GET", "/api/v1/scans", token=alice.token).status == 200
    assert api.request("DELETE", LOGIN, token=alice.token).status == 204
    assert api.request("GET", "/api/v1/scans", token=alice.token).status == 401
