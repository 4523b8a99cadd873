"""The cleanup job's S3 steps through its function's handler: images of deleted scans, objects of
presigned uploads never completed, and the key lock that keeps a delete from racing a write.

moto stands in for S3 (the `s3` fixture); PostgreSQL is real. Scans go in and out through the
upload and scans functions, and images are read back through the images function.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pg8000.native
import pytest

from functions.cleanup.handler import handler
from shared import db, storage
from shared.core.errors import StorageUnavailable
from shared.jobs import cleanup
from shared.storage.locks import RECORD_ORPHANS
from tests import images
from tests.conftest import BUCKET, User, admin_connection
from tests.lambda_client import LambdaClient, multipart
from tests.test_cleanup import Context

INSERT_UPLOAD = """
    INSERT INTO uploads (id, owner_id, filename, max_bytes, expires_at)
    VALUES (:id, :owner_id, 'big.dcm', 500000000, now() + make_interval(secs => CAST(:expires_in AS integer)))
"""
# An advisory lock another backend of this database waits for: the cleanup blocked on a key.
WAITING_FOR_A_KEY = """
    SELECT count(*) FROM pg_locks
    WHERE locktype = 'advisory' AND NOT granted AND pid <> pg_backend_pid()
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
A_DAY_MS = 900_000  # the function's 15 minutes: far from the deadline


def upload(api: LambdaClient, user: User, data: bytes) -> Any:
    body, content_type = multipart({"file": ("slice.png", data, "image/png")})
    return api.request(
        "POST", "/api/v1/scans/analyze", token=user.token, body=body, headers={"content-type": content_type}
    )


def delete_scan(api: LambdaClient, user: User, scan_id: str) -> None:
    assert api.request("DELETE", f"/api/v1/scans/{scan_id}", token=user.token).status == 204


def read_original(api: LambdaClient, user: User, scan_id: str) -> bytes:
    got = api.request("GET", f"/api/v1/scans/image/{scan_id}/original", token=user.token)
    assert got.status == 200, got.body
    return got.body


