"""GET/HEAD /api/v1/scans/image/{scan_id}/{image_type}: bytes, caching headers, auth."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pg8000.native
import pytest
from PIL import Image

from scripts.dev.localgw.events import build_event
from shared import db
from shared.auth import signing
from shared.core import config
from shared.http import image_cache as image_cache_module
from shared.http.image_cache import image_cache
from tests import images
from tests.conftest import ROOT, User
from tests.lambda_client import ROUTES, LambdaClient, Result, multipart

IMMUTABLE = "private, max-age=31536000, immutable"


@pytest.fixture
def scan(api: LambdaClient, alice: User) -> dict[str, object]:
    """Alice's uploaded scan: its id and original bytes."""
    data = images.png16()
    body, ctype = multipart({"file": ("scan.png", data, "image/png")})
    result = api.request("POST", "/api/v1/scans/analyze", token=alice.token, body=body, headers={"content-type": ctype})
    assert result.status == 201
    return {"id": result.json()["scanId"], "data": data}


def path(scan_id: object, kind: str) -> str:
    return f"/api/v1/scans/image/{scan_id}/{kind}"


def test_get_original_returns_the_exact_bytes_with_cache_headers(
    api: LambdaClient, alice: User, scan: dict[str, object]
) -> None:
    result = api.request("GET", path(scan["id"], "original"), token=alice.token)

    assert result.status == 200
    assert result.body == scan["data"]
    assert result.raw["isBase64Encoded"] is True
    assert result.headers["content-type"] == "image/png"
    assert result.headers["content-length"] == str(len(result.body))
    assert result.headers["etag"] == f'"{hashlib.sha256(result.body).hexdigest()}"'
    assert result.headers["cache-control"] == IMMUTABLE
    assert result.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("kind", ["annotated", "thumbnail"])
def test_get_rendering_is_a_jpeg_with_its_own_etag(
    api: LambdaClient, alice: User, scan: dict[str, object], pg: pg8000.native.Connection, kind: str
) -> None:
    result = api.request("GET", path(scan["id"], kind), token=alice.token)

    assert result.status == 200
    assert result.headers["content-type"] == "image/jpeg"
    assert result.headers["etag"] == f'"{hashlib.sha256(result.body).hexdigest()}"'
    stored = pg.run(f"SELECT {kind}_image_data FROM scans WHERE id = :id", id=scan["id"])[0][0]
    assert result.body == stored
    picture = Image.open(io.BytesIO(result.body))
    assert picture.format == "JPEG"
    if kind == "thumbnail":
        assert max(picture.size) <= 256
    else:
        assert picture.size == (512, 512)


def test_if_none_match_with_the_etag_is_304_without_body(
    api: LambdaClient, alice: User, scan: dict[str, object]
) -> None:
    etag = api.request("GET", path(scan["id"], "thumbnail"), token=alice.token).headers["etag"]

    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        result = api.request("GET", path(scan["id"], "thumbnail"), token=alice.token, headers={"if-none-match": header})
        assert result.status == 304, header
        assert result.body == b""
        assert result.headers["etag"] == etag
        assert result.headers["cache-control"] == IMMUTABLE


def test_if_none_match_with_another_etag_sends_the_image(
    api: LambdaClient, alice: User, scan: dict[str, object]
) -> None:
    result = api.request("GET", path(scan["id"], "original"), token=alice.token, headers={"if-none-match": '"stale"'})
    assert result.status == 200
    assert result.body == scan["data"]


def test_head_sends_the_headers_without_the_body(api: LambdaClient, alice: User, scan: dict[str, object]) -> None:
    get = api.request("GET", path(scan["id"], "original"), token=alice.token)

    head = api.request("HEAD", path(scan["id"], "original"), token=alice.token)

    assert head.status == 200
    assert head.body == b""
    for name in ("content-type", "content-length", "etag", "cache-control", "x-content-type-options"):
        assert head.headers[name] == get.headers[name], name


def test_unknown_image_type_is_a_4xx_naming_the_allowed_types(
    api: LambdaClient, alice: User, scan: dict[str, object]
) -> None:
    result = api.request("GET", path(scan["id"], "raw"), token=alice.token)
    assert result.status == 422
    message = result.json()["error"]["message"]
    for allowed in ("original", "annotated", "thumbnail"):
        assert allowed in message


