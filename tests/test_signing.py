"""Signed image URLs: the pure signing functions, key files and the Secrets Manager key secret (moto)."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import boto3
import pytest
from moto import mock_aws

from shared.auth import signing
from shared.core import config, secrets
from shared.core.errors import InvalidSignature, SigningUnavailable, UrlExpired

KEY = signing.SigningKey("k-new", b"n" * 32)
OLD = signing.SigningKey("k-old", b"o" * 32)
PATH = "/api/v1/scans/image/scan_abc/original"
NOW = 1_700_000_123.4


def query(signed: str) -> dict[str, str]:
    return dict(parse_qsl(signed))


def test_canonical_string_is_versioned_and_line_separated() -> None:
    assert signing.canonical_string(PATH, "1700003600", "k1") == f"v1\n{PATH}\n1700003600\nk1".encode()


@pytest.mark.parametrize("ttl", [60, 3600, 86400])
def test_expiry_is_rounded_up_to_a_bucket_and_valid_between_one_and_two_ttls(ttl: int) -> None:
    for now in (0.0, NOW, NOW + 0.5, float(ttl * 1000), ttl * 1000 - 0.1):
        exp = signing.expiry(now, ttl)
        assert exp % ttl == 0
        assert ttl <= exp - now <= 2 * ttl, (now, exp)


def test_signed_query_is_stable_within_a_window_and_changes_after_it() -> None:
    first = signing.sign_path(PATH, keys=(KEY,), now=NOW, ttl_seconds=3600)
    assert signing.sign_path(PATH, keys=(KEY,), now=NOW + 10, ttl_seconds=3600) == first
    later = signing.expiry(NOW, 3600)  # the next bucket starts at one TTL before exp
    assert signing.sign_path(PATH, keys=(KEY,), now=later, ttl_seconds=3600) != first


def test_signature_is_base64url_without_padding_and_uses_the_first_key() -> None:
    params = query(signing.sign_path(PATH, keys=(KEY, OLD), now=NOW, ttl_seconds=3600))
    assert set(params) == {"exp", "kid", "sig"}
    assert params["kid"] == "k-new"
    assert len(params["sig"]) == 43 and "=" not in params["sig"] and "+" not in params["sig"]


def test_verify_accepts_its_own_signature_and_returns_exp() -> None:
    params = query(signing.sign_path(PATH, keys=(KEY,), now=NOW, ttl_seconds=3600))
    assert signing.verify(PATH, params, keys=(KEY,), now=NOW) == int(params["exp"])


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda p: {**p, "sig": p["sig"][:-1] + ("A" if p["sig"][-1] != "A" else "B")}, "tampered sig"),
        (lambda p: {**p, "exp": str(int(p["exp"]) + 3600)}, "extended expiry"),
        (lambda p: {**p, "kid": "unknown"}, "unknown kid"),
        (lambda p: {k: v for k, v in p.items() if k != "sig"}, "no sig"),
        (lambda p: {**p, "exp": "\uff11\uff17\uff10\uff10"}, "non-ASCII digits"),
        (lambda p: {**p, "sig": "é" * 43}, "non-ASCII sig"),
    ],
)
def test_verify_rejects_changed_urls(change: Any, why: str) -> None:
    params = query(signing.sign_path(PATH, keys=(KEY,), now=NOW, ttl_seconds=3600))
    with pytest.raises(InvalidSignature):
        signing.verify(PATH, change(params), keys=(KEY,), now=NOW)


def test_verify_rejects_another_path() -> None:
    params = query(signing.sign_path(PATH, keys=(KEY,), now=NOW, ttl_seconds=3600))
    for other in (PATH.replace("original", "thumbnail"), PATH.replace("scan_abc", "scan_abd")):
        with pytest.raises(InvalidSignature):
            signing.verify(other, params, keys=(KEY,), now=NOW)


def test_verify_says_expired_only_for_a_genuine_url() -> None:
    params = query(signing.sign_path(PATH, keys=(KEY,), now=NOW, ttl_seconds=3600))
    with pytest.raises(UrlExpired):
        signing.verify(PATH, params, keys=(KEY,), now=int(params["exp"]))
    with pytest.raises(InvalidSignature):
        signing.verify(PATH, {**params, "sig": "x" * 43}, keys=(KEY,), now=int(params["exp"]))


def test_rotation_old_key_verifies_while_listed() -> None:
    params = query(signing.sign_path(PATH, keys=(OLD,), now=NOW, ttl_seconds=3600))
    assert signing.verify(PATH, params, keys=(KEY, OLD), now=NOW)
    with pytest.raises(InvalidSignature):
        signing.verify(PATH, params, keys=(KEY,), now=NOW)


def test_parse_keys_accepts_a_list_or_the_generated_single_key_and_derives_kids() -> None:
    listed = signing.parse_keys(json.dumps({"keys": [{"kid": "a1", "secret": "s" * 40}, {"secret": "t" * 40}]}))
    assert [k.kid for k in listed] == ["a1", signing.key_id(b"t" * 40)]
    (single,) = signing.parse_keys(json.dumps({"secret": "g" * 64}))
    assert single.secret == b"g" * 64 and len(single.kid) == 8
    assert "g" * 64 not in repr(single)
    for bad in ("", "[]", '{"keys": []}', '{"secret": "short"}', '{"keys": [{"kid": "x"}]}'):
        with pytest.raises(ValueError):
            signing.parse_keys(bad)


def test_key_file_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "keys.json"
    first = signing.ensure_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert signing.ensure_key_file(path) == first
    (key,) = signing.parse_keys(first)
    assert len(key.secret) >= 32 and key.kid == signing.key_id(key.secret)
    assert [p.name for p in path.parent.iterdir()] == ["keys.json"]


def test_ttl_setting_is_validated() -> None:
    assert config.Settings.from_env({}).image_url_ttl_seconds == 3600
    assert config.Settings.from_env({"IMAGE_URL_TTL_SECONDS": "600"}).image_url_ttl_seconds == 600
    for bad in ("0", "59", "soon", "604801"):
        with pytest.raises(config.ConfigurationError, match="IMAGE_URL_TTL_SECONDS"):
            config.Settings.from_env({"IMAGE_URL_TTL_SECONDS": bad})
    with pytest.raises(config.ConfigurationError, match="IMAGE_URL_SECRET_ARN"):
        config.Settings.from_env({"IMAGE_URL_SECRET_ARN": "not-an-arn"})


# ---------------------------------------------------------------- the deployed key secret (moto)


@pytest.fixture
def key_secret(settings_env: pytest.MonkeyPatch, fake_aws_credentials: None) -> Iterator[dict[str, Any]]:
    """The stack's signing key secret as CloudFormation generates it, and the env the functions get."""
    with mock_aws():
        secrets.clear_cache()
        signing.clear_cache()
        client = boto3.client("secretsmanager")
        arn = client.create_secret(Name="ctscan-image-url-keys", SecretString=json.dumps({"secret": "g" * 64}))["ARN"]
        settings_env.setenv("IMAGE_URL_SECRET_ARN", arn)
        config.get_settings.cache_clear()
        yield {"arn": arn, "client": client}
    secrets.clear_cache()
    signing.clear_cache()


