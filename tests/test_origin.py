"""The origin lock (shared/auth/origin.py): deployed, only requests carrying CloudFront's X-Origin-Verify are served.

Through the real Lambda entry points (FastAPI functions and the images function), with the secret in
moto's Secrets Manager as the stack generates it ({"value": "..."}).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from shared import db
from shared.auth import origin
from shared.core import config, secrets
from tests.conftest import User
from tests.lambda_client import LambdaClient, Result

VALUE = "OriginVerify0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP"
IMAGE = "/api/v1/scans/image/scan_nothere/thumbnail"
# One route of each HTTP function, each of which would reach the database (or the body parser) if let in.
REQUESTS = [
    ("upload", "POST", "/api/v1/scans/analyze"),
    ("images", "GET", IMAGE),
    ("scans", "GET", "/api/v1/scans"),
    ("auth", "DELETE", "/api/v1/auth/sessions/current"),
]
UNREACHABLE_DATABASE = "postgresql://postgres@127.0.0.1:9/nothing?sslmode=disable"


def _reset() -> None:
    config.get_settings.cache_clear()
    secrets.clear_cache()
    origin.clear_cache()
    db.close_connection()


@pytest.fixture
def origin_secret(settings_env: pytest.MonkeyPatch, fake_aws_credentials: None) -> Iterator[dict[str, Any]]:
    """The stack's origin secret (moto) and ORIGIN_VERIFY_SECRET_ARN pointing at it, as deployed."""
    with mock_aws():
        client = boto3.client("secretsmanager")
        arn = client.create_secret(Name="ctscan-origin-verify", SecretString=json.dumps({"value": VALUE}))["ARN"]
        settings_env.setenv("ORIGIN_VERIFY_SECRET_ARN", arn)
        _reset()
        yield {"arn": arn, "client": client, "env": settings_env}
    _reset()


def send(method: str, path: str, header: str | None, *, token: str | None = None, query: str = "") -> Result:
    headers = {"x-origin-verify": header} if header is not None else {}
    return LambdaClient().request(method, path, headers=headers, token=token, query=query)


def assert_forbidden(result: Result) -> None:
    assert result.status == 403, result.body
    assert result.json() == {"error": {"code": "forbidden", "message": "Requests must come through the CDN."}}
    assert result.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(("function", "method", "path"), REQUESTS)
def test_a_request_without_the_header_is_refused_before_any_database_access(
    origin_secret: dict[str, Any], function: str, method: str, path: str
) -> None:
    # A database that cannot be reached: a request let in with a token would be a 503, not a 403.
    origin_secret["env"].setenv("DATABASE_URL", UNREACHABLE_DATABASE)
    config.get_settings.cache_clear()
    assert_forbidden(send(method, path, None, token="some-token"))


@pytest.mark.parametrize(("function", "method", "path"), REQUESTS)
@pytest.mark.parametrize("wrong", ["", VALUE[:-1], VALUE[:-1] + "Q", VALUE + "x", VALUE.lower(), "é" * 64])
def test_a_wrong_header_is_refused(
    origin_secret: dict[str, Any], function: str, method: str, path: str, wrong: str
) -> None:
    origin_secret["env"].setenv("DATABASE_URL", UNREACHABLE_DATABASE)
    config.get_settings.cache_clear()
    assert_forbidden(send(method, path, wrong, token="some-token"))


def test_the_right_header_lets_requests_through(origin_secret: dict[str, Any], api: LambdaClient, alice: User) -> None:
    listed = send("GET", "/api/v1/scans", VALUE, token=alice.token)
    assert listed.status == 200, listed.body
    assert listed.json()["items"] == []
    # Let in, the functions decide as always: no token is their 401, a missing scan their 404.
    logout = send("DELETE", "/api/v1/auth/sessions/current", VALUE)
    assert (logout.status, logout.error_code) == (401, "not_authenticated")
    missing = send("GET", IMAGE, VALUE, token=alice.token)
    assert (missing.status, missing.error_code) == (404, "scan_not_found")
    forged = send("GET", IMAGE, VALUE, query="exp=9999999999&kid=deadbeef&sig=AAAA")
    assert (forged.status, forged.error_code) == (403, "invalid_signature")


