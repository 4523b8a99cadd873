"""Moving existing images between PostgreSQL and S3 (shared/jobs/tiering.py): through the tiering
function's handler, manage.py's commands in a subprocess (one killed halfway) and the module.

S3 is a moto server on a free localhost port (the subprocesses reach it as the functions would, by
AWS_ENDPOINT_URL_S3); PostgreSQL is real. Every image is checked by reading it back through the
images function's entry point.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pg8000.native
import pytest

from functions.cleanup.handler import handler as cleanup_handler
from functions.tiering.handler import handler
from shared import storage
from shared.core.config import get_settings
from shared.db import ImageType
from shared.http.image_cache import image_cache
from shared.jobs import cleanup, tiering
from tests import images
from tests.conftest import User
from tests.lambda_client import LambdaClient, multipart

ROOT = Path(__file__).resolve().parent.parent
REGION = "eu-central-1"
KINDS = ("original", "preview", "annotated", "thumbnail")
# How long a test waits for a subprocess to reach a state before it fails.
WAIT_SECONDS = 120.0


class Context:
    """What the function reads of a Lambda context: the time left."""

    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@dataclass
class Bucket:
    name: str
    client: Any
    env: dict[str, str]  # what a subprocess needs to reach it

    def keys(self) -> set[str]:
        listed = self.client.list_objects_v2(Bucket=self.name).get("Contents", [])
        return {item["Key"] for item in listed}

    def get(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.name, Key=key)["Body"].read())


@pytest.fixture
def bucket(settings_env: pytest.MonkeyPatch, moto_endpoint: str, pg: pg8000.native.Connection) -> Iterator[Bucket]:
    """A fresh bucket on the moto server as IMAGES_BUCKET; no threshold (uploads stay in PostgreSQL)."""
    import boto3

    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL_S3": moto_endpoint,
        "IMAGES_BUCKET": f"ctscan-tiering-{secrets.token_hex(4)}",
    }
    for name, value in env.items():
        settings_env.setenv(name, value)
    settings_env.delenv("STORAGE_TIER_S3_MIN_BYTES", raising=False)
    client = boto3.client("s3", region_name=REGION)
    client.create_bucket(Bucket=env["IMAGES_BUCKET"], CreateBucketConfiguration={"LocationConstraint": REGION})
    storage.clear_cache()
    image_cache().clear()
    yield Bucket(env["IMAGES_BUCKET"], client, env)
    storage.clear_cache()
    image_cache().clear()


# ---------------------------------------------------------------- helpers


Images = dict[tuple[str, str], bytes]


def image_path(scan_id: str, kind: str) -> str:
    return f"/api/v1/scans/image/{scan_id}/{kind}"


def read_back(api: LambdaClient, user: User, scan_id: str, kind: str) -> bytes:
    """One image through the images function, from whichever tier holds it (no container cache)."""
    image_cache().clear()
    got = api.request("GET", image_path(scan_id, kind), token=user.token)
    assert got.status == 200, (scan_id, kind, got.status, got.body[:200])
    assert got.headers["etag"] == f'"{hashlib.sha256(got.body).hexdigest()}"'
    return got.body


def seed(api: LambdaClient, user: User, count: int) -> Images:
    """`count` scans uploaded through the upload function; every image's bytes as served."""
    stored: Images = {}
    for i in range(count):
        data = images.png16(size=128, regions=(images.Region(30, 40, 20, 16),), seed=100 + i)
        body, content_type = multipart({"file": (f"slice{i}.png", data, "image/png")})
        created = api.request(
            "POST", "/api/v1/scans/analyze", token=user.token, body=body, headers={"content-type": content_type}
        )
        assert created.status == 201, created.body
        scan_id = created.json()["scanId"]
        for kind in KINDS:
            stored[scan_id, kind] = read_back(api, user, scan_id, kind)
        assert stored[scan_id, "original"] == data
    return stored


def tiers(pg: pg8000.native.Connection) -> dict[tuple[str, str], str]:
    """(scan id, kind) -> 'postgres' or 's3', for every image of every scan."""
    rows = pg.run("SELECT id, original_storage, preview_storage, annotated_storage, thumbnail_storage FROM scans")
    return {(row[0], kind): row[1 + i] for row in rows for i, kind in enumerate(KINDS)}


