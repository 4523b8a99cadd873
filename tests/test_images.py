"""GET/HEAD /api/v1/scans/image/{scan_id}/{image_type}: bytes, caching headers, auth."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys

import pg8000.native
import pytest
from PIL import Image

from scripts.localgw import build_event
from shared import db
from tests import images
from tests.conftest import ROOT, User
from tests.lambda_client import ROUTES, LambdaClient, multipart

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

    monkeypatch.setattr(db, "get_scan_image", explode)

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
