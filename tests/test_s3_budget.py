"""A stalled S3 costs a JSON 503 within the invocation's time, and an upload holds no lock while it waits.

S3 is moto in server mode behind the freezable TCP proxy of tests/db_proxy.py: frozen, it accepts
connections (in the kernel's backlog) and reads requests, and never answers, as a stalled S3 or a
dead network would. Each request goes through its real handler with a Lambda context whose timeout
the test picks, so the S3 calls get their limits from that invocation's time (shared/storage/bucket.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import boto3
import pg8000.native
import pytest

from scripts.dev.localgw.events import LambdaContext, build_event
from shared import db, storage
from shared.core.errors import StorageUnavailable
from shared.http.image_cache import image_cache
from shared.storage import bucket
from tests import images
from tests.conftest import User
from tests.db_proxy import FreezableProxy
from tests.lambda_client import LambdaClient, Result, multipart

REGION = "eu-central-1"
# Advisory locks in this test's database (other databases on the server may hold their own).
ADVISORY_LOCKS_HERE = """
    SELECT count(*) FROM pg_locks
    WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


@pytest.fixture
def s3_proxy(
    settings_env: pytest.MonkeyPatch, fake_aws_credentials: None, moto_endpoint: str, pg: pg8000.native.Connection
) -> Iterator[FreezableProxy]:
    """A fresh bucket on moto, the functions' images bucket (every image goes there), reached through the proxy."""
    address = urlsplit(moto_endpoint)
    proxy = FreezableProxy.to_address(address.hostname or "127.0.0.1", address.port or 80)
    settings_env.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{proxy.port}")
    bucket = f"ctscan-test-{secrets.token_hex(4)}"
    boto3.client("s3", region_name=REGION, endpoint_url=moto_endpoint).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    settings_env.setenv("IMAGES_BUCKET", bucket)
    settings_env.setenv("STORAGE_TIER_S3_MIN_BYTES", "1")
    storage.clear_cache()
    image_cache().clear()
    yield proxy
    proxy.thaw()
    storage.clear_cache()
    image_cache().clear()
    proxy.close()


def invoke(
    method: str, path: str, *, token: str, function_timeout_s: int, body: bytes = b"", content_type: str = ""
) -> tuple[Result, float]:
    """One request through its real handler, in a Lambda context of `function_timeout_s`; and its seconds."""
    client = LambdaClient()
    found = client.gateway.match(method, path)
    assert found is not None
    route, params = found
    headers = [("host", client.host), ("authorization", f"Bearer {token}")]
    if body:
        headers += [("content-type", content_type), ("content-length", str(len(body)))]
    event = build_event(
        method=method,
        raw_path=path,
        raw_query="",
        headers=headers,
        body=body,
        source_ip="203.0.113.9",
        route=route,
        path_params=params,
    )
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:  # a worker thread: give it a loop, as the Lambda runtime does
        asyncio.set_event_loop(asyncio.new_event_loop())
    context = LambdaContext(dataclasses.replace(route, timeout_s=function_timeout_s), "req-s3-budget")
    started = time.monotonic()
    raw = client.gateway._handler(route)(event, context)
    elapsed = time.monotonic() - started
    headers = {k.lower(): v for k, v in (raw.get("headers") or {}).items()}
    return Result(raw["statusCode"], headers, (raw.get("body") or "").encode(), raw), elapsed


def upload(user: User, data: bytes, *, function_timeout_s: int) -> tuple[Result, float]:
    body, ctype = multipart({"file": ("scan.png", data, "image/png")})
    return invoke(
        "POST",
        "/api/v1/scans/analyze",
        token=user.token,
        function_timeout_s=function_timeout_s,
        body=body,
        content_type=ctype,
    )


def assert_storage_unavailable(result: Result) -> None:
    assert result.status == 503, result.body
    assert result.headers["content-type"] == "application/json"
    assert result.headers["retry-after"]
    assert result.error_code == "storage_unavailable"


