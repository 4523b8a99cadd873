"""The DICOMweb backfill (shared/jobs/dicomweb_backfill.py) through the migrate function: DICOM scans
stored before migration 010 (here: uploaded through the real handler, then their instance rows
deleted, which is what a scan from before 010 looks like) get the instance an upload writes today,
from PostgreSQL and from S3 (moto), and DICOMweb finds them; conflicts, damaged files, the time
budget, the skip flag, and reruns that add nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
import time
from typing import Any

import pg8000.native
import pytest
from pydicom.dataset import Dataset

from functions.migrate.handler import handler as migrate
from scripts.dev import phantom
from shared import db
from shared.db import backfill as db_backfill
from shared.db import instances
from shared.dicom import describe_instance
from shared.dicomweb.media import read_multipart_related
from shared.jobs import deadline
from shared.scans.instances import new_instance
from tests.conftest import BUCKET, ROOT, User
from tests.lambda_client import LambdaClient, multipart

# What the upload wrote for an instance: every column but the row's own id and time.
INSTANCE_COLUMNS = """
    scan_id, owner_id, study_instance_uid, series_instance_uid, sop_instance_uid, sop_class_uid,
    transfer_syntax_uid, patient_name, patient_id, patient_birth_date, patient_sex, study_date,
    accession_number, modality, series_number, instance_number, rows, columns, number_of_frames,
    patient_name_keys, metadata, bulk_data::text, frames::text
"""
REPORT_KEYS = {
    "described",
    "remaining",
    "conflicts",
    "conflictCount",
    "failed",
    "failedCount",
    "done",
    "stoppedBy",
    "seconds",
}


class Context:
    """The Lambda context's one method the migrate function reads."""

    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def series(n: int, *, seed: int) -> list[Dataset]:
    return phantom.ct_series(n, size=64, seed=seed, phi=True)


def upload(api: LambdaClient, user: User, ds: Dataset) -> str:
    body, content_type = multipart({"file": ("slice.dcm", phantom.dicom_bytes(ds), "application/octet-stream")})
    created = api.request(
        "POST", "/api/v1/scans/analyze", token=user.token, body=body, headers={"content-type": content_type}
    )
    assert created.status == 201, created.body
    scan_id: str = created.json()["scanId"]
    return scan_id


def instance_rows(pg: pg8000.native.Connection) -> list[list[Any]]:
    return [list(row) for row in pg.run(f"SELECT {INSTANCE_COLUMNS} FROM dicom_instances ORDER BY scan_id")]


def forget_instances(pg: pg8000.native.Connection) -> None:
    """Make every scan look stored before migration 010: no dicom_instances row."""
    pg.run("DELETE FROM dicom_instances")


def backfill(event: dict[str, Any] | None = None, context: Any = None) -> dict[str, Any]:
    report = migrate({} if event is None else event, context)
    assert report["status"] == "ok", report
    summary: dict[str, Any] = report["dicomweb_backfill"]
    return summary


def search_instances(api: LambdaClient, user: User) -> list[str]:
    """The SOP Instance UIDs QIDO-RS finds for this user, through the images function."""
    found = api.request("GET", "/api/v1/dicomweb/instances", token=user.token)
    assert found.status == 200, found.body
    return sorted(item["00080018"]["Value"][0] for item in json.loads(found.body))


def test_pre_010_scans_get_the_instance_an_upload_writes_and_dicomweb_finds_them(
    api: LambdaClient, alice: User, bob: User, pg: pg8000.native.Connection
) -> None:
    # Given three DICOM scans of alice and one of bob's, as they were before migration 010
    slices = series(3, seed=301)
    for ds in slices:
        upload(api, alice, ds)
    upload(api, bob, slices[0])  # the same file for another owner is no conflict
    written_by_upload = instance_rows(pg)
    forget_instances(pg)
    assert search_instances(api, alice) == []

    # When the migrate function runs
    report = backfill()

    # Then each scan has exactly the instance the upload had written, and QIDO-RS finds them
    assert set(report) == REPORT_KEYS
    assert report["described"] == 4 and report["remaining"] == 0 and report["done"] is True
    assert report["conflicts"] == [] and report["failed"] == [] and report["stoppedBy"] is None
    assert instance_rows(pg) == written_by_upload
    assert search_instances(api, alice) == sorted(ds.SOPInstanceUID for ds in slices)
    assert search_instances(api, bob) == [slices[0].SOPInstanceUID]


