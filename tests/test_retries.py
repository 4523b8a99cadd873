"""A write whose reply was lost after it committed answers, on db.call's retry, what it did.

The connection drops right after the server answered the write (the proxy of tests/db_proxy.py
lets the statement or the COMMIT through and loses its reply): db.call reconnects and runs the
function again. Each write must then answer as the first attempt would have, and do nothing twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pg8000.native
import pytest

from scripts.dev import phantom
from shared import db
from shared.core import config
from shared.db import outcomes as outcome
from tests import images
from tests.conftest import BUCKET, User, admin_connection
from tests.db_proxy import FreezableProxy
from tests.lambda_client import LambdaClient, Result, multipart

ANALYZE = "/api/v1/scans/analyze"
WAITING_ON_A_LOCK = """
    SELECT 1 FROM pg_stat_activity
    WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO request_outcomes%'
"""
UPLOADS = "/api/v1/scans/uploads"


@pytest.fixture
def proxy(database_url: str, settings_env: pytest.MonkeyPatch) -> Iterator[FreezableProxy]:
    """The functions' DATABASE_URL goes through the proxy that can lose a reply."""
    db.close_connection()
    lossy = FreezableProxy(config.parse_database_url(database_url))
    settings_env.setenv("DATABASE_URL", lossy.url())
    yield lossy
    db.close_connection()
    lossy.close()


def upload(api: LambdaClient, user: User, data: bytes, filename: str, ctype: str) -> Result:
    body, content_type = multipart({"file": (filename, data, ctype)})
    return api.request("POST", ANALYZE, token=user.token, body=body, headers={"content-type": content_type})


def dicom_slice() -> bytes:
    return phantom.dicom_bytes(phantom.ct_slice_dataset(size=64, instance_number=1, slice_position=0.0))


def count(pg: pg8000.native.Connection, sql: str, **params: Any) -> int:
    return int(pg.run(sql, **params)[0][0])


@pytest.mark.parametrize(
    ("kind", "marker", "after"),
    [
        ("png", b"INSERT INTO scans", None),
        ("dicom", b"INSERT INTO scans", None),
        # The COMMIT of the transaction that inserts the row (its objects' keys were listed before)
        ("png-in-s3", b"COMMIT", b"INSERT INTO scans"),
    ],
)
def test_an_upload_whose_commit_reply_was_lost_answers_201_with_one_row(
    proxy: FreezableProxy,
    api: LambdaClient,
    alice: User,
    pg: pg8000.native.Connection,
    request: pytest.FixtureRequest,
    kind: str,
    marker: bytes,
    after: bytes | None,
) -> None:
    # Given an upload as one INSERT (a PNG; a DICOM file with its instance), or as a transaction that
    # writes its images to S3 first; and a connection that drops once the write has committed
    if kind == "png-in-s3":
        request.getfixturevalue("s3")
    data, filename, ctype = (
        (dicom_slice(), "slice.dcm", "application/dicom")
        if kind == "dicom"
        else (images.png8(size=64, regions=()), "scan.png", "image/png")
    )
    proxy.lose_reply_to(marker, after=after)

    # When Alice uploads it
    result = upload(api, alice, data, filename, ctype)

    # Then the reply was lost once, and the retry answers what the first attempt did: a new scan, stored once
    assert proxy.replies_lost == 1
    assert result.status == 201, result.body
    assert result.json()["duplicate"] is False
    assert count(pg, "SELECT count(*) FROM scans") == 1
    assert count(pg, "SELECT count(*) FROM scans WHERE id = :id", id=result.json()["scanId"]) == 1