def test_unknown_scan_is_404(api: LambdaClient, alice: User, scan: dict[str, object]) -> None:
    result = api.request("GET", path("scan_doesnotexist00000000", "original"), token=alice.token)
    assert result.status == 404
    assert result.error_code == "scan_not_found"


def test_another_owners_scan_is_404_not_403(api: LambdaClient, bob: User, scan: dict[str, object]) -> None:
    for method in ("GET", "HEAD"):
        result = api.request(method, path(scan["id"], "original"), token=bob.token)
        assert result.status == 404, method
        if method == "GET":
            assert result.error_code == "scan_not_found"


@pytest.mark.parametrize(
    ("authorization", "why"),
    [
        (None, "no header"),
        ("Bearer", "no token"),
        ("Basic YWxpY2U6eA==", "wrong scheme"),
        ("Bearer not-a-real-token", "unknown token"),
        ("Bearer " + "x" * 500, "absurdly long token"),
    ],
)
def test_missing_or_invalid_token_is_401_with_www_authenticate(
    api: LambdaClient, scan: dict[str, object], authorization: str | None, why: str
) -> None:
    headers = {"authorization": authorization} if authorization else {}
    result = api.request("GET", path(scan["id"], "original"), headers=headers)
    assert result.status == 401, why
    assert result.headers["www-authenticate"].startswith("Bearer")
    assert result.error_code == "not_authenticated"


def test_expired_token_is_401(
    api: LambdaClient, alice: User, scan: dict[str, object], pg: pg8000.native.Connection
) -> None:
    pg.run("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE user_id = :id", id=alice.id)
    result = api.request("GET", path(scan["id"], "original"), token=alice.token)
    assert result.status == 401
    assert result.error_code == "not_authenticated"


def test_images_handler_does_not_import_pillow_numpy_pydicom_or_fastapi() -> None:
    # Cold start: FastAPI alone costs ~250 ms; the images function is plain Starlette.
    code = (
        "import sys; import functions.images.handler; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('PIL', 'numpy', 'cc3d', 'pydicom', 'imagecodecs', 'fastapi', 'pydantic')); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_unknown_token_says_invalid_token_and_missing_token_does_not(
    api: LambdaClient, scan: dict[str, object]
) -> None:
    # RFC 6750: error="invalid_token" only when a token was sent and rejected.
    unknown = api.request("GET", path(scan["id"], "original"), token="not-a-real-token")
    missing = api.request("GET", path(scan["id"], "original"))
    assert 'error="invalid_token"' in unknown.headers["www-authenticate"]
    assert "error=" not in missing.headers["www-authenticate"]


