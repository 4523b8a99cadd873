"""POST /api/v1/scans/analyze through the real upload handler."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import threading
from collections.abc import Callable
from urllib.parse import parse_qsl

import pg8000.native
import pytest

from shared import db
from tests import images
from tests.conftest import User
from tests.images import Region
from tests.lambda_client import LambdaClient, Result, multipart

ANALYZE = "/api/v1/scans/analyze"
UPLOAD_HANDLER = "functions.upload.handler"


def upload(
    api: LambdaClient,
    user: User,
    data: bytes,
    *,
    filename: str = "scan.png",
    field: str = "file",
    ctype: str = "image/png",
) -> Result:
    body, content_type = multipart({field: (filename, data, ctype)})
    return api.request("POST", ANALYZE, token=user.token, body=body, headers={"content-type": content_type})


def scan_count(pg: pg8000.native.Connection) -> int:
    return int(pg.run("SELECT count(*) FROM scans")[0][0])


@pytest.mark.parametrize(
    ("make_image", "content_type"),
    [
        (images.png16, "image/png"),
        (images.png8, "image/png"),
        (lambda: images.png8(mode="RGB"), "image/png"),
        (images.jpeg, "image/jpeg"),
    ],
    ids=["png16", "png8", "png-rgb", "jpeg"],
)
def test_upload_stores_analyzes_and_answers(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection, make_image: Callable[[], bytes], content_type: str
) -> None:
    data = make_image()
    result = upload(api, alice, data)

    assert result.status == 201
    body = result.json()
    assert body["duplicate"] is False
    assert body["scanId"].startswith("scan_") and len(body["scanId"]) >= 5 + 22
    assert body["fileHash"] == hashlib.sha256(data).hexdigest()
    assert body["contentType"] == content_type
    assert body["createdAt"].endswith("Z")
    base = f"https://api.example.test/api/v1/scans/image/{body['scanId']}"
    for key, kind in (
        ("imageUrl", "original"),
        ("previewUrl", "preview"),
        ("annotatedImageUrl", "annotated"),
        ("thumbnailUrl", "thumbnail"),
    ):
        # Signed (shared/auth/signing.py): the path, then exp, kid and sig.
        url, _, query = body["results"][key].partition("?")
        assert url == f"{base}/{kind}"
        assert [name for name, _ in parse_qsl(query)] == ["exp", "kid", "sig"]

    tolerance = 2 if content_type == "image/jpeg" else 0
    findings = body["results"]["findings"]
    assert len(findings) == len(images.DEFAULT_REGIONS)
    # A PNG or JPEG has no density: its regions are the bright ones, on the image's own scale
    assert body["results"]["regions"] == {
        "kind": "bright",
        "label": "Bright regions",
        "threshold": None,
        "reason": None,
    }
    assert [finding["label"] for finding in findings] == [f"bright region {n}" for n in range(1, len(findings) + 1)]
    for finding, region in zip(findings, images.DEFAULT_REGIONS, strict=True):
        box = finding["bbox"]
        assert abs(box["x"] - region.x) <= tolerance and abs(box["y"] - region.y) <= tolerance
        assert abs(box["width"] - region.width) <= 2 * tolerance
        assert abs(box["height"] - region.height) <= 2 * tolerance
        if not tolerance:
            assert finding["areaPx"] == region.area
        # 8-bit images are shown as they are (0.9 of full scale); a 16-bit image is windowed to its own
        # range (robust percentiles), where the dense regions are the brightest part.
        assert finding["meanIntensity"] == pytest.approx(0.9 if make_image is not images.png16 else 1.0, abs=0.03)

    assert body["dicom"] is None

    # The original is stored byte for byte, with the three renderings, in one row.
    row = pg.run(
        "SELECT original_image_data, annotated_image_data, thumbnail_image_data, preview_image_data, "
        "file_hash, owner_id, filename, preview_hash FROM scans WHERE id = :id",
        id=body["scanId"],
    )[0]
    assert row[0] == data
    assert all(image[:3] == b"\xff\xd8\xff" for image in row[1:4])
    assert row[4] == body["fileHash"] and row[5] == alice.id and row[6] == "scan.png"
    assert row[7] == hashlib.sha256(row[3]).hexdigest()


def test_upload_uses_api_base_url_when_set(api: LambdaClient, alice: User, settings_env: pytest.MonkeyPatch) -> None:
    settings_env.setenv("API_BASE_URL", "https://scans.clinic.example/")
    body = upload(api, alice, images.png8()).json()
    assert body["results"]["imageUrl"].startswith("https://scans.clinic.example/api/v1/scans/image/scan_")


def test_upload_same_file_twice_is_a_duplicate_and_writes_nothing(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    data = images.png16()
    first = upload(api, alice, data).json()

    again = upload(api, alice, data, filename="renamed.png")

    assert again.status == 200
    body = again.json()
    assert body["duplicate"] is True
    assert body["scanId"] == first["scanId"]
    assert body["results"]["findings"] == first["results"]["findings"]
    assert scan_count(pg) == 1


def test_upload_dedup_is_per_owner(api: LambdaClient, alice: User, bob: User, pg: pg8000.native.Connection) -> None:
    data = images.png16()
    alices = upload(api, alice, data).json()

    bobs = upload(api, bob, data)

    assert bobs.status == 201
    assert bobs.json()["duplicate"] is False
    assert bobs.json()["scanId"] != alices["scanId"]
    assert scan_count(pg) == 2


def test_upload_twenty_parallel_identical_uploads_leave_one_scan(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    # Given 20 "containers" (threads, each with its own event loop and connection)
    data = images.png16(seed=3)
    body, content_type = multipart({"file": ("scan.png", data, "image/png")})
    barrier = threading.Barrier(20)
    results: list[Result] = []
    errors: list[BaseException] = []

    def container() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            barrier.wait()
            results.append(
                api.request("POST", ANALYZE, token=alice.token, body=body, headers={"content-type": content_type})
            )
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            db.close_connection()
            loop.close()

    # When they all upload the same file at once
    threads = [threading.Thread(target=container) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    # Then exactly one scan exists and everyone got it
    assert not errors, errors
    assert sorted(r.status for r in results) == [200] * 19 + [201]
    assert len({r.json()["scanId"] for r in results}) == 1
    assert sum(r.json()["duplicate"] is False for r in results) == 1
    assert scan_count(pg) == 1


def bad_uploads() -> list[tuple[str, Callable[[], tuple[bytes, dict[str, str]]], int, str]]:
    def file(data: bytes, *, field: str = "file") -> Callable[[], tuple[bytes, dict[str, str]]]:
        def build() -> tuple[bytes, dict[str, str]]:
            body, ctype = multipart({field: ("scan.png", data, "image/png")})
            return body, {"content-type": ctype}

        return build

    png = images.png8(size=64, regions=(Region(10, 10, 8, 8),))
    return [
        ("empty file", file(b""), 422, "invalid_image"),
        ("not an image", file(b"%PDF-1.4 definitely not a scan"), 422, "invalid_image"),
        ("truncated png", file(images.png16()[:20000]), 422, "invalid_image"),
        ("png one byte short", file(png[:-1]), 422, "invalid_image"),
        ("png without IEND", file(png[:-12]), 422, "invalid_image"),
        ("jpeg without EOI", file(images.jpeg(size=64, regions=())[:-2]), 422, "invalid_image"),
        ("gif", file(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"), 422, "invalid_image"),
        ("misnamed field", file(png, field="image"), 400, "invalid_upload"),
        (
            "no file field",
            lambda: (multipart({"note": "hello"})[0], {"content-type": multipart({})[1]}),
            400,
            "invalid_upload",
        ),
        (
            "malformed multipart",
            lambda: (b"--nope\r\ngarbage", {"content-type": "multipart/form-data; boundary=x"}),
            400,
            "invalid_upload",
        ),
        (
            "multipart without boundary",
            lambda: (b"abc", {"content-type": "multipart/form-data"}),
            400,
            "invalid_upload",
        ),
        ("raw image body", lambda: (png, {"content-type": "image/png"}), 415, "unsupported_media_type"),
        ("json body", lambda: (b'{"file": 1}', {"content-type": "application/json"}), 415, "unsupported_media_type"),
    ]


@pytest.mark.parametrize(("case", "build", "status", "code"), bad_uploads(), ids=[c[0] for c in bad_uploads()])
def test_upload_bad_input_is_a_clear_4xx_and_writes_nothing(
    api: LambdaClient,
    alice: User,
    pg: pg8000.native.Connection,
    case: str,
    build: Callable[[], tuple[bytes, dict[str, str]]],
    status: int,
    code: str,
) -> None:
    body, headers = build()

    result = api.request("POST", ANALYZE, token=alice.token, body=body, headers=headers)

    assert result.status == status, result.body
    error = result.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert scan_count(pg) == 0


def test_upload_over_the_size_limit_is_413(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection, settings_env: pytest.MonkeyPatch
) -> None:
    settings_env.setenv("MAX_UPLOAD_BYTES", "100000")
    data = images.png16()
    assert len(data) > 100_000

    result = upload(api, alice, data)

    assert result.status == 413
    assert result.error_code == "upload_too_large"
    assert "100,000" in result.json()["error"]["message"]
    assert scan_count(pg) == 0


def test_upload_decompression_bomb_is_rejected(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection, settings_env: pytest.MonkeyPatch
) -> None:
    # A 4000x4000 image that compresses to a few KB, against a 1-megapixel cap.
    settings_env.setenv("MAX_IMAGE_PIXELS", "1000000")
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.new("L", (4000, 4000)).save(out, format="PNG")
    assert len(out.getvalue()) < 100_000

    result = upload(api, alice, out.getvalue())

    assert result.status == 422
    assert result.error_code == "invalid_image"
    assert scan_count(pg) == 0


def test_upload_without_token_is_401(api: LambdaClient, pg: pg8000.native.Connection) -> None:
    body, ctype = multipart({"file": ("scan.png", images.png8(size=64, regions=()), "image/png")})
    result = api.request("POST", ANALYZE, body=body, headers={"content-type": ctype})
    assert result.status == 401
    assert result.headers["www-authenticate"].startswith("Bearer")
    assert scan_count(pg) == 0


# The upload asks for the token's owner and that owner's scan of the same bytes in one statement,
# after reading the body: whatever the body, a token without a live session is answered 401, and
# never with the scan its (former) owner holds.
BAD_BODIES: dict[str, Callable[[bytes], tuple[bytes, str]]] = {
    "a file its owner holds": lambda data: multipart({"file": ("scan.png", data, "image/png")}),
    "malformed multipart": lambda data: (b"--x\r\nnot a form", "multipart/form-data; boundary=x"),
    "not multipart": lambda data: (data, "image/png"),
    "an empty file": lambda data: multipart({"file": ("scan.png", b"", "image/png")}),
    "no file field": lambda data: multipart({"other": ("scan.png", data, "image/png")}),
}


@pytest.fixture(params=["one round trip", "owner first"])
def lookup_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways the upload route looks up the token: with the duplicate in one round trip (bodies up
    to ONE_TRIP_MAX_BODY), or the owner first (larger bodies; here every body is larger)."""
    if request.param == "owner first":
        monkeypatch.setattr(f"{UPLOAD_HANDLER}.ONE_TRIP_MAX_BODY", 0)
    return str(request.param)