def test_a_stalled_s3_read_answers_503_before_the_images_function_times_out(
    s3_proxy: FreezableProxy, alice: User, pg: pg8000.native.Connection
) -> None:
    # Given an image in S3, and S3 that stops answering
    stored, _ = upload(alice, images.png8(size=64, regions=()), function_timeout_s=29)
    assert stored.status == 201, stored.body
    scan_id = stored.json()["scanId"]
    s3_proxy.freeze()

    # When Alice reads the original with 3 s left to run
    result, elapsed = invoke("GET", f"/api/v1/scans/image/{scan_id}/original", token=alice.token, function_timeout_s=3)

    # Then our JSON 503 with Retry-After comes before the function's 3 s are up, and the audit row says 503
    assert_storage_unavailable(result)
    assert elapsed < 3, elapsed
    assert pg.run("SELECT status FROM audit_events WHERE action = 'image.read'") == [[503]]


def test_an_upload_to_a_stalled_s3_answers_503_leaves_no_row_and_holds_no_lock_meanwhile(
    s3_proxy: FreezableProxy, alice: User, pg: pg8000.native.Connection
) -> None:
    # Given S3 that stops answering
    data = images.png8(size=64, regions=())
    s3_proxy.freeze()

    # When Alice uploads a file with 4 s left to run (in a thread of its own, a container's), while
    # another connection watches pg_locks from the moment its keys are on the orphan list
    answer: list[tuple[Result, float]] = []

    def container() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            answer.append(upload(alice, data, function_timeout_s=4))
        finally:
            db.close_connection()
            asyncio.get_event_loop().close()

    uploading = threading.Thread(target=container)
    uploading.start()
    key = storage.object_key(alice.id, hashlib.sha256(data).hexdigest())
    while uploading.is_alive() and not pg.run("SELECT 1 FROM storage_orphans WHERE key = :key", key=key):
        time.sleep(0.01)
    advisory_locks_seen, samples = 0, 0
    while uploading.is_alive():
        advisory_locks_seen += int(pg.run(ADVISORY_LOCKS_HERE)[0][0])
        samples += 1
        time.sleep(0.02)
    uploading.join()

    # Then no advisory lock was held while S3 stalled, our JSON 503 came within the function's
    # time, and no scan row was written
    assert samples > 10 and advisory_locks_seen == 0
    result, elapsed = answer[0]
    assert_storage_unavailable(result)
    assert elapsed < 4, elapsed
    assert pg.run("SELECT count(*) FROM scans")[0][0] == 0
    # What the upload may have written is on the orphan list for the cleanup job
    assert pg.run("SELECT count(*) FROM storage_orphans WHERE key = :key", key=key) == [[1]]


@pytest.mark.parametrize(
    ("left", "expected"),
    [
        (None, bucket.DEFAULT_LIMITS),
        (60.0, bucket.Limits(2.0, 16.0, 2)),
        (28.5, bucket.Limits(2.0, 8.0, 2)),
        (9.5, bucket.Limits(1.0, 2.0, 2)),
        (5.2, bucket.Limits(0.5, 1.0, 2)),
        (4.0, bucket.Limits(1.0, 2.0, 1)),
        (1.0, bucket.Limits(0.25, 0.5, 1)),
        (0.5, None),
    ],
)
def test_s3_limits_fit_the_time_left(left: float | None, expected: Any) -> None:
    if left is None:
        assert bucket.current_limits() == expected
        return
    with db.invocation_budget(int((left + db.ANSWER_MARGIN_SECONDS) * 1000)):
        if expected is None:
            with pytest.raises(StorageUnavailable):
                bucket.current_limits()
        else:
            limits = bucket.current_limits()
            assert limits == expected
            backoff = (limits.attempts - 1) * bucket.RETRY_BACKOFF_SECONDS
            assert limits.attempts * (limits.connect + limits.read) + backoff <= left