def s3_count(pg: pg8000.native.Connection) -> int:
    return sum(where == "s3" for where in tiers(pg).values())


def orphans(pg: pg8000.native.Connection) -> set[str]:
    return {row[0] for row in pg.run("SELECT key FROM storage_orphans")}


def key_of(user: User, data: bytes) -> str:
    return storage.object_key(user.id, hashlib.sha256(data).hexdigest())


def assert_all_readable(api: LambdaClient, user: User, stored: Images) -> None:
    for (scan_id, kind), data in stored.items():
        assert read_back(api, user, scan_id, kind) == data, (scan_id, kind)


def assert_each_image_in_one_place(pg: pg8000.native.Connection, bucket: Bucket, user: User, stored: Images) -> None:
    """An S3 image's object is there with its bytes; a PostgreSQL image's column holds its bytes."""
    where = tiers(pg)
    for (scan_id, kind), data in stored.items():
        if where[scan_id, kind] == "s3":
            assert bucket.get(key_of(user, data)) == data, (scan_id, kind)
        else:
            column = tiering.COLUMNS[ImageType(kind)].data
            held = pg.run(f"SELECT {column} FROM scans WHERE id = :id", id=scan_id)[0][0]
            assert bytes(held) == data, (scan_id, kind)


def subprocess_env(bucket: Bucket) -> dict[str, str]:
    return {**os.environ, **bucket.env, "PYTHONPATH": str(ROOT)}


def printed_report(stdout: str) -> Any:
    """The JSON report manage.py prints: its whole stdout (the functions' logs go to stderr)."""
    return json.loads(stdout)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    give_up = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < give_up, f"gave up waiting: {what}"
        time.sleep(0.02)


# ---------------------------------------------------------------- moving to S3