def test_an_unexpected_error_is_a_500_that_says_nothing(
    api: LambdaClient, alice: User, scan: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(db, "read_image", explode)

    result = api.request("GET", path(scan["id"], "original"), token=alice.token)

    assert result.status == 500
    assert result.error_code == "internal_error"
    assert "secret detail" not in result.body.decode()


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_other_methods_are_a_json_405(api: LambdaClient, alice: User, scan: dict[str, object], method: str) -> None:
    # API Gateway routes only GET and HEAD here; should another method reach the app, it still answers JSON.
    route = next(r for r in ROUTES if r.function_name == "images")
    raw_path = path(scan["id"], "original")
    event = build_event(
        method=method,
        raw_path=raw_path,
        raw_query="",
        headers=[("host", "api.example.test"), ("authorization", f"Bearer {alice.token}")],
        body=b"",
        source_ip="203.0.113.9",
        route=route,
        path_params={"scan_id": str(scan["id"]), "image_type": "original"},
    )

    result = api.invoke("images", event)

    assert result.status == 405
    assert result.error_code == "method_not_allowed"


# ---------------------------------------------------------------- signed URLs


@pytest.fixture
def signed(api: LambdaClient, alice: User, scan: dict[str, object]) -> dict[str, str]:
    """The signed image URLs of Alice's scan, as GET /api/v1/scans/{id} lists them."""
    urls: dict[str, str] = api.request("GET", f"/api/v1/scans/{scan['id']}", token=alice.token).json()["results"]
    return urls


def fetch(
    api: LambdaClient, url: str, method: str = "GET", headers: dict[str, str] | None = None, token: str | None = None
) -> Result:
    parts = urlsplit(url)
    return api.request(method, parts.path, query=parts.query, headers=headers, token=token)


def with_query(url: str, change: Callable[[dict[str, str]], dict[str, str]]) -> str:
    parts = urlsplit(url)
    query = change(dict(parse_qsl(parts.query)))
    return parts._replace(query="&".join(f"{k}={v}" for k, v in query.items())).geturl()


def test_signed_url_needs_no_token_and_is_cached_until_it_expires(
    api: LambdaClient, scan: dict[str, object], signed: dict[str, str]
) -> None:
    before = time.time()
    result = fetch(api, signed["imageUrl"])
    after = time.time()

    assert result.status == 200
    assert result.body == scan["data"]
    assert result.headers["referrer-policy"] == "no-referrer"
    exp = int(dict(parse_qsl(urlsplit(signed["imageUrl"]).query))["exp"])
    s_maxage = int(result.headers["cache-control"].split("s-maxage=")[1].split(",")[0])
    # s-maxage, so the CDN caches it (CloudFront never caches `private`) until the signature ends: the
    # URL is the credential and every holder gets the same bytes. max-age=0: no other cache serves it
    # unasked; viewers get `private` from the CDN's response headers policy and keep their copy until
    # Expires. Token-authorized reads stay private (IMMUTABLE).
    assert result.headers["cache-control"] == f"s-maxage={s_maxage}, max-age=0"
    assert result.headers["expires"] == formatdate(exp, usegmt=True)
    # s-maxage = exp - int(the handler's clock), read between `before` and `after`, however slow the call.
    assert exp - after <= s_maxage <= exp - before + 1
    assert 3600 <= s_maxage <= 7200


def test_signed_urls_cover_every_image_type(api: LambdaClient, scan: dict[str, object], signed: dict[str, str]) -> None:
    for key, kind in (("previewUrl", "preview"), ("annotatedImageUrl", "annotated"), ("thumbnailUrl", "thumbnail")):
        assert urlsplit(signed[key]).path == path(scan["id"], kind)
        assert fetch(api, signed[key]).status == 200, key


@pytest.mark.parametrize(
    ("tamper", "why"),
    [
        (lambda u: with_query(u, lambda q: {**q, "sig": q["sig"][::-1]}), "tampered sig"),
        (lambda u: with_query(u, lambda q: {**q, "exp": str(int(q["exp"]) + 7200)}), "longer life"),
        (lambda u: with_query(u, lambda q: {**q, "kid": "deadbeef"}), "unknown kid"),
        (lambda u: with_query(u, lambda q: {k: v for k, v in q.items() if k != "sig"}), "no sig"),
        (lambda u: u.replace("/original?", "/thumbnail?"), "another type"),
    ],
)
def test_a_changed_signed_url_is_403_invalid_signature(
    api: LambdaClient, signed: dict[str, str], tamper: Callable[[str], str], why: str
) -> None:
    result = fetch(api, tamper(signed["imageUrl"]))
    assert result.status == 403, why
    assert result.error_code == "invalid_signature", why


def test_a_signed_url_for_another_scan_is_403(
    api: LambdaClient, alice: User, scan: dict[str, object], signed: dict[str, str]
) -> None:
    other = images.png8(size=64, regions=())
    body, ctype = multipart({"file": ("other.png", other, "image/png")})
    other_id = api.request(
        "POST", "/api/v1/scans/analyze", token=alice.token, body=body, headers={"content-type": ctype}
    ).json()["scanId"]

    result = fetch(api, signed["imageUrl"].replace(str(scan["id"]), other_id))

    assert result.status == 403
    assert result.error_code == "invalid_signature"


def test_an_expired_signed_url_is_403_url_expired(
    api: LambdaClient, signed: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = int(dict(parse_qsl(urlsplit(signed["imageUrl"]).query))["exp"])
    monkeypatch.setattr(time, "time", lambda: float(exp))

    result = fetch(api, signed["imageUrl"])

    assert result.status == 403
    assert result.error_code == "url_expired"


def test_a_forged_signature_costs_no_query(
    api: LambdaClient, signed: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_database(*args: object, **kwargs: object) -> None:
        raise AssertionError("the database was asked")

    monkeypatch.setattr(db, "call", no_database)

    result = fetch(api, with_query(signed["imageUrl"], lambda q: {**q, "sig": "A" * 43}))

    assert result.status == 403


def test_a_signed_url_of_a_deleted_scan_is_404(
    api: LambdaClient, alice: User, scan: dict[str, object], signed: dict[str, str]
) -> None:
    assert api.request("DELETE", f"/api/v1/scans/{scan['id']}", token=alice.token).status == 204
    result = fetch(api, signed["imageUrl"])
    assert result.status == 404
    assert result.error_code == "scan_not_found"


def test_with_a_token_and_a_bad_signature_the_token_decides(
    api: LambdaClient, alice: User, bob: User, signed: dict[str, str]
) -> None:
    bad = with_query(signed["imageUrl"], lambda q: {**q, "sig": "A" * 43})
    assert fetch(api, bad, token=alice.token).status == 200
    assert fetch(api, bad, token=bob.token).status == 404  # bob's token: not his scan
    # A valid signature suffices even next to an unknown token.
    assert fetch(api, signed["imageUrl"], token="not-a-real-token").status == 200


def test_bearer_responses_keep_the_year_long_cache_and_send_no_referrer_policy(
    api: LambdaClient, alice: User, scan: dict[str, object]
) -> None:
    result = api.request("GET", path(scan["id"], "original"), token=alice.token)
    assert result.headers["cache-control"] == IMMUTABLE
    assert "referrer-policy" not in result.headers


def test_signed_head_and_revalidation(api: LambdaClient, signed: dict[str, str]) -> None:
    head = fetch(api, signed["thumbnailUrl"], method="HEAD")
    assert head.status == 200 and head.body == b"" and head.headers["referrer-policy"] == "no-referrer"
    again = fetch(api, signed["thumbnailUrl"], headers={"if-none-match": head.headers["etag"]})
    assert again.status == 304


def test_rotation_keeps_old_urls_valid_while_the_old_key_is_listed(
    api: LambdaClient, signed: dict[str, str], settings_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    old_document = signing.ensure_key_file(config.get_settings().image_url_keys_file)
    (old,) = json.loads(old_document)["keys"]
    new = {"kid": "newkey01", "secret": "n" * 48}
    keys_file = tmp_path / "rotated.json"
    settings_env.setenv("IMAGE_URL_KEYS_FILE", str(keys_file))
    config.get_settings.cache_clear()
    signing.clear_cache()
    try:
        keys_file.write_text(json.dumps({"keys": [new, old]}))
        assert fetch(api, signed["imageUrl"]).status == 200
        # New URLs are signed with the new key.
        assert "kid=newkey01" in signing.signed_query(path("scan_x", "original"))

        keys_file.write_text(json.dumps({"keys": [new]}))
        signing.clear_cache()
        result = fetch(api, signed["imageUrl"])
        assert result.status == 403
        assert result.error_code == "invalid_signature"
    finally:
        signing.clear_cache()


# ---------------------------------------------------------------- Range


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [("bytes=0-99", 0, 99), ("bytes=100-", 100, None), ("bytes=-50", None, None), ("bytes=10-10", 10, 10)],
)
def test_range_is_206_with_exactly_those_bytes(
    api: LambdaClient, alice: User, scan: dict[str, object], header: str, first: int | None, last: int | None
) -> None:
    data = scan["data"]
    assert isinstance(data, bytes)
    size = len(data)
    start = size - 50 if first is None else first
    end = size - 1 if last is None else last

    result = api.request("GET", path(scan["id"], "original"), token=alice.token, headers={"range": header})

    assert result.status == 206, header
    assert result.body == data[start : end + 1]
    assert result.headers["content-range"] == f"bytes {start}-{end}/{size}"
    assert result.headers["content-length"] == str(end - start + 1)
    assert result.headers["accept-ranges"] == "bytes"
    assert result.headers["content-type"] == "image/png"


def test_range_past_the_end_is_clipped_and_a_long_suffix_is_the_whole(
    api: LambdaClient, alice: User, scan: dict[str, object]
) -> None:
    data = scan["data"]
    assert isinstance(data, bytes)
    size = len(data)
    clipped = api.request("GET", path(scan["id"], "original"), token=alice.token, headers={"range": "bytes=5-99999999"})
    assert clipped.status == 206 and clipped.body == data[5:]
    assert clipped.headers["content-range"] == f"bytes 5-{size - 1}/{size}"
    whole = api.request("GET", path(scan["id"], "original"), token=alice.token, headers={"range": "bytes=-99999999"})
    assert whole.status == 206 and whole.body == data


@pytest.mark.parametrize("header", ["bytes=99999999-", "bytes=-0"])
def test_unsatisfiable_range_is_416_with_the_size(
    api: LambdaClient, alice: User, scan: dict[str, object], header: str
) -> None:
    data = scan["data"]
    assert isinstance(data, bytes)
    result = api.request("GET", path(scan["id"], "original"), token=alice.token, headers={"range": header})
    assert result.status == 416
    assert result.headers["content-range"] == f"bytes */{len(data)}"
    assert result.error_code == "range_not_satisfiable"


@pytest.mark.parametrize("header", ["bytes=0-1,5-9", "items=0-9", "bytes=9-1", "bytes=x-"])
def test_several_or_malformed_ranges_get_the_whole_image(
    api: LambdaClient, alice: User, scan: dict[str, object], header: str
) -> None:
    result = api.request("GET", path(scan["id"], "original"), token=alice.token, headers={"range": header})
    assert result.status == 200 and result.body == scan["data"]


def test_if_range_with_the_etag_honours_range_and_a_stale_one_sends_everything(
    api: LambdaClient, alice: User, scan: dict[str, object]
) -> None:
    etag = api.request("HEAD", path(scan["id"], "original"), token=alice.token).headers["etag"]
    fresh = api.request(
        "GET", path(scan["id"], "original"), token=alice.token, headers={"range": "bytes=0-9", "if-range": etag}
    )
    assert fresh.status == 206 and len(fresh.body) == 10
    for stale in ('"other"', "Wed, 21 Oct 2015 07:28:00 GMT"):
        result = api.request(
            "GET", path(scan["id"], "original"), token=alice.token, headers={"range": "bytes=0-9", "if-range": stale}
        )
        assert result.status == 200 and result.body == scan["data"], stale


def test_head_with_range_is_the_206_headers_without_body(
    api: LambdaClient, alice: User, scan: dict[str, object]
) -> None:
    data = scan["data"]
    assert isinstance(data, bytes)
    result = api.request("HEAD", path(scan["id"], "original"), token=alice.token, headers={"range": "bytes=0-9"})
    assert result.status == 206 and result.body == b""
    assert result.headers["content-range"] == f"bytes 0-9/{len(data)}"
    assert result.headers["content-length"] == "10"


def test_a_signed_url_serves_ranges(api: LambdaClient, scan: dict[str, object], signed: dict[str, str]) -> None:
    data = scan["data"]
    assert isinstance(data, bytes)
    result = fetch(api, signed["imageUrl"], headers={"range": "bytes=-16"})
    assert result.status == 206 and result.body == data[-16:]


def test_a_range_read_asks_postgresql_for_those_bytes_only(
    api: LambdaClient, alice: User, scan: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real = db.read_image

    def spy(*args: object, **kwargs: object) -> db.ImagePart | None:
        part = real(*args, **kwargs)  # type: ignore[arg-type]
        if part is not None and part.base64 is not None:
            seen.append(len(part.base64))
        return part

    monkeypatch.setattr(db, "read_image", spy)
    api.request("GET", path(scan["id"], "original"), token=alice.token, headers={"range": "bytes=0-299"})
    assert seen == [400]  # 300 bytes as base64, not the whole image


# ---------------------------------------------------------------- the warm container's image cache


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str | None, bool]]:
    """Every token-authorised image read: the hash the handler said it holds, and whether bytes came back."""
    seen: list[tuple[str | None, bool]] = []
    real = db.read_image

    def spy(*args: object, **kwargs: object) -> db.ImagePart | None:
        part = real(*args, **kwargs)  # type: ignore[arg-type]
        read = kwargs.get("read", db.WHOLE_IMAGE)
        assert isinstance(read, db.ImageRead)
        seen.append((read.known_sha256, part is not None and part.base64 is not None))
        return part

    monkeypatch.setattr(db, "read_image", spy)
    return seen


def test_a_repeated_read_asks_the_database_but_gets_no_bytes_back(
    api: LambdaClient, alice: User, scan: dict[str, object], reads: list[tuple[str | None, bool]]
) -> None:
    first = api.request("GET", path(scan["id"], "original"), token=alice.token)
    second = api.request("GET", path(scan["id"], "original"), token=alice.token)
    digest = hashlib.sha256(scan["data"]).hexdigest()  # type: ignore[arg-type]
    assert reads == [(None, True), (digest, False)]
    assert first.status == second.status == 200
    assert second.body == first.body == scan["data"]
    assert second.headers == first.headers


def test_a_cached_image_of_a_deleted_scan_is_404_and_forgotten(
    api: LambdaClient, alice: User, scan: dict[str, object]
) -> None:
    assert api.request("GET", path(scan["id"], "original"), token=alice.token).status == 200
    assert image_cache().get((str(scan["id"]), "original")) is not None
    assert api.request("DELETE", f"/api/v1/scans/{scan['id']}", token=alice.token).status == 204
    result = api.request("GET", path(scan["id"], "original"), token=alice.token)
    assert result.status == 404 and result.error_code == "scan_not_found"
    assert image_cache().get((str(scan["id"]), "original")) is None


def test_a_cached_image_is_still_404_to_another_owner_and_401_to_an_ended_session(
    api: LambdaClient, alice: User, bob: User, scan: dict[str, object], pg: pg8000.native.Connection
) -> None:
    assert api.request("GET", path(scan["id"], "original"), token=alice.token).status == 200
    assert api.request("GET", path(scan["id"], "original"), token=bob.token).status == 404
    pg.run("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE user_id = :id", id=alice.id)
    assert api.request("GET", path(scan["id"], "original"), token=alice.token).status == 401


def test_ranges_and_heads_bypass_the_cache(
    api: LambdaClient, alice: User, scan: dict[str, object], reads: list[tuple[str | None, bool]]
) -> None:
    api.request("GET", path(scan["id"], "original"), token=alice.token)
    ranged = api.request("GET", path(scan["id"], "original"), token=alice.token, headers={"range": "bytes=0-9"})
    assert ranged.status == 206 and ranged.body == scan["data"][:10]  # type: ignore[index]
    assert reads[1] == (None, True)


def test_image_cache_mb_0_turns_the_cache_off(
    api: LambdaClient,
    alice: User,
    scan: dict[str, object],
    settings_env: pytest.MonkeyPatch,
    reads: list[tuple[str | None, bool]],
) -> None:
    settings_env.setenv("IMAGE_CACHE_MB", "0")
    image_cache_module.reset()
    try:
        for _ in range(2):
            assert api.request("GET", path(scan["id"], "original"), token=alice.token).body == scan["data"]
        assert reads == [(None, True), (None, True)]
    finally:
        image_cache_module.reset()


def test_the_cache_keeps_the_most_recently_used_within_its_budget() -> None:
    cache = image_cache_module.ImageCache(max_bytes=800)
    entry = image_cache_module.CachedImage
    for n in range(9):
        cache.put((f"scan{n}", "thumbnail"), entry(f"h{n}", "x" * 100))
    assert len(cache) == 8 and cache.size_bytes == 800
    assert cache.get(("scan0", "thumbnail")) is None  # the oldest went
    assert cache.get(("scan1", "thumbnail")) is not None  # now the most recent
    cache.put(("scan9", "thumbnail"), entry("h9", "x" * 100))
    assert cache.get(("scan1", "thumbnail")) is not None and cache.get(("scan2", "thumbnail")) is None
    cache.put(("big", "original"), entry("hb", "x" * 101))  # over an eighth of the budget: not kept
    assert cache.get(("big", "original")) is None
    cache.discard(("scan1", "thumbnail"))
    assert cache.get(("scan1", "thumbnail")) is None and cache.size_bytes == 700


def test_every_json_error_of_the_images_function_says_nosniff_and_no_store(
    api: LambdaClient, alice: User, scan: dict[str, object]
) -> None:
    """The images function is plain Starlette (no FastAPI middleware): its JSON errors carry the
    headers anyway, as the README's security headers promise."""
    answers = {
        401: api.request("GET", path(scan["id"], "original")),
        403: api.request("GET", path(scan["id"], "original"), query="exp=4102444800&kid=k1&sig=AAAA"),
        404: api.request("GET", path("scan_doesnotexist00000000", "original"), token=alice.token),
        422: api.request("GET", path(scan["id"], "raw"), token=alice.token),
    }
    for status, result in answers.items():
        assert result.status == status, (status, result.body)
        assert result.headers["content-type"].startswith("application/json"), status
        assert result.headers["x-content-type-options"] == "nosniff", status
        assert result.headers["cache-control"] == "no-store", status