def bucket_keys(client: Any) -> set[str]:
    return {item["Key"] for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def listed(pg: pg8000.native.Connection) -> set[str]:
    return {row[0] for row in pg.run("SELECT key FROM storage_orphans")}


def sizes(client: Any, keys: set[str]) -> int:
    return sum(int(client.head_object(Bucket=BUCKET, Key=key)["ContentLength"]) for key in keys)


def put(client: Any, key: str, data: bytes) -> None:
    client.put_object(Bucket=BUCKET, Key=key, Body=data)


@pytest.fixture
def no_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every listed key is due at once (the job's hour would keep today's deletes)."""
    monkeypatch.setattr(cleanup, "ORPHAN_GRACE_SECONDS", 0)


@pytest.fixture
def uploads_table(pg: pg8000.native.Connection) -> pg8000.native.Connection:
    """The presigned uploads table (migration 008), empty."""
    pg.run("TRUNCATE uploads")
    return pg


@pytest.fixture
def scans_in_s3(s3: Any, api: LambdaClient, alice: User) -> list[tuple[str, bytes]]:
    """Four of alice's scans, each with its four images in the bucket: (scan id, original bytes)."""
    scans = []
    for seed in range(4):
        data = images.png16(seed=seed)
        created = upload(api, alice, data)
        assert created.status == 201, created.body
        scans.append((created.json()["scanId"], data))
    assert len(bucket_keys(s3)) == 16
    return scans


def test_cleanup_deletes_the_s3_images_of_deleted_scans_and_keeps_the_others(
    s3: Any,
    scans_in_s3: list[tuple[str, bytes]],
    api: LambdaClient,
    alice: User,
    pg: pg8000.native.Connection,
    uploads_table: pg8000.native.Connection,
    no_grace: None,
) -> None:
    # Given: two of the four scans deleted; their eight keys are on the orphan list
    for scan_id, _ in scans_in_s3[:2]:
        delete_scan(api, alice, scan_id)
    deleted_keys = listed(pg)
    assert len(deleted_keys) == 8 and deleted_keys < bucket_keys(s3)
    deleted_bytes = sizes(s3, deleted_keys)

    # When
    report = handler({}, Context(A_DAY_MS))

    # Then: their objects are gone, the list is empty, the other scans' images are all there
    assert bucket_keys(s3).isdisjoint(deleted_keys) and len(bucket_keys(s3)) == 8
    assert listed(pg) == set()
    for scan_id, data in scans_in_s3[2:]:
        assert read_original(api, alice, scan_id) == data
    assert report["status"] == "ok"
    assert report["removed"] == {
        "sessions": 0,
        "login_failures": 0,
        "audit_events": 0,
        "request_outcomes": 0,
        "s3OrphanObjects": 8,
        "s3OrphanRowsWithoutObject": 0,
        "s3OrphanRowsReferencedAgain": 0,
        "expiredUploads": 0,
    }
    assert report["s3"] == {"bytesReclaimed": deleted_bytes, "failed": 0, "orphanKeysLeft": 0, "expiredUploadsLeft": 0}
    assert report["thresholds"]["s3GraceSeconds"] == 0

    # And: a second run finds nothing to do
    again = handler({}, Context(A_DAY_MS))
    assert again["status"] == "ok" and again["s3"]["bytesReclaimed"] == 0
    assert len(bucket_keys(s3)) == 8


def test_an_object_the_same_owner_uploads_again_survives_the_cleanup(
    s3: Any,
    scans_in_s3: list[tuple[str, bytes]],
    api: LambdaClient,
    alice: User,
    pg: pg8000.native.Connection,
    uploads_table: pg8000.native.Connection,
    no_grace: None,
) -> None:
    # Given: a scan deleted, then the same file uploaded again by its owner (the same keys)
    scan_id, data = scans_in_s3[0]
    delete_scan(api, alice, scan_id)
    keys = listed(pg)
    again = upload(api, alice, data)
    assert again.status == 201
    before = bucket_keys(s3)
    assert keys <= before

    # When
    report = handler({}, Context(A_DAY_MS))

    # Then: every object stays, and the new scan reads back byte-identical
    assert report["status"] == "ok" and report["removed"]["s3OrphanObjects"] == 0
    assert bucket_keys(s3) == before
    assert read_original(api, alice, again.json()["scanId"]) == data
    assert listed(pg) == set()


def test_keys_a_racing_upload_left_listed_lose_their_rows_and_keep_their_objects(
    s3: Any,
    scans_in_s3: list[tuple[str, bytes]],
    api: LambdaClient,
    alice: User,
    pg: pg8000.native.Connection,
    uploads_table: pg8000.native.Connection,
    no_grace: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loser of two concurrent uploads of one file lists its keys, writes the objects, finds
    the winner's row, and leaves its keys listed: the cleanup job drops the rows, not the objects."""
    scan_id, data = scans_in_s3[0]
    real_find = db.find_owner_and_scan_by_hash
    calls = []

    def misses(*args: Any, **kwargs: Any) -> Any:
        # The loser's dedup lookup (with its token's) ran before the winner committed.
        owner, _ = real_find(*args, **kwargs)
        calls.append(owner)
        return owner, None

    monkeypatch.setattr(db, "find_owner_and_scan_by_hash", misses)
    loser = upload(api, alice, data)
    assert [owner.id for owner in calls] == [alice.id]
    assert loser.status == 200 and loser.json()["scanId"] == scan_id and loser.json()["duplicate"] is True
    keys = listed(pg)
    assert len(keys) == 4 and keys <= bucket_keys(s3)

    report = handler({}, Context(A_DAY_MS))

    assert report["status"] == "ok"
    assert report["removed"]["s3OrphanRowsReferencedAgain"] == 4 and report["removed"]["s3OrphanObjects"] == 0
    assert listed(pg) == set() and keys <= bucket_keys(s3) and len(bucket_keys(s3)) == 16
    assert read_original(api, alice, scan_id) == data


def test_expired_uploads_and_their_objects_go_and_the_others_stay(
    s3: Any,
    alice: User,
    pg: pg8000.native.Connection,
    uploads_table: pg8000.native.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cleanup, "ORPHAN_GRACE_SECONDS", 600)
    uploads = {
        "upl_expired_long_ago_0001": -3600,  # past expiry and grace, object sent: both go
        "upl_expired_never_sent_01": -3600,  # past expiry and grace, the client never sent it: the row goes
        "upl_expired_just_now_0001": -60,  # expired, but within the grace: stays
        "upl_still_open_00000001": 900,  # not expired: stays
    }
    for upload_id, expires_in in uploads.items():
        uploads_table.run(INSERT_UPLOAD, id=upload_id, owner_id=alice.id, expires_in=expires_in)
        if "never_sent" not in upload_id:
            put(s3, f"uploads/{upload_id}", upload_id.encode() * 100)
    # A staging key on the orphan list (as a complete that failed leaves it): deleted, no reference check.
    staged = "uploads/upl_listed_after_failed_complete"
    put(s3, staged, b"x" * 1000)
    pg.run("INSERT INTO storage_orphans (key, since) VALUES (:key, now() - interval '1 hour')", key=staged)

    report = handler({}, Context(A_DAY_MS))

    assert report["status"] == "ok"
    assert report["removed"]["expiredUploads"] == 2 and report["removed"]["s3OrphanObjects"] == 1
    assert report["s3"] == {
        "bytesReclaimed": len(b"upl_expired_long_ago_0001") * 100 + 1000,
        "failed": 0,
        "orphanKeysLeft": 0,
        "expiredUploadsLeft": 0,
    }
    assert {row[0] for row in pg.run("SELECT id FROM uploads")} == {
        "upl_expired_just_now_0001",
        "upl_still_open_00000001",
    }
    assert bucket_keys(s3) == {"uploads/upl_expired_just_now_0001", "uploads/upl_still_open_00000001"}


def test_s3_failing_on_one_key_keeps_its_row_reports_it_and_the_job_goes_on(
    s3: Any,
    scans_in_s3: list[tuple[str, bytes]],
    api: LambdaClient,
    alice: User,
    pg: pg8000.native.Connection,
    uploads_table: pg8000.native.Connection,
    no_grace: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for scan_id, _ in scans_in_s3[:2]:
        delete_scan(api, alice, scan_id)
    keys = sorted(listed(pg))
    refused = keys[3]  # one in the middle: keys before and after it are handled
    real_delete = storage.ObjectStore.delete

    def refuse_one(self: storage.ObjectStore, key: str) -> None:
        if key == refused:
            raise StorageUnavailable("The images bucket refused a delete: SlowDown.")
        real_delete(self, key)

    monkeypatch.setattr(storage.ObjectStore, "delete", refuse_one)
    monkeypatch.setattr(cleanup, "S3_BATCH_KEYS", 3)  # pages of 3: the refused key is in the second
    caplog.set_level(logging.INFO)

    report = handler({}, Context(A_DAY_MS))

    assert report["status"] == "partial"
    assert report["s3"]["failed"] == 1 and report["s3"]["orphanKeysLeft"] == 1
    assert report["removed"]["s3OrphanObjects"] == 7
    assert listed(pg) == {refused}
    assert bucket_keys(s3) & set(keys) == {refused}
    assert "StorageUnavailable" in caplog.text
    assert all(key not in caplog.text for key in keys)  # no key (owner id, hash) in the logs

    # And: the next run, with S3 answering again, finishes the job
    monkeypatch.setattr(storage.ObjectStore, "delete", real_delete)
    again = handler({}, Context(A_DAY_MS))
    assert again["status"] == "ok" and again["removed"]["s3OrphanObjects"] == 1
    assert listed(pg) == set() and refused not in bucket_keys(s3)


def test_orphan_rows_younger_than_the_grace_period_stay(
    s3: Any,
    scans_in_s3: list[tuple[str, bytes]],
    api: LambdaClient,
    alice: User,
    pg: pg8000.native.Connection,
    uploads_table: pg8000.native.Connection,
) -> None:
    # Given: one scan deleted two hours ago (its rows backdated), one just now; the job's own grace
    assert cleanup.ORPHAN_GRACE_SECONDS == 3600
    delete_scan(api, alice, scans_in_s3[0][0])
    old = listed(pg)
    pg.run("UPDATE storage_orphans SET since = now() - interval '2 hours'")
    delete_scan(api, alice, scans_in_s3[1][0])
    young = listed(pg) - old

    report = handler({}, Context(A_DAY_MS))

    assert report["status"] == "ok" and report["removed"]["s3OrphanObjects"] == 4
    assert listed(pg) == young and young <= bucket_keys(s3)
    assert bucket_keys(s3).isdisjoint(old)
    assert report["s3"]["orphanKeysLeft"] == 4


def test_without_a_bucket_the_s3_steps_are_skipped_and_the_list_is_reported_and_kept(
    settings_env: pytest.MonkeyPatch, pg: pg8000.native.Connection, no_grace: None
) -> None:
    settings_env.delenv("IMAGES_BUCKET", raising=False)
    storage.clear_cache()
    pg.run(
        "INSERT INTO storage_orphans (key, since) VALUES (:key, now() - interval '2 days')", key="scans/1/" + "a" * 64
    )

    report = handler({}, Context(A_DAY_MS))

    assert report["status"] == "ok"
    assert report["s3"] == {"skipped": "no images bucket", "orphanKeysLeft": 1}
    assert set(report["removed"]) == {"sessions", "login_failures", "audit_events", "request_outcomes"}
    assert listed(pg) == {"scans/1/" + "a" * 64}


def test_the_s3_steps_stop_before_the_deadline_and_say_partial(
    s3: Any,
    scans_in_s3: list[tuple[str, bytes]],
    api: LambdaClient,
    alice: User,
    pg: pg8000.native.Connection,
    uploads_table: pg8000.native.Connection,
    no_grace: None,
) -> None:
    delete_scan(api, alice, scans_in_s3[0][0])

    report = handler({}, Context(remaining_ms=30_000))  # under the 60 s the job keeps for itself

    assert report["status"] == "partial" and report["removed"]["s3OrphanObjects"] == 0
    assert len(listed(pg)) == 4 and len(bucket_keys(s3)) == 16


# ---------------------------------------------------------------- the key lock


class CleanupThread(threading.Thread):
    """The cleanup function running beside the test, as the nightly job runs beside uploads."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.report: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.report = handler({}, Context(A_DAY_MS))
        except BaseException as exc:  # handed to the test
            self.error = exc


def wait_until_blocked(pg: pg8000.native.Connection, job: CleanupThread) -> None:
    """Return once the job waits for a key lock; fail if it ends first (it did not wait)."""
    give_up = time.monotonic() + 60
    while pg.run(WAITING_FOR_A_KEY)[0][0] == 0:
        assert job.is_alive(), f"the cleanup ended without waiting for the key lock: {job.report or job.error}"
        assert time.monotonic() < give_up, "the cleanup never reached the locked key"
        time.sleep(0.02)


@pytest.fixture
def writer(database_url: str) -> Iterator[db.Connection]:
    """A second connection, as an upload's, whose transaction holds key locks."""
    con = admin_connection(database_url)
    try:
        yield con
    finally:
        con.close()


@pytest.fixture
def recorded_deletes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    events: list[str] = []
    real_delete = storage.ObjectStore.delete

    def record(self: storage.ObjectStore, key: str) -> None:
        events.append(f"delete {key}")
        real_delete(self, key)

    monkeypatch.setattr(storage.ObjectStore, "delete", record)
    return events


def run_beside_locked_keys(
    pg: pg8000.native.Connection, writer: db.Connection, keys: list[str], events: list[str], work: Callable[[], None]
) -> dict[str, Any]:
    """Hold the keys' locks in the writer's transaction, start the job, wait until it waits for one,
    do the writer's work and commit; the job's report."""
    job = CleanupThread()
    writer.run("BEGIN")
    try:
        storage.lock_keys(writer, keys)
        job.start()
        wait_until_blocked(pg, job)
        events.append("job waits")
        work()
        events.append("writer commits")
        writer.run("COMMIT")
    except BaseException:
        writer.run("ROLLBACK")
        raise
    finally:
        job.join(timeout=60)
    assert not job.is_alive() and job.error is None, job.error
    assert job.report is not None
    return job.report


def test_the_cleanup_deletes_a_key_only_after_the_writer_holding_its_lock_commits(
    s3: Any,
    scans_in_s3: list[tuple[str, bytes]],
    api: LambdaClient,
    alice: User,
    pg: pg8000.native.Connection,
    uploads_table: pg8000.native.Connection,
    writer: db.Connection,
    recorded_deletes: list[str],
    no_grace: None,
) -> None:
    delete_scan(api, alice, scans_in_s3[0][0])
    keys = sorted(listed(pg))
    held = keys[1]

    report = run_beside_locked_keys(pg, writer, [held], recorded_deletes, lambda: None)

    # The job deleted the keys before the held one, waited, and deleted the held one after the commit.
    assert recorded_deletes == [
        f"delete {keys[0]}",
        "job waits",
        "writer commits",
        f"delete {keys[1]}",
        f"delete {keys[2]}",
        f"delete {keys[3]}",
    ]
    assert report["removed"]["s3OrphanObjects"] == 4 and listed(pg) == set()
    assert bucket_keys(s3).isdisjoint(keys)


def test_a_reference_committed_under_the_lock_while_the_cleanup_waits_keeps_the_objects(
    s3: Any,
    scans_in_s3: list[tuple[str, bytes]],
    api: LambdaClient,
    alice: User,
    pg: pg8000.native.Connection,
    uploads_table: pg8000.native.Connection,
    writer: db.Connection,
    recorded_deletes: list[str],
    no_grace: None,
) -> None:
    """A writer that makes a scan refer to the keys again (an upload of the same file by the same
    owner, here the deleted row put back) holds their locks until it commits: the job, waiting on
    the first, then finds every key in use."""
    scan_id, data = scans_in_s3[0]
    writer.run("CREATE TEMPORARY TABLE saved AS SELECT * FROM scans WHERE id = :id", id=scan_id)
    delete_scan(api, alice, scan_id)
    keys = sorted(listed(pg))

    report = run_beside_locked_keys(
        pg, writer, keys, recorded_deletes, lambda: writer.run("INSERT INTO scans SELECT * FROM saved")
    )

    assert recorded_deletes == ["job waits", "writer commits"]  # and no delete after it
    assert report["removed"]["s3OrphanRowsReferencedAgain"] == 4 and report["removed"]["s3OrphanObjects"] == 0
    assert set(keys) <= bucket_keys(s3) and listed(pg) == set()
    assert read_original(api, alice, scan_id) == data
    assert f"scans/{alice.id}/{hashlib.sha256(data).hexdigest()}" in keys


def test_a_key_listed_again_while_the_cleanup_waits_stays_listed(
    s3: Any,
    scans_in_s3: list[tuple[str, bytes]],
    api: LambdaClient,
    alice: User,
    pg: pg8000.native.Connection,
    uploads_table: pg8000.native.Connection,
    writer: db.Connection,
    recorded_deletes: list[str],
) -> None:
    """An upload lists its keys again (committed) before it takes their locks: the job, which read
    the key's old row before, re-reads it under the lock and leaves it for a later run, so that an
    upload failing after its PUT still leaves its object on the list."""
    delete_scan(api, alice, scans_in_s3[0][0])
    pg.run("UPDATE storage_orphans SET since = now() - interval '2 hours'")
    keys = sorted(listed(pg))
    held = keys[1]

    report = run_beside_locked_keys(pg, writer, [held], recorded_deletes, lambda: pg.run(RECORD_ORPHANS, keys=[held]))

    assert recorded_deletes == [
        "delete " + keys[0],
        "job waits",
        "writer commits",
        "delete " + keys[2],
        "delete " + keys[3],
    ]
    assert report["removed"]["s3OrphanObjects"] == 3 and report["s3"]["orphanKeysLeft"] == 1
    assert listed(pg) == {held} and held in bucket_keys(s3)