def test_move_to_s3_picks_images_at_or_above_min_bytes_of_scans_older_than_the_cutoff(
    bucket: Bucket, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    stored = seed(api, alice, 3)
    old = min(scan_id for scan_id, _ in stored)
    pg.run("UPDATE scans SET created_at = now() - interval '40 days' WHERE id = :id", id=old)

    report = tiering.move_to_s3(get_settings(), min_bytes=1, older_than="30d")

    assert report["direction"] == "to-s3" and report["status"] == "done", report
    assert report["moved"] == 4 and report["remaining"] == 0
    assert report["bytesMoved"] == sum(len(data) for (scan_id, _), data in stored.items() if scan_id == old)
    assert {key for key, where in tiers(pg).items() if where == "s3"} == {(old, kind) for kind in KINDS}

    # At or above: the threshold equal to one image's size moves that image and every larger one.
    sizes = {key: len(data) for key, data in stored.items() if key[0] != old}
    threshold = sorted(sizes.values())[3]
    second = tiering.move_to_s3(get_settings(), min_bytes=threshold)
    assert second["status"] == "done" and second["criteria"]["minBytes"] == threshold
    expected = {(old, kind) for kind in KINDS} | {key for key, size in sizes.items() if size >= threshold}
    assert {key for key, where in tiers(pg).items() if where == "s3"} == expected
    assert second["moved"] == len(expected) - 4 and 0 < second["moved"] < len(sizes)

    assert bucket.keys() == {key_of(alice, stored[key]) for key in expected}
    assert_each_image_in_one_place(pg, bucket, alice, stored)
    assert_all_readable(api, alice, stored)
    assert orphans(pg) == set()


def test_move_to_s3_takes_the_threshold_by_default_and_needs_one(
    bucket: Bucket, settings_env: pytest.MonkeyPatch, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    stored = seed(api, alice, 1)

    with pytest.raises(tiering.BadMoveRequest, match="STORAGE_TIER_S3_MIN_BYTES is unset"):
        tiering.move_to_s3(get_settings())
    assert s3_count(pg) == 0 and bucket.keys() == set()

    threshold = max(stored.values(), key=len)
    settings_env.setenv("STORAGE_TIER_S3_MIN_BYTES", str(len(threshold)))
    get_settings.cache_clear()
    report = tiering.move_to_s3(get_settings())
    assert report["criteria"]["minBytes"] == len(threshold) and report["moved"] == 1
    assert bucket.keys() == {key_of(alice, threshold)}


def test_a_limit_moves_that_many_images_and_reports_the_rest_remaining(
    bucket: Bucket, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    stored = seed(api, alice, 2)

    report = tiering.move_to_s3(get_settings(), min_bytes=1, limit=3)

    assert report["status"] == "partial" and report["stoppedBy"] == "limit"
    assert report["moved"] == 3 and report["remaining"] == len(stored) - 3
    assert s3_count(pg) == 3
    assert_all_readable(api, alice, stored)


def test_reads_keep_working_while_images_move_to_s3(
    bucket: Bucket, api: LambdaClient, alice: User, pg: pg8000.native.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = seed(api, alice, 3)
    by_key = {key_of(alice, data): key for key, data in stored.items()}
    written: queue.Queue[str] = queue.Queue()
    read_it = threading.Event()
    real_put = storage.ObjectStore.put

    def put_then_wait_for_a_read(self: storage.ObjectStore, key: str, data: bytes, **kwargs: Any) -> None:
        # The object is written, the column not yet cleared, the transaction open: a reader must
        # see the image whole now, and after the commit too.
        real_put(self, key, data, **kwargs)
        written.put(key)
        assert read_it.wait(WAIT_SECONDS)
        read_it.clear()

    monkeypatch.setattr(storage.ObjectStore, "put", put_then_wait_for_a_read)
    reports: list[dict[str, Any]] = []
    mover = threading.Thread(target=lambda: reports.append(tiering.move_to_s3(get_settings(), min_bytes=1)))
    mover.start()
    reads_mid_move = reads = 0
    rotation = list(stored)
    try:
        while mover.is_alive():
            try:
                key = written.get(timeout=0.01)
            except queue.Empty:
                scan_id, kind = rotation[reads % len(rotation)]
                assert read_back(api, alice, scan_id, kind) == stored[scan_id, kind]
                reads += 1
                continue
            scan_id, kind = by_key[key]
            assert read_back(api, alice, scan_id, kind) == stored[scan_id, kind]
            reads_mid_move += 1
            read_it.set()
    finally:
        read_it.set()
        mover.join(WAIT_SECONDS)

    assert reports and reports[0]["status"] == "done" and reports[0]["moved"] == len(stored)
    assert reads_mid_move == len(stored)
    assert s3_count(pg) == len(stored)
    assert_all_readable(api, alice, stored)


def test_a_copy_whose_read_back_hash_differs_clears_nothing(
    bucket: Bucket, api: LambdaClient, alice: User, pg: pg8000.native.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = seed(api, alice, 1)
    monkeypatch.setattr(storage.ObjectStore, "sha256_of", lambda self, key: "0" * 64)

    report = tiering.move_to_s3(get_settings(), min_bytes=1)

    assert report["status"] == "partial" and report["stoppedBy"] == "error" and report["moved"] == 0
    assert "does not match" in report["error"]["error"] and report["remaining"] == len(stored)
    (scan_id,) = {scan_id for scan_id, _ in stored}
    first = (scan_id, report["error"]["kind"])
    assert report["error"]["scanId"] == scan_id
    assert set(tiers(pg).values()) == {"postgres"}
    assert_each_image_in_one_place(pg, bucket, alice, stored)
    # The object written before the check stays listed for the cleanup job; no row refers to it.
    assert orphans(pg) == {key_of(alice, stored[first])}
    monkeypatch.undo()
    assert_all_readable(api, alice, stored)


def test_a_move_killed_halfway_loses_nothing_and_a_rerun_finishes_it(
    bucket: Bucket, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    stored = seed(api, alice, 5)
    moved_before_kill = 7
    # manage.py move-to-s3 itself (scripts/ops/manage.py), except that the image after the 7th stops after its object is
    # written and before its row changes: the worst moment to die. The test kills it there.
    driver = f"""
import sys, time
sys.path[:0] = [{str(ROOT)!r}]
from shared import storage
real_put, puts = storage.ObjectStore.put, []
def put(self, key, data, **kwargs):
    real_put(self, key, data, **kwargs)
    puts.append(key)
    if len(puts) > {moved_before_kill}:
        time.sleep(3600)
storage.ObjectStore.put = put
from scripts.ops import manage
raise SystemExit(manage.main(["move-to-s3", "--min-bytes", "1"]))
"""
    env = subprocess_env(bucket)
    move = subprocess.Popen(
        [sys.executable, "-c", driver], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    )
    try:
        wait_until(
            lambda: s3_count(pg) == moved_before_kill and len(bucket.keys()) == moved_before_kill + 1,
            "7 images moved and the 8th written to S3",
        )
        assert move.poll() is None, move.communicate()
        move.send_signal(signal.SIGKILL)
        move.wait(WAIT_SECONDS)
    finally:
        if move.poll() is None:
            move.kill()
        move.communicate()

    # Each image is in one place, whole, and reads back as before.
    assert s3_count(pg) == moved_before_kill
    assert_each_image_in_one_place(pg, bucket, alice, stored)
    assert_all_readable(api, alice, stored)
    in_s3 = {key_of(alice, stored[key]) for key, where in tiers(pg).items() if where == "s3"}
    (stray,) = bucket.keys() - in_s3  # the 8th: written, never referred to, on the orphan list
    assert orphans(pg) == {stray}
    assert pg.run("SELECT s3_key_in_use(:owner, :sha)", owner=alice.id, sha=stray.rsplit("/", 1)[1])[0][0] is False

    rerun = subprocess.run(
        [sys.executable, "-m", "scripts.ops.manage", "move-to-s3", "--min-bytes", "1"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=WAIT_SECONDS,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr
    report = printed_report(rerun.stdout)
    assert report["status"] == "done" and report["remaining"] == 0, report
    assert report["moved"] == len(stored) - moved_before_kill
    assert "to-s3" in rerun.stderr and f"{len(stored) - moved_before_kill}/{len(stored) - moved_before_kill}" in (
        rerun.stderr
    )  # the progress bar

    assert set(tiers(pg).values()) == {"s3"}
    assert bucket.keys() == {key_of(alice, data) for data in stored.values()}
    assert orphans(pg) == set()
    assert_each_image_in_one_place(pg, bucket, alice, stored)
    assert_all_readable(api, alice, stored)


def test_manage_py_moves_need_the_bucket(bucket: Bucket, pg: pg8000.native.Connection) -> None:
    env = {name: value for name, value in subprocess_env(bucket).items() if name != "IMAGES_BUCKET"}
    for command in ("move-to-s3", "move-to-postgres"):
        result = subprocess.run(
            [sys.executable, "-m", "scripts.ops.manage", command],
            env=env,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=WAIT_SECONDS,
            check=False,
        )
        assert result.returncode != 0 and "IMAGES_BUCKET is not set" in result.stderr, result.stderr
        assert result.stdout == ""


# ---------------------------------------------------------------- moving back


INSERT_LEGACY_SCAN = """
    INSERT INTO scans (id, owner_id, filename, content_type, width, height, results,
                       original_image_data, annotated_image_data, thumbnail_image_data,
                       file_hash, annotated_hash, thumbnail_hash, original_storage, original_size)
    VALUES ('scan_large_000000000001', :owner_id, 'large.png', 'image/png', 4096, 4096, '{}',
            NULL, :small, :small, :sha256, :small_sha256, :small_sha256, 's3', :size)
"""


def test_move_to_postgres_brings_every_image_back_and_leaves_the_objects_to_the_cleanup_job(
    bucket: Bucket, api: LambdaClient, alice: User, pg: pg8000.native.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = seed(api, alice, 3)
    assert tiering.move_to_s3(get_settings(), min_bytes=1)["status"] == "done"
    assert len(bucket.keys()) == len(stored)
    # An image Lambda could not answer whole from PostgreSQL (a scan without a preview, too).
    large = secrets.token_bytes(storage.MAX_INLINE_BYTES + 1)
    large_key = key_of(alice, large)
    bucket.client.put_object(Bucket=bucket.name, Key=large_key, Body=large)
    small = b"\xff\xd8small jpeg"
    pg.run(
        INSERT_LEGACY_SCAN,
        owner_id=alice.id,
        small=small,
        sha256=hashlib.sha256(large).hexdigest(),
        small_sha256=hashlib.sha256(small).hexdigest(),
        size=len(large),
    )

    report = tiering.move_to_postgres(get_settings())

    assert report["direction"] == "to-postgres" and report["status"] == "done", report
    assert report["moved"] == len(stored) and report["remaining"] == 0
    assert report["bytesMoved"] == sum(len(data) for data in stored.values())
    assert report["kept"]["count"] == 1
    (kept,) = report["kept"]["images"]
    assert kept["scanId"] == "scan_large_000000000001" and kept["kind"] == "original" and kept["bytes"] == len(large)
    assert "4400000 bytes" in kept["reason"]
    where = tiers(pg)
    assert {where[key] for key in stored} == {"postgres"} and where["scan_large_000000000001", "original"] == "s3"
    # The objects stay (a reader that saw an image in S3 a moment ago may still fetch it), listed
    # for the cleanup job, which deletes them once they are past its grace period.
    moved_keys = {key_of(alice, data) for data in stored.values()}
    assert bucket.keys() == moved_keys | {large_key} and orphans(pg) == moved_keys
    assert_all_readable(api, alice, stored)
    monkeypatch.setattr(cleanup, "ORPHAN_GRACE_SECONDS", 0)
    assert cleanup_handler({}, Context(900_000))["removed"]["s3OrphanObjects"] == len(moved_keys)
    assert bucket.keys() == {large_key}
    assert orphans(pg) == set()
    assert_each_image_in_one_place(pg, bucket, alice, stored)
    assert_all_readable(api, alice, stored)


# ---------------------------------------------------------------- the tiering function


def test_the_function_moves_to_s3_and_back(
    bucket: Bucket, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    stored = seed(api, alice, 2)

    there = handler({"direction": "to-s3", "minBytes": 1, "olderThan": "2999-01-01T00:00:00Z"}, Context(900_000))
    assert there["status"] == "done" and there["moved"] == len(stored), there
    assert there["criteria"]["olderThan"] == "2999-01-01T00:00:00+00:00"
    assert set(tiers(pg).values()) == {"s3"}
    assert_all_readable(api, alice, stored)

    back = handler({"direction": "to-postgres"}, Context(900_000))
    assert back["status"] == "done" and back["moved"] == len(stored), back
    assert set(tiers(pg).values()) == {"postgres"} and orphans(pg) == bucket.keys()
    assert_all_readable(api, alice, stored)


def test_the_function_starts_nothing_in_its_last_minute_and_says_partial(
    bucket: Bucket, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    stored = seed(api, alice, 1)

    report = handler({"direction": "to-s3", "minBytes": 1}, Context(30_000))  # under the 60 s it keeps

    assert report["status"] == "partial" and report["stoppedBy"] == "time"
    assert report["moved"] == 0 and report["remaining"] == len(stored)
    assert s3_count(pg) == 0


@pytest.mark.parametrize(
    ("event", "says"),
    [
        (None, "send {'direction'"),
        ([], "send {'direction'"),
        ({}, "direction: one of"),
        ({"direction": "sideways"}, "direction: one of"),
        ({"direction": "to-s3", "minBytes": 1, "batch": 5}, "unknown fields ['batch']"),
        ({"direction": "to-s3", "minBytes": 0}, "minBytes: a whole number"),
        ({"direction": "to-s3", "minBytes": True}, "minBytes: a whole number"),
        ({"direction": "to-s3", "minBytes": 1, "limit": "5"}, "limit: a whole number"),
        ({"direction": "to-s3", "minBytes": 1, "olderThan": "yesterday"}, "neither an age"),
        ({"direction": "to-s3", "minBytes": 1, "olderThan": "2026-01-01T00:00:00"}, "needs its time zone"),
        ({"direction": "to-s3", "minBytes": 1, "olderThan": 30}, "olderThan: an age"),
        ({"direction": "to-postgres", "minBytes": 5}, "to-postgres takes only limit"),
        ({"direction": "to-s3"}, "STORAGE_TIER_S3_MIN_BYTES is unset"),
    ],
)
def test_the_function_answers_a_bad_event_with_a_clear_error(
    bucket: Bucket, pg: pg8000.native.Connection, event: Any, says: str
) -> None:
    report = handler(event, Context(900_000))
    assert report["status"] == "error" and says in report["error"], report
    assert set(report) == {"status", "error"}


def test_the_function_without_a_bucket_says_so(settings_env: pytest.MonkeyPatch, pg: pg8000.native.Connection) -> None:
    settings_env.delenv("IMAGES_BUCKET", raising=False)
    for direction in ("to-s3", "to-postgres"):
        report = handler({"direction": direction, "limit": 1}, Context(900_000))
        assert report == {
            "status": "error",
            "error": "IMAGES_BUCKET is not set: there is no S3 tier to move images to or from",
        }
