"""The S3 tier: uploads whose images pass STORAGE_TIER_S3_MIN_BYTES go to the bucket, and every read
(ETag, 304, HEAD, Range, signed URLs, 302 for what Lambda could not answer) works as for PostgreSQL.

moto stands in for S3 (in process); PostgreSQL is real.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pg8000.native
import pytest
import requests

from shared import db, storage
from shared.core import config
from shared.core.config import get_settings
from shared.core.errors import StorageUnavailable
from shared.jobs import tiering
from tests import images
from tests.conftest import BUCKET, User
from tests.lambda_client import LambdaClient, multipart


def upload(api: LambdaClient, user: User, data: bytes, name: str = "scan.png", ctype: str = "image/png") -> Any:
    body, content_type = multipart({"file": (name, data, ctype)})
    return api.request(
        "POST", "/api/v1/scans/analyze", token=user.token, body=body, headers={"content-type": content_type}
    )


def path(scan_id: str, kind: str) -> str:
    return f"/api/v1/scans/image/{scan_id}/{kind}"


def tiers(pg: pg8000.native.Connection, scan_id: str) -> dict[str, tuple[str, bool, int | None]]:
    """Each image's (storage, bytes in its column?, size column) of one scan."""
    row = pg.run(
        """SELECT original_storage, original_image_data IS NOT NULL, original_size,
                  preview_storage, preview_image_data IS NOT NULL, preview_size,
                  annotated_storage, annotated_image_data IS NOT NULL, annotated_size,
                  thumbnail_storage, thumbnail_image_data IS NOT NULL, thumbnail_size
           FROM scans WHERE id = :id""",
        id=scan_id,
    )[0]
    kinds = ("original", "preview", "annotated", "thumbnail")
    return {kind: (row[3 * i], row[3 * i + 1], row[3 * i + 2]) for i, kind in enumerate(kinds)}


