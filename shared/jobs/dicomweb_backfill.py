"""The DICOMweb backfill: an instance for each DICOM scan stored before migration 010.

Uploads since 010 record their DICOMweb instance with the scan (shared.scans.uploads); scans stored
before it have none, so QIDO-RS and WADO-RS cannot find them. The migrate function (and `make
migrate`) runs this after the migrations, until its time budget or the work runs out, and reports;
ops invoke it again until the report says `done`.

Each scan, oldest first: read its original in one statement (the bytea, or where in S3 it is, then
the object), check it against the row's SHA-256, describe it with the code an upload uses
(shared.dicom.describe_instance, via shared.scans.instances.new_instance), insert the instance with
its scan_id. Each statement is its own transaction, so no lock outlives one statement: the read
takes none, the insert locks only its new row and the scan's key (against a concurrent delete).
Running it again adds nothing: a scan with an instance is never selected, and the insert does
nothing for one that got its instance meanwhile (ON CONFLICT (scan_id)).

What is skipped, and why a later run does not go round in circles:

- conflicts: before 010 an owner could store two different files with one SOP Instance UID; 010's
  UNIQUE (owner_id, sop_instance_uid) takes the first described and refuses the second. Both scans
  stay as they are (whatever DUPLICATE_SOP_POLICY says: a backfill deletes nothing), and the report
  names every such scan each run, for ops to decide (delete one, and the next run describes the
  other). The scans row's own UID (migration 004) finds them in SQL, so no run reads them again or
  counts them as remaining; one the SQL cannot see (its row's UID differs from the file's) is found
  by the insert and reported in that run.
- failed: an original that cannot be read or described (a damaged file, an S3 object missing; also a
  DICOM file without the UIDs of an instance, which an upload since 010 stores as a scan alone). The
  report gives the scan id and the error's class name only, never its message, which could quote the
  file. A run selects by keyset (created_at, id), so it meets each at most once; the next run reads
  them again (a later fix of the describe code may succeed), and a run is `done` once it got to the
  end of the list, whatever failed on the way.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from shared import db, storage
from shared.core.errors import DuplicateSopInstance
from shared.db import backfill, instances
from shared.jobs.deadline import Deadline

# Scans one query selects: enough to amortise the query, few enough to keep it quick.
BATCH_SCANS = 100
# With a deadline (the Lambda's), start no scan this long before it, as the tiering and cleanup jobs
# do: the largest original (500 MB from S3, hashed and described) must finish and the report get out.
STOP_BEFORE_DEADLINE_SECONDS = 60.0
# The report lists at most this many conflicts and failures; their counts are always whole.
MAX_LISTED = 1000


class NoImagesBucket(Exception):
    """A scan's original is in S3 but this deployment names no images bucket (IMAGES_BUCKET)."""


class OriginalMismatch(Exception):
    """The original's bytes do not hash to the SHA-256 its scan records: nothing is described from them."""


@dataclass
class _Run:
    described: int = 0
    conflicts: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    failed_count: int = 0


def run_backfill(con: db.Connection, *, deadline: float | None = None) -> dict[str, Any]:
    """Describe pending DICOM scans until none is left or `deadline` (time.monotonic(), the Lambda's
    end; None: no limit) is near; the report: described, remaining, conflicts, failed, done."""
    started = time.monotonic()
    clock = Deadline(deadline, stop_before=STOP_BEFORE_DEADLINE_SECONDS)
    tally = _Run()
    after = backfill.START
    stopped_by: str | None = None
    while stopped_by is None:
        batch = backfill.list_pending_scans(con, after=after, batch=BATCH_SCANS)
        for pending in batch:
            if clock.stopping():
                stopped_by = "time"
                break
            _backfill_scan(con, pending.id, tally)
            after = pending.key
        if len(batch) < BATCH_SCANS:
            break
    remaining = backfill.count_pending_scans(con, after=after)
    conflicts = backfill.list_conflicting_scans(con, limit=MAX_LISTED)
    # Those the insert found that SQL cannot see (the row's UID is not the file's), after SQL's own.
    listed = list(dict.fromkeys([*conflicts.scan_ids, *tally.conflicts]))
    unseen = len(listed) - len(conflicts.scan_ids)
    return {
        "described": tally.described,
        "remaining": remaining,
        "conflicts": listed[:MAX_LISTED],
        "conflictCount": conflicts.count + unseen,
        "failed": tally.failed,
        "failedCount": tally.failed_count,
        "done": remaining == 0,
        "stoppedBy": stopped_by,
        "seconds": round(time.monotonic() - started, 3),
    }


def _backfill_scan(con: db.Connection, scan_id: str, tally: _Run) -> None:
    original = backfill.read_original(con, scan_id=scan_id)
    if original is None:
        return  # deleted since it was selected
    try:
        instance = _describe(_original_bytes(original))
    except Exception as exc:  # any of them, reported by class: one bad file must not stop the run
        tally.failed_count += 1
        if len(tally.failed) < MAX_LISTED:
            tally.failed.append({"scanId": scan_id, "error": type(exc).__name__})
        return
    try:
        inserted = instances.insert_missing_scan_instance(
            con, instance=instance, owner_id=original.owner_id, scan_id=scan_id
        )
    except DuplicateSopInstance:
        tally.conflicts.append(scan_id)
        return
    if inserted is not None:
        tally.described += 1


def _original_bytes(original: backfill.Original) -> bytes:
    data = original.data
    if data is None:
        store = storage.object_store()
        if store is None:
            raise NoImagesBucket("the original is in S3 and IMAGES_BUCKET is unset")
        data = store.get(storage.object_key(original.owner_id, original.sha256))
    if hashlib.sha256(data).hexdigest() != original.sha256:
        raise OriginalMismatch("the original does not match its scan's SHA-256")
    return data


def _describe(data: bytes) -> instances.NewInstance:
    # pydicom loads with the first file to describe: a migrate run with nothing left to backfill,
    # or told to skip it, never imports it.
    from shared.dicom import describe_instance
    from shared.scans.instances import new_instance

    return new_instance(describe_instance(data))