@pytest.mark.parametrize("token_state", ["expired", "logged out", "unknown"])
@pytest.mark.parametrize("body_kind", sorted(BAD_BODIES))
def test_upload_with_a_dead_token_is_401_whatever_the_body(
    api: LambdaClient,
    alice: User,
    pg: pg8000.native.Connection,
    token_state: str,
    body_kind: str,
    lookup_path: str,
) -> None:
    data = images.png16(seed=11)
    assert upload(api, alice, data).status == 201
    token = alice.token
    if token_state == "expired":
        pg.run("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE user_id = :id", id=alice.id)
    elif token_state == "logged out":
        assert api.request("DELETE", "/api/v1/auth/sessions/current", token=alice.token).status == 204
    else:
        token = "A" * 43
    body, content_type = BAD_BODIES[body_kind](data)

    result = api.request("POST", ANALYZE, token=token, body=body, headers={"content-type": content_type})

    assert result.status == 401, result.body
    assert result.error_code == "not_authenticated"
    assert "scanId" not in result.body.decode()
    assert scan_count(pg) == 1


def test_upload_with_a_live_token_answers_what_is_wrong_with_the_body(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection, lookup_path: str
) -> None:
    for body_kind, (status, code) in {
        "malformed multipart": (400, "invalid_upload"),
        "not multipart": (415, "unsupported_media_type"),
        "an empty file": (422, "invalid_image"),
        "no file field": (400, "invalid_upload"),
    }.items():
        body, content_type = BAD_BODIES[body_kind](images.png16(seed=12))
        result = api.request("POST", ANALYZE, token=alice.token, body=body, headers={"content-type": content_type})
        assert (result.status, result.error_code) == (status, code), (body_kind, result.body)
    assert scan_count(pg) == 0