def test_a_delete_whose_reply_was_lost_answers_204_audited_once(
    proxy: FreezableProxy, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    # Given one of Alice's scans, and a connection that drops once the delete has committed
    stored = upload(api, alice, images.png8(size=64, regions=()), "scan.png", "image/png")
    assert stored.status == 201
    scan_id = stored.json()["scanId"]
    proxy.lose_reply_to(b"DELETE FROM scans")

    # When she deletes it
    result = api.request("DELETE", f"/api/v1/scans/{scan_id}", token=alice.token)

    # Then 204 (not 404), and one audit row that says 204
    assert proxy.replies_lost == 1
    assert result.status == 204, result.body
    assert count(pg, "SELECT count(*) FROM scans") == 0
    audited = pg.run("SELECT status FROM audit_events WHERE action = 'scan.delete' AND scan_id = :id", id=scan_id)
    assert audited == [[204]]


def test_a_dicomweb_delete_whose_reply_was_lost_answers_204_audited_once(
    proxy: FreezableProxy, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    # Given a study of Alice's, and a connection that drops once its DICOMweb delete has committed
    stored = upload(api, alice, dicom_slice(), "slice.dcm", "application/dicom")
    assert stored.status == 201
    study_uid = pg.run("SELECT study_instance_uid FROM scans")[0][0]
    proxy.lose_reply_to(b"dicomweb.delete")

    # When she deletes the study
    result = api.request("DELETE", f"/api/v1/dicomweb/studies/{study_uid}", token=alice.token)

    # Then 204 (not 404), and one audit row that says 204
    assert proxy.replies_lost == 1
    assert result.status == 204, result.body
    assert count(pg, "SELECT count(*) FROM scans") == 0
    assert pg.run("SELECT status FROM audit_events WHERE action = 'dicomweb.delete'") == [[204]]


def test_a_completion_whose_commit_reply_was_lost_answers_as_the_first_attempt(
    proxy: FreezableProxy, s3: Any, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    # Given a presigned upload whose file is in the bucket, and a connection that drops once the
    # completion's transaction has committed
    data = images.png8(size=64, regions=())
    created = api.request(
        "POST",
        UPLOADS,
        token=alice.token,
        body=f'{{"filename": "big.png", "size": {len(data)}}}'.encode(),
        headers={"content-type": "application/json"},
    )
    assert created.status == 201, created.body
    upload_id = created.json()["uploadId"]
    s3.put_object(Bucket=BUCKET, Key=f"uploads/{upload_id}", Body=data)
    proxy.lose_reply_to(b"COMMIT", after=b"DELETE FROM uploads")

    # When Alice completes it
    result = api.request("POST", f"{UPLOADS}/{upload_id}/complete", token=alice.token)

    # Then it answers as the first attempt did (201, a new scan), not 404, and the scan is stored once
    assert proxy.replies_lost == 1
    assert result.status == 201, result.body
    body = result.json()
    assert body["duplicate"] is False
    assert count(pg, "SELECT count(*) FROM scans") == 1
    assert count(pg, "SELECT count(*) FROM scans WHERE id = :id", id=body["scanId"]) == 1
    assert count(pg, "SELECT count(*) FROM uploads") == 0


def test_a_write_that_did_not_commit_runs_again(
    proxy: FreezableProxy, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    # Given a key made for a write whose connection drops before the write reached the server
    ran: list[str] = []

    def write(con: db.Connection, *, outcome_key: str) -> str:
        ran.append(outcome_key)
        if len(ran) == 1:
            db.close_connection()  # the socket is gone before anything is sent
        with db.transaction(con):
            db.record_outcome(con, key=outcome_key, result={"attempt": len(ran)})
        return f"attempt {len(ran)}"

    # When db.call_once runs it
    answer = db.call_once(write, replay=lambda con, outcome: f"replayed {outcome['attempt']}")

    # Then the retry finds no outcome of the first attempt and runs the write again, with the same key
    assert answer == "attempt 2"
    assert ran[0] == ran[1]
    assert count(pg, "SELECT count(*) FROM request_outcomes") == 1


def test_the_key_is_new_for_each_call(proxy: FreezableProxy, pg: pg8000.native.Connection) -> None:
    keys = [db.call_once(lambda con, *, outcome_key: outcome_key, replay=lambda con, outcome: "") for _ in range(2)]
    assert keys[0] != keys[1] and all(len(key) == 36 for key in keys)


def test_a_first_attempt_that_commits_while_the_retry_runs_is_answered_all_the_same(
    proxy: FreezableProxy, database_url: str, pg: pg8000.native.Connection
) -> None:
    # Given a first attempt whose transaction reached the server and holds its outcome, uncommitted,
    # when its connection fails (its COMMIT is late, not lost)
    late = admin_connection(database_url)
    ran: list[int] = []

    def write(con: db.Connection, *, outcome_key: str) -> str:
        ran.append(len(ran) + 1)
        if len(ran) == 1:
            late.run("BEGIN")
            late.run(outcome.INSERT_OUTCOME, key=outcome_key, result='{"by": "the first attempt"}')
            db.close_connection()
            con.run("SELECT 1")  # the network error
        with db.transaction(con):
            db.record_outcome(con, key=outcome_key, result={"by": "the retry"})
        return "the retry's own answer"

    def commit_once_the_retry_waits() -> None:
        # The retry's INSERT of the same key waits on the first attempt's: then that one commits.
        while not pg.run(WAITING_ON_A_LOCK):
            time.sleep(0.01)
        late.run("COMMIT")

    committer = threading.Thread(target=commit_once_the_retry_waits)
    committer.start()
    try:
        # When db.call_once runs it
        answer = db.call_once(write, replay=lambda con, found: f"replayed: {found['by']}")
    finally:
        committer.join(10)
        late.close()

    # Then the retry met the first attempt's key, rolled back, and answered the first attempt's outcome
    assert ran == [1, 2]
    assert answer == "replayed: the first attempt"
    assert pg.run("SELECT result->>'by' FROM request_outcomes") == [["the first attempt"]]