def test_behind_the_cdn_an_unsigned_image_read_is_told_to_use_a_signed_url(origin_secret: dict[str, Any]) -> None:
    # CloudFront's image behaviour forwards no Authorization header: such a request carries no credential.
    origin_secret["env"].setenv("DATABASE_URL", UNREACHABLE_DATABASE)
    config.get_settings.cache_clear()
    result = send("GET", IMAGE, VALUE)
    assert result.status == 401
    assert result.error_code == "not_authenticated"
    assert "signed URL" in result.json()["error"]["message"]
    assert result.headers["www-authenticate"].startswith("Bearer")
    assert result.headers["cache-control"] == "no-store"


def test_without_the_setting_there_is_no_check(settings_env: pytest.MonkeyPatch) -> None:
    # The local gateway and the tests: no ORIGIN_VERIFY_SECRET_ARN, no header needed (and none looked at).
    settings_env.delenv("ORIGIN_VERIFY_SECRET_ARN", raising=False)
    settings_env.setenv("DATABASE_URL", UNREACHABLE_DATABASE)
    _reset()
    for header in (None, "anything"):
        logout = send("DELETE", "/api/v1/auth/sessions/current", header)
        assert (logout.status, logout.error_code) == (401, "not_authenticated")
        image = send("GET", IMAGE, header)
        assert (image.status, image.error_code) == (401, "not_authenticated")
        assert "signed URL" not in image.json()["error"]["message"]


@pytest.mark.parametrize(
    "stored", ["missing", json.dumps({"value": "short"}), json.dumps({"other": VALUE}), "{not json"]
)
def test_an_unreadable_secret_never_opens_the_lock(origin_secret: dict[str, Any], stored: str) -> None:
    if stored == "missing":
        origin_secret["env"].setenv("ORIGIN_VERIFY_SECRET_ARN", origin_secret["arn"] + "-gone")
    else:
        origin_secret["client"].put_secret_value(SecretId=origin_secret["arn"], SecretString=stored)
    _reset()
    for function, method, path in REQUESTS:
        result = send(method, path, VALUE)
        assert result.status == 503, (function, result.body)
        assert result.error_code == "origin_check_unavailable"
        assert result.headers["retry-after"] == "2"


def test_a_failed_read_is_not_cached(origin_secret: dict[str, Any]) -> None:
    origin_secret["client"].put_secret_value(SecretId=origin_secret["arn"], SecretString="{not json")
    assert send("DELETE", "/api/v1/auth/sessions/current", VALUE).status == 503
    origin_secret["client"].put_secret_value(SecretId=origin_secret["arn"], SecretString=json.dumps({"value": VALUE}))
    assert send("DELETE", "/api/v1/auth/sessions/current", VALUE).status == 401  # let in: no token


def test_the_value_is_read_once_per_container(origin_secret: dict[str, Any]) -> None:
    assert send("DELETE", "/api/v1/auth/sessions/current", VALUE).status == 401
    origin_secret["client"].put_secret_value(
        SecretId=origin_secret["arn"], SecretString=json.dumps({"value": "n" * 64})
    )
    assert send("DELETE", "/api/v1/auth/sessions/current", VALUE).status == 401  # still the cached value
    assert_forbidden(send("DELETE", "/api/v1/auth/sessions/current", "n" * 64))


def test_the_value_never_reaches_logs_or_responses(
    origin_secret: dict[str, Any], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    results = []
    for _function, method, path in REQUESTS:
        results.append(send(method, path, None))
        results.append(send(method, path, VALUE[:-1] + "Q"))
        results.append(send(method, path, VALUE))
    origin_secret["client"].put_secret_value(SecretId=origin_secret["arn"], SecretString="{not json")
    _reset()
    results.append(send("GET", "/api/v1/scans", VALUE))
    assert results[-1].status == 503

    captured = capsys.readouterr()
    logged = captured.out + captured.err + caplog.text
    assert "request" in captured.out  # the functions' JSON log lines were captured here
    for text in (VALUE, VALUE[:-1]):
        assert text not in logged
        for result in results:
            assert text.encode() not in result.body
            assert text not in json.dumps(result.headers)