def test_a_large_body_from_a_dead_token_is_never_parsed(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[object] = []

    async def read_upload(request: object) -> tuple[str, bytes]:
        parsed.append(request)
        raise AssertionError("the body of an unknown caller was parsed")

    monkeypatch.setattr(f"{UPLOAD_HANDLER}.read_upload", read_upload)
    big = b"\0" * (importlib.import_module(UPLOAD_HANDLER).ONE_TRIP_MAX_BODY + 1)
    body, content_type = multipart({"file": ("scan.dcm", big, "application/dicom")})

    result = api.request("POST", ANALYZE, token="A" * 43, body=body, headers={"content-type": content_type})

    assert result.status == 401, result.body
    assert parsed == []
    assert scan_count(pg) == 0


def test_a_large_upload_is_stored_and_found_again_as_a_duplicate(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(f"{UPLOAD_HANDLER}.ONE_TRIP_MAX_BODY", 1000)
    data = images.png16(seed=13)
    first = upload(api, alice, data)
    again = upload(api, alice, data)
    assert (first.status, again.status) == (201, 200)
    assert again.json()["duplicate"] is True and again.json()["scanId"] == first.json()["scanId"]
    assert scan_count(pg) == 1


def test_upload_failure_after_the_row_is_written_leaves_no_row(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    # Given a database that fails the INSERT after the row and all four images are written: a
    # constraint trigger runs at the end of the statement, once the row and its TOAST data exist.
    pg.run("CREATE FUNCTION reject_scan() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE 'disk on fire'; END $$")
    pg.run("CREATE CONSTRAINT TRIGGER reject_scan AFTER INSERT ON scans FOR EACH ROW EXECUTE FUNCTION reject_scan()")
    try:
        result = upload(api, alice, images.png8(size=64, regions=(Region(10, 10, 8, 8),)))
    finally:
        pg.run("DROP TRIGGER reject_scan ON scans")
        pg.run("DROP FUNCTION reject_scan()")

    # Then the client gets a 500 without the database's words, and no row exists
    assert result.status == 500
    assert result.error_code == "internal_error"
    assert "disk on fire" not in result.body.decode()
    assert scan_count(pg) == 0
