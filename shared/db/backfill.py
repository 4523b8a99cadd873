"""The DICOM scans DICOMweb does not know yet (no dicom_instances row: stored before migration 010),
for the backfill job (shared.jobs.dicomweb_backfill), and the read of one scan's original for it.

A scan whose SOP Instance UID (the scans row keeps it: migration 004) its owner already holds in
another instance is a conflict, not pending work: it is listed apart and never read, so a run does
not count it as remaining and a later run does not read it again. The instance insert itself is in
shared.db.instances (insert_missing_scan_instance), beside the table's other inserts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from shared.db.protocol import Connection

# Before every scan: the keyset of a run's first batch.
START = (datetime(1, 1, 1, tzinfo=UTC), "")

_WITHOUT_INSTANCE = """
    FROM scans s
    WHERE s.content_type = 'application/dicom'
      AND NOT EXISTS (SELECT FROM dicom_instances i WHERE i.scan_id = s.id)
"""
# i.sop_instance_uid = NULL matches nothing: a scan without the UID in its row is pending, and read.
_HELD_BY_ANOTHER = """
    EXISTS (SELECT FROM dicom_instances i WHERE i.owner_id = s.owner_id AND i.sop_instance_uid = s.sop_instance_uid)
"""
_PENDING = f"""
    {_WITHOUT_INSTANCE}
      AND NOT {_HELD_BY_ANOTHER}
      AND (s.created_at, s.id) > (CAST(:after_at AS timestamptz), CAST(:after_id AS text))
"""
# Oldest first, by keyset: a scan skipped in a run (a damaged file) is never selected twice in it.
# No image column: the original is read one scan at a time (SELECT_ORIGINAL).
SELECT_PENDING = f"""
    SELECT s.id, s.created_at {_PENDING}
    ORDER BY s.created_at, s.id
    LIMIT :batch
"""
COUNT_PENDING = f"SELECT count(*) {_PENDING}"
SELECT_CONFLICTING = f"""
    SELECT s.id, count(*) OVER () {_WITHOUT_INSTANCE} AND {_HELD_BY_ANOTHER}
    ORDER BY s.created_at, s.id
    LIMIT :limit
"""
# The tier and the bytes in one statement: a move between the tiers commits before or after it, and
# an object moved back to PostgreSQL stays in the bucket for the cleanup job's grace period (an hour).
SELECT_ORIGINAL = """
    SELECT owner_id, file_hash, original_storage,
           CASE WHEN original_storage = 'postgres' THEN original_image_data END
    FROM scans WHERE id = :scan_id
"""


@dataclass(frozen=True)
class PendingScan:
    """A DICOM scan without an instance, and its place in the keyset."""

    id: str
    created_at: datetime

    @property
    def key(self) -> tuple[datetime, str]:
        return (self.created_at, self.id)


@dataclass(frozen=True)
class Original:
    """A scan's original: its bytes when they are in PostgreSQL, else (storage 's3') its key's parts."""

    owner_id: int
    sha256: str
    storage: str
    data: bytes | None


@dataclass(frozen=True)
class Conflicts:
    """The scans whose SOP Instance UID their owner holds in another instance: the first few, and how many."""

    scan_ids: list[str]
    count: int


def list_pending_scans(con: Connection, *, after: tuple[datetime, str], batch: int) -> list[PendingScan]:
    """Up to `batch` DICOM scans without an instance and without a conflict, oldest first, after `after`."""
    rows = con.run(SELECT_PENDING, after_at=after[0], after_id=after[1], batch=batch)
    return [PendingScan(row[0], row[1]) for row in rows]


def count_pending_scans(con: Connection, *, after: tuple[datetime, str]) -> int:
    """How many DICOM scans after `after` still have no instance and no conflict."""
    return int(con.run(COUNT_PENDING, after_at=after[0], after_id=after[1])[0][0])


def list_conflicting_scans(con: Connection, *, limit: int) -> Conflicts:
    """The DICOM scans without an instance whose SOP Instance UID their owner holds in another one."""
    rows = con.run(SELECT_CONFLICTING, limit=limit)
    return Conflicts([row[0] for row in rows], int(rows[0][1]) if rows else 0)


def read_original(con: Connection, *, scan_id: str) -> Original | None:
    """The scan's original (its bytes, or where in S3 they are); None when the scan is gone."""
    rows = con.run_with_raw_bytes(SELECT_ORIGINAL, {"scan_id": scan_id}, column_count=4, raw_column=3)
    if not rows:
        return None
    owner_id, sha256, where, data = rows[0]
    return Original(int(owner_id), str(sha256).strip(), where, None if data is None else bytes(data))