def test_keys_come_from_the_secret_and_are_cached(key_secret: dict[str, Any]) -> None:
    (key,) = signing.current_keys()
    assert key.secret == b"g" * 64
    key_secret["client"].put_secret_value(SecretId=key_secret["arn"], SecretString=json.dumps({"secret": "h" * 64}))
    assert signing.current_keys() == (key,)  # cached per container


def test_an_unknown_kid_reloads_the_rotated_secret(key_secret: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    old = signing.current_keys()
    new = signing.SigningKey(signing.key_id(b"h" * 64), b"h" * 64)
    rotated = {"keys": [{"secret": "h" * 64}, {"secret": "g" * 64}]}
    key_secret["client"].put_secret_value(SecretId=key_secret["arn"], SecretString=json.dumps(rotated))
    params = query(signing.sign_path(PATH, keys=(new,), now=NOW, ttl_seconds=3600))
    monkeypatch.setattr(signing, "RELOAD_AFTER_SECONDS", 0.0)

    assert signing.verify_query(PATH, params, now=NOW) == int(params["exp"])
    assert signing.current_keys() == (new, *old)


def test_a_missing_key_secret_is_a_503_error_that_names_no_value(
    key_secret: dict[str, Any], settings_env: pytest.MonkeyPatch
) -> None:
    settings_env.setenv("IMAGE_URL_SECRET_ARN", key_secret["arn"] + "-gone")
    config.get_settings.cache_clear()
    with pytest.raises(SigningUnavailable):
        signing.current_keys()