def keys(client: Any) -> set[str]:
    return {item["Key"] for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def test_upload_puts_every_image_past_the_threshold_in_s3_and_reads_give_back_its_bytes(
    s3: Any, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    data = images.png16()
    created = upload(api, alice, data)
    assert created.status == 201, created.body
    scan = created.json()
    assert scan["fileSize"] == len(data)

    assert {kind: where[:2] for kind, where in tiers(pg, scan["scanId"]).items()} == {
        kind: ("s3", False) for kind in ("original", "preview", "annotated", "thumbnail")
    }
    assert tiers(pg, scan["scanId"])["original"][2] == len(data)
    digest = hashlib.sha256(data).hexdigest()
    key = f"scans/{alice.id}/{digest}"
    assert key in keys(s3) and len(keys(s3)) == 4
    stored = s3.get_object(Bucket=BUCKET, Key=key)
    assert stored["Body"].read() == data and stored["ContentType"] == "image/png"
    assert pg.run("SELECT count(*) FROM storage_orphans")[0][0] == 0

    got = api.request("GET", path(scan["scanId"], "original"), token=alice.token)
    assert got.status == 200 and got.body == data
    assert got.headers["etag"] == f'"{digest}"' and got.headers["content-type"] == "image/png"
    assert got.headers["content-length"] == str(len(data))
    thumbnail = api.request("GET", path(scan["scanId"], "thumbnail"), token=alice.token)
    assert thumbnail.status == 200 and thumbnail.body[:2] == b"\xff\xd8"
    assert hashlib.sha256(thumbnail.body).hexdigest() in thumbnail.headers["etag"]


def test_s3_images_answer_304_and_head_from_postgresql_without_asking_s3(
    s3: Any, api: LambdaClient, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = images.png16()
    scan_id = upload(api, alice, data).json()["scanId"]
    digest = hashlib.sha256(data).hexdigest()

    def no_s3(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("S3 was asked")

    monkeypatch.setattr(storage.ObjectStore, "get", no_s3)
    head = api.request("HEAD", path(scan_id, "original"), token=alice.token)
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == str(len(data)) and head.headers["etag"] == f'"{digest}"'
    again = api.request("GET", path(scan_id, "original"), token=alice.token, headers={"if-none-match": f'"{digest}"'})
    assert again.status == 304 and again.body == b""


def test_range_of_an_s3_image_reads_only_that_span(
    s3: Any, api: LambdaClient, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = images.png16()
    scan_id = upload(api, alice, data).json()["scanId"]
    asked: list[tuple[object, ...]] = []
    real_get = storage.ObjectStore.get

    def spy(self: storage.ObjectStore, key: str, start: int | None = None, stop: int | None = None) -> bytes:
        asked.append((start, stop))
        return real_get(self, key, start, stop)

    monkeypatch.setattr(storage.ObjectStore, "get", spy)
    part = api.request("GET", path(scan_id, "original"), token=alice.token, headers={"range": "bytes=100-1099"})
    assert part.status == 206 and part.body == data[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(data)}"
    tail = api.request("GET", path(scan_id, "original"), token=alice.token, headers={"range": "bytes=-10"})
    assert tail.status == 206 and tail.body == data[-10:]
    assert asked == [(100, 1100), (len(data) - 10, len(data))]
    beyond = api.request("GET", path(scan_id, "original"), token=alice.token, headers={"range": f"bytes={len(data)}-"})
    assert beyond.status == 416 and beyond.error_code == "range_not_satisfiable"


def test_signed_url_of_an_s3_image_serves_it_and_other_owners_get_404(
    s3: Any, api: LambdaClient, alice: User, bob: User
) -> None:
    data = images.png16()
    scan = upload(api, alice, data).json()
    signed = urlsplit(scan["results"]["imageUrl"])
    got = api.request("GET", signed.path, query=signed.query)
    assert got.status == 200 and got.body == data
    assert api.request("GET", path(scan["scanId"], "original"), token=bob.token).status == 404


def test_an_image_lambda_could_not_answer_whole_is_a_302_to_a_short_lived_presigned_get(
    s3: Any, api: LambdaClient, alice: User, pg: pg8000.native.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = images.png16()
    scan_id = upload(api, alice, data).json()["scanId"]
    monkeypatch.setattr(storage, "MAX_INLINE_BYTES", 1000)

    got = api.request("GET", path(scan_id, "original"), token=alice.token)
    assert got.status == 302 and got.body == b""
    assert got.headers["cache-control"] == "no-store"
    location = got.headers["location"]
    query = parse_qs(urlsplit(location).query)
    assert query["X-Amz-Expires"] == ["60"] and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert urlsplit(location).path.endswith(f"/scans/{alice.id}/{hashlib.sha256(data).hexdigest()}")
    fetched = requests.get(location, timeout=10)
    assert fetched.status_code == 200 and fetched.content == data
    # A span Lambda can answer is still answered; no token, no redirect.
    small = api.request("GET", path(scan_id, "original"), token=alice.token, headers={"range": "bytes=0-99"})
    assert small.status == 206 and small.body == data[:100]
    assert api.request("GET", path(scan_id, "original")).status == 401
    # Each read's audit row says what was answered: the 302 to S3, then the 206
    audited = pg.run("SELECT status FROM audit_events WHERE action = 'image.read' ORDER BY id")
    assert [row[0] for row in audited] == [302, 206]


def test_a_read_s3_fails_is_a_503_and_its_audit_row_says_503(
    s3: Any, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    # Given an image in S3 whose object S3 no longer gives (and one it still gives)
    scan_id = upload(api, alice, images.png16()).json()["scanId"]
    s3.delete_object(Bucket=BUCKET, Key=storage.object_key(alice.id, hashlib.sha256(images.png16()).hexdigest()))

    # When Alice reads the original, then the thumbnail
    failed = api.request("GET", path(scan_id, "original"), token=alice.token)
    read = api.request("GET", path(scan_id, "thumbnail"), token=alice.token)

    # Then a JSON 503, and each audit row says what was answered: 503, then 200
    assert failed.status == 503 and failed.error_code == "storage_unavailable", failed.body
    assert read.status == 200
    audited = pg.run("SELECT image_type, status FROM audit_events WHERE action = 'image.read' ORDER BY id")
    assert audited == [["original", 503], ["thumbnail", 200]]


def test_only_images_at_or_above_the_threshold_go_to_s3(
    s3: Any, settings_env: pytest.MonkeyPatch, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    data = images.png16()
    settings_env.setenv("STORAGE_TIER_S3_MIN_BYTES", str(len(data)))
    scan_id = upload(api, alice, data).json()["scanId"]
    where = tiers(pg, scan_id)
    assert where["original"] == ("s3", False, len(data))
    assert {kind: where[kind] for kind in ("preview", "annotated", "thumbnail")} == {
        kind: ("postgres", True, None) for kind in ("preview", "annotated", "thumbnail")
    }
    assert len(keys(s3)) == 1
    for kind in ("original", "thumbnail"):
        assert api.request("GET", path(scan_id, kind), token=alice.token).status == 200


def test_without_a_bucket_everything_stays_in_postgresql(
    settings_env: pytest.MonkeyPatch, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    settings_env.setenv("STORAGE_TIER_S3_MIN_BYTES", "1")
    settings_env.delenv("IMAGES_BUCKET", raising=False)
    storage.clear_cache()
    scan_id = upload(api, alice, images.png16()).json()["scanId"]
    assert {where[0] for where in tiers(pg, scan_id).values()} == {"postgres"}


def test_duplicate_upload_reuses_the_scan_and_its_objects(
    s3: Any, api: LambdaClient, alice: User, bob: User, pg: pg8000.native.Connection
) -> None:
    data = images.png16()
    first = upload(api, alice, data)
    again = upload(api, alice, data)
    assert (first.status, again.status) == (201, 200)
    assert again.json()["scanId"] == first.json()["scanId"] and again.json()["duplicate"] is True
    assert len(keys(s3)) == 4
    # Another owner's copy of the same file is their own object: deleting one never touches the other.
    assert upload(api, bob, data).status == 201
    assert len(keys(s3)) == 8 and pg.run("SELECT count(*) FROM storage_orphans")[0][0] == 0


def test_deleting_a_scan_lists_its_s3_keys_for_the_cleanup_job(
    s3: Any, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    scan_id = upload(api, alice, images.png16()).json()["scanId"]
    assert api.request("DELETE", f"/api/v1/scans/{scan_id}", token=alice.token).status == 204
    listed = {row[0] for row in pg.run("SELECT key FROM storage_orphans")}
    assert listed == keys(s3) and len(listed) == 4
    assert api.request("GET", path(scan_id, "original"), token=alice.token).status == 404


def test_an_upload_s3_refuses_is_a_503_and_leaves_no_row(
    s3: Any, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    s3.delete_bucket(Bucket=BUCKET)
    failed = upload(api, alice, images.png16())
    assert failed.status == 503 and failed.error_code == "storage_unavailable"
    assert failed.headers["retry-after"]
    assert pg.run("SELECT count(*) FROM scans")[0][0] == 0
    # What it may have written is on the orphan list for the cleanup job.
    assert pg.run("SELECT count(*) FROM storage_orphans")[0][0] == 4


def test_object_keys_come_from_owner_and_hash_only() -> None:
    digest = "ab" * 32
    assert storage.object_key(7, digest) == f"scans/7/{digest}"
    assert storage.parse_object_key(f"scans/7/{digest}") == (7, digest)
    for bad in ("uploads/x", f"scans/x/{digest}", "scans/7/abc", f"scans/7/{digest}/x"):
        with pytest.raises(ValueError):
            storage.parse_object_key(bad)


def test_a_copy_is_checked_by_the_sha256_s3_computes_without_reading_it_back(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = storage.ObjectStore(BUCKET)
    data = b"staged upload " * 1000
    s3.put_object(Bucket=BUCKET, Key="uploads/upl_aaaaaaaaaaaaaaaaaaaaaaaa", Body=data)

    def no_read_back(self: storage.ObjectStore, key: str) -> str:
        raise AssertionError("the copy was read back")

    monkeypatch.setattr(storage.ObjectStore, "sha256_of", no_read_back)
    digest = hashlib.sha256(data).hexdigest()
    store.copy("uploads/upl_aaaaaaaaaaaaaaaaaaaaaaaa", f"scans/1/{digest}", content_type="image/png", sha256=digest)
    assert s3.get_object(Bucket=BUCKET, Key=f"scans/1/{digest}")["Body"].read() == data
    with pytest.raises(StorageUnavailable):
        store.copy(
            "uploads/upl_aaaaaaaaaaaaaaaaaaaaaaaa", f"scans/1/{'0' * 64}", content_type="image/png", sha256="0" * 64
        )


def _read_while_a_move_commits(
    api: LambdaClient, user: User, pg: pg8000.native.Connection, database_url: str, scan_id: str, move: Any
) -> Any:
    """Read an original while `move` commits between read_scan_image()'s look at the tier and its read
    of the bytes: the function's audit INSERT, which comes between the two, waits on a lock this test
    holds on audit_events until the move has committed."""
    locker = db.connect(config.parse_database_url(database_url), timeout=30)
    result: dict[str, Any] = {}
    try:
        locker.run("BEGIN")
        locker.run("LOCK TABLE audit_events IN SHARE ROW EXCLUSIVE MODE")

        def read() -> None:
            try:
                result["read"] = api.request("GET", path(scan_id, "original"), token=user.token)
            except BaseException as exc:  # reported below
                result["error"] = exc
            finally:
                db.close_connection()  # this thread's own, and the event loop the client gave it
                asyncio.get_event_loop_policy().get_event_loop().close()

        reader = threading.Thread(target=read)
        reader.start()
        for _ in range(600):  # the reader waits on the lock: it has looked at the tier already
            waiting = pg.run("SELECT count(*) FROM pg_locks WHERE relation = 'audit_events'::regclass AND NOT granted")[
                0
            ][0]
            if waiting:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the read never reached its audit row")
        moved = move()
        assert moved["moved"] >= 1, moved
        locker.run("COMMIT")
        reader.join(timeout=60)
        assert not reader.is_alive() and "error" not in result, result
        return result["read"]
    finally:
        locker.close()


def test_a_move_to_s3_committing_in_the_middle_of_a_read_sends_the_read_to_s3(
    s3: Any,
    settings_env: pytest.MonkeyPatch,
    api: LambdaClient,
    alice: User,
    pg: pg8000.native.Connection,
    database_url: str,
) -> None:
    settings_env.delenv("STORAGE_TIER_S3_MIN_BYTES")
    config.get_settings.cache_clear()
    data = images.png16()
    scan_id = upload(api, alice, data).json()["scanId"]
    assert tiers(pg, scan_id)["original"][0] == "postgres"

    got = _read_while_a_move_commits(
        api, alice, pg, database_url, scan_id, lambda: tiering.move_to_s3(get_settings(), min_bytes=1)
    )

    assert tiers(pg, scan_id)["original"][0] == "s3"
    assert got.status == 200 and got.body == data


def test_a_move_back_committing_in_the_middle_of_a_read_still_finds_the_object(
    s3: Any, api: LambdaClient, alice: User, pg: pg8000.native.Connection, database_url: str
) -> None:
    data = images.png16()
    scan_id = upload(api, alice, data).json()["scanId"]
    assert tiers(pg, scan_id)["original"][0] == "s3"

    got = _read_while_a_move_commits(
        api, alice, pg, database_url, scan_id, lambda: tiering.move_to_postgres(get_settings())
    )

    assert tiers(pg, scan_id)["original"][0] == "postgres"
    assert got.status == 200 and got.body == data