def test_a_second_run_adds_nothing(api: LambdaClient, alice: User, pg: pg8000.native.Connection) -> None:
    for ds in series(2, seed=311):
        upload(api, alice, ds)
    forget_instances(pg)
    assert backfill()["described"] == 2
    ids = pg.run("SELECT id FROM dicom_instances ORDER BY id")

    again = backfill()

    assert (again["described"], again["remaining"], again["done"]) == (0, 0, True)
    assert pg.run("SELECT id FROM dicom_instances ORDER BY id") == ids


def test_a_scan_in_s3_is_read_from_the_bucket_and_its_frames_are_served(
    s3: Any, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    # Given a DICOM scan whose original is in the S3 tier (the s3 fixture's threshold is 1 byte)
    ds = series(1, seed=321)[0]
    scan_id = upload(api, alice, ds)
    assert pg.run("SELECT original_storage, original_image_data IS NULL FROM scans")[0] == ["s3", True]
    written_by_upload = instance_rows(pg)
    forget_instances(pg)

    report = backfill()

    assert (report["described"], report["failed"]) == (1, [])
    assert instance_rows(pg) == written_by_upload
    # WADO-RS serves its frame as byte ranges of the S3 object, which the backfill described.
    path = (
        f"/api/v1/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/1"
    )
    frame = api.request(
        "GET",
        path,
        token=alice.token,
        headers={"accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"},
    )
    assert frame.status == 200, frame.body
    _, parts = read_multipart_related(frame.body, frame.headers["content-type"])
    assert [bytes(part.body) for part in parts] == [ds.PixelData]
    assert pg.run("SELECT scan_id FROM dicom_instances")[0][0] == scan_id


def test_two_files_with_one_sop_instance_uid_keep_both_scans_and_name_the_second(
    api: LambdaClient, alice: User, bob: User, pg: pg8000.native.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two different files of alice's with one SOP Instance UID, stored before 010 allowed no such pair
    first = series(1, seed=331)[0]
    second = copy.deepcopy(first)
    second.AccessionNumber = "CORRECTED-1"
    first_scan = upload(api, alice, first)
    forget_instances(pg)
    second_scan = upload(api, alice, second)  # nothing holds the UID now: accepted
    other = upload(api, alice, series(1, seed=332)[0])
    upload(api, bob, second)  # bob holding the UID is no conflict for alice
    forget_instances(pg)

    report = backfill()

    # Then the older is described, the second is reported by scan id, and both scans stay
    assert report["conflicts"] == [second_scan] and report["conflictCount"] == 1
    assert (report["described"], report["remaining"], report["done"]) == (3, 0, True)
    held = pg.run("SELECT scan_id FROM dicom_instances WHERE owner_id = :owner ORDER BY scan_id", owner=alice.id)
    assert sorted(row[0] for row in held) == sorted([first_scan, other])
    assert pg.run("SELECT count(*) FROM scans WHERE owner_id = :owner", owner=alice.id)[0][0] == 3
    # The report names scans, never what is in them.
    assert first.SOPInstanceUID not in json.dumps(report) and str(first.PatientName) not in json.dumps(report)

    # A later run reads neither again, counts nothing as remaining, and still names the conflict.
    read: list[str] = []
    real_read = db_backfill.read_original

    def spy(con: Any, *, scan_id: str) -> Any:
        read.append(scan_id)
        return real_read(con, scan_id=scan_id)

    with monkeypatch.context() as patched:
        patched.setattr(db_backfill, "read_original", spy)
        again = backfill()
    assert read == []
    assert (again["described"], again["remaining"], again["conflicts"], again["done"]) == (0, 0, [second_scan], True)

    # Once ops delete the described one, the next run describes the other.
    deleted = api.request("DELETE", f"/api/v1/scans/{first_scan}", token=alice.token)
    assert deleted.status in (200, 204), deleted.body
    after_delete = backfill()
    assert (after_delete["described"], after_delete["conflicts"]) == (1, [])
    assert pg.run("SELECT accession_number FROM dicom_instances WHERE scan_id = :id", id=second_scan) == [
        ["CORRECTED-1"]
    ]


def test_a_conflict_the_scans_row_does_not_show_is_found_by_the_insert(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    first = series(1, seed=341)[0]
    second = copy.deepcopy(first)
    second.AccessionNumber = "CORRECTED-2"
    upload(api, alice, first)
    forget_instances(pg)
    second_scan = upload(api, alice, second)
    forget_instances(pg)
    # The row's UID is not the file's (NULL here), so only the insert can tell.
    pg.run("UPDATE scans SET sop_instance_uid = NULL WHERE id = :id", id=second_scan)

    report = backfill()

    assert (report["described"], report["conflicts"], report["conflictCount"]) == (1, [second_scan], 1)
    assert report["done"] is True and report["failed"] == []


def test_a_damaged_original_is_reported_by_scan_and_error_class_and_the_rest_is_described(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    slices = series(3, seed=351)
    damaged, good, mismatched = (upload(api, alice, ds) for ds in slices)
    forget_instances(pg)
    # A file cut short after its header (its hash recorded with it, as an upload would have), and one
    # whose stored bytes no longer match the SHA-256 its row records.
    cut = phantom.dicom_bytes(slices[0])[:300]
    pg.run(
        "UPDATE scans SET original_image_data = :data, file_hash = :sha256 WHERE id = :id",
        data=cut,
        sha256=hashlib.sha256(cut).hexdigest(),
        id=damaged,
    )
    pg.run("UPDATE scans SET original_image_data = :data WHERE id = :id", data=b"not the original", id=mismatched)

    report = backfill()

    assert report["failed"] == [
        {"scanId": damaged, "error": "InvalidDicom"},
        {"scanId": mismatched, "error": "OriginalMismatch"},
    ]
    assert (report["failedCount"], report["described"], report["remaining"], report["done"]) == (2, 1, 0, True)
    assert [row[0] for row in pg.run("SELECT scan_id FROM dicom_instances")] == [good]
    # The next run tries them again, once each, and is done again.
    again = backfill()
    assert (again["failedCount"], again["described"], again["done"]) == (2, 0, True)


def test_a_missing_s3_object_fails_that_scan_only(
    s3: Any, api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    first, second = series(2, seed=361)
    gone, kept = upload(api, alice, first), upload(api, alice, second)
    forget_instances(pg)
    s3.delete_object(Bucket=BUCKET, Key=f"scans/{alice.id}/{hashlib.sha256(phantom.dicom_bytes(first)).hexdigest()}")

    report = backfill()

    assert report["failed"] == [{"scanId": gone, "error": "ObjectMissing"}]
    assert [row[0] for row in pg.run("SELECT scan_id FROM dicom_instances")] == [kept]


def test_the_time_budget_stops_the_run_and_the_next_invocation_carries_on(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    slices = series(5, seed=371)
    for ds in slices:
        upload(api, alice, ds)
    forget_instances(pg)

    # Given a clock that moves 10 s each time the job looks at it, and 75 s left in the Lambda: the
    # job starts scans at 75 and 65 s left, and none at 55 s (under its 60 s margin).
    start = time.monotonic()
    ticks = iter(range(1000))

    class TenSecondsPerLook:
        @staticmethod
        def monotonic() -> float:
            return start + 10.0 * next(ticks)

    with monkeypatch.context() as patched:
        patched.setattr(deadline, "time", TenSecondsPerLook)
        report = backfill(context=Context(remaining_ms=75_000))

    assert (report["described"], report["remaining"], report["done"], report["stoppedBy"]) == (2, 3, False, "time")
    assert pg.run("SELECT count(*) FROM dicom_instances")[0][0] == 2

    # The next invocation, with time enough, describes the rest.
    rest = backfill(context=Context(remaining_ms=900_000))
    assert (rest["described"], rest["remaining"], rest["done"]) == (3, 0, True)
    assert search_instances(api, alice) == sorted(ds.SOPInstanceUID for ds in slices)


def test_less_time_than_the_margin_describes_nothing_and_says_not_done(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    upload(api, alice, series(1, seed=381)[0])
    forget_instances(pg)

    report = backfill(context=Context(remaining_ms=30_000))

    assert (report["described"], report["remaining"], report["done"]) == (0, 1, False)


def test_the_backfill_flag_false_runs_the_migrations_only(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    upload(api, alice, series(1, seed=391)[0])
    forget_instances(pg)

    report = migrate({"backfill": False}, None)

    assert report["status"] == "ok" and report["dicomweb_backfill"] is None
    assert pg.run("SELECT count(*) FROM dicom_instances")[0][0] == 0
    # Anything but a boolean is refused before anything runs, rather than guessed at.
    refused = migrate({"backfill": "no"}, None)
    assert refused["status"] == "error" and "dicomweb_backfill" not in refused
    assert pg.run("SELECT count(*) FROM dicom_instances")[0][0] == 0
    assert backfill()["described"] == 1


def test_the_log_says_counts_and_never_scan_ids_or_patient_data(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = series(1, seed=401)[0]
    scan_id = upload(api, alice, ds)
    forget_instances(pg)
    capsys.readouterr()

    assert backfill()["described"] == 1

    logged = capsys.readouterr().out
    assert "described=1 remaining=0 conflicts=0 failed=0 done=True" in logged
    for secret in (scan_id, ds.SOPInstanceUID, ds.StudyInstanceUID, *phantom.PHI_STRINGS):
        assert secret not in logged, secret


def test_importing_the_migrate_function_loads_no_pydicom() -> None:
    # pydicom loads with the first file to describe: a cold start with nothing to backfill never pays for it.
    code = (
        "import sys, functions.migrate.handler; "
        "print(sorted(m for m in ('pydicom', 'numpy', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_insert_adds_nothing_for_a_scan_with_an_instance_or_a_scan_gone(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection
) -> None:
    # What keeps two runs at once (or a run and a replacing upload) from tripping over each other.
    ds = series(1, seed=411)[0]
    scan_id = upload(api, alice, ds)
    instance = new_instance(describe_instance(phantom.dicom_bytes(ds)))

    def insert(scan: str) -> int | None:
        return db.call(instances.insert_missing_scan_instance, instance=instance, owner_id=alice.id, scan_id=scan)

    assert insert(scan_id) is None  # the upload's instance is there
    forget_instances(pg)
    assert insert("scan_gone") is None  # no such scan
    assert pg.run("SELECT count(*) FROM dicom_instances")[0][0] == 0
    assert insert(scan_id) is not None
    assert pg.run("SELECT scan_id FROM dicom_instances") == [[scan_id]]


def manage(database_url: str, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "scripts.ops.manage", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
        timeout=120,
        check=True,
    ).stdout


@pytest.mark.slow
def test_make_migrate_backfills_and_prints_the_report_and_other_commands_do_not(
    api: LambdaClient, alice: User, pg: pg8000.native.Connection, database_url: str
) -> None:
    upload(api, alice, series(1, seed=421)[0])
    forget_instances(pg)

    # `make user` (like audit, cleanup and the moves) only needs a current schema: no backfill.
    manage(database_url, "user", "carol", "--password", "a long enough password 1")
    assert pg.run("SELECT count(*) FROM dicom_instances")[0][0] == 0

    report = json.loads(manage(database_url, "migrate"))

    assert report["status"] == "ok"
    assert report["dicomweb_backfill"]["described"] == 1 and report["dicomweb_backfill"]["done"] is True
    assert pg.run("SELECT count(*) FROM dicom_instances")[0][0] == 1
