"""The scans table: one row per upload, its DICOM index and where each of its four images lives."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.core.dicom_index import DicomIndex
from shared.core.errors import ScanNotFound
from shared.db.images import ImageType
from shared.db.protocol import Connection
from shared.db.users import SELECT_SESSION_OWNER, Owner


@dataclass(frozen=True)
class Scan:
    """A scan's metadata and analysis results, never its image bytes."""

    id: str
    owner_id: int
    filename: str
    content_type: str
    width: int
    height: int
    file_hash: str
    results: dict[str, Any]
    created_at: datetime
    dicom: DicomIndex | None = None
    file_size: int = 0  # bytes of the original file


@dataclass(frozen=True)
class NewScan:
    """Everything one upload writes, in one row."""

    id: str
    owner_id: int
    filename: str
    content_type: str
    width: int
    height: int
    results_json: str
    original: bytes
    preview: bytes
    annotated: bytes
    thumbnail: bytes
    file_hash: str
    preview_hash: str
    annotated_hash: str
    thumbnail_hash: str
    dicom: DicomIndex | None
    # The images whose bytes are already in the S3 tier (their bytes here give only their size).
    in_s3: frozenset[ImageType] = frozenset()


DICOM_FIELDS = tuple(DicomIndex.__dataclass_fields__)
# octet_length() of a TOAST-ed value reads its pointer, never the bytes; an S3 original's size is in the row.
SCAN_COLUMNS = (
    "id, owner_id, filename, content_type, width, height, file_hash, results, created_at, "
    "COALESCE(original_size, octet_length(original_image_data)), " + ", ".join(DICOM_FIELDS)
)
_BASE_FIELD_COUNT = 10

INSERT_SCAN = f"""
    INSERT INTO scans (id, owner_id, filename, content_type, width, height, results,
                       original_image_data, preview_image_data, annotated_image_data, thumbnail_image_data,
                       file_hash, preview_hash, annotated_hash, thumbnail_hash,
                       original_storage, preview_storage, annotated_storage, thumbnail_storage,
                       original_size, preview_size, annotated_size, thumbnail_size, {", ".join(DICOM_FIELDS)})
    VALUES (:id, :owner_id, :filename, :content_type, :width, :height, CAST(:results AS jsonb),
            :original, :preview, :annotated, :thumbnail,
            :file_hash, :preview_hash, :annotated_hash, :thumbnail_hash,
            :original_storage, :preview_storage, :annotated_storage, :thumbnail_storage,
            CAST(:original_size AS bigint), CAST(:preview_size AS bigint), CAST(:annotated_size AS bigint),
            CAST(:thumbnail_size AS bigint),
            {", ".join(f":{name}" for name in DICOM_FIELDS)})
    ON CONFLICT (owner_id, file_hash) DO NOTHING
    RETURNING {SCAN_COLUMNS}
"""
SELECT_SCAN = f"SELECT {SCAN_COLUMNS} FROM scans WHERE id = :scan_id AND owner_id = :owner_id"
SELECT_SCAN_BY_HASH = f"SELECT {SCAN_COLUMNS} FROM scans WHERE owner_id = :owner_id AND file_hash = :file_hash"
# An upload's first question to the database: whose token is this, and does that owner hold these
# bytes already? One statement, one round trip (~0.5-1 ms to RDS Proxy, deployed), where asking in
# turn took two. No row: no such session; the scan's columns all NULL: no such scan.
SELECT_OWNER_AND_SCAN_BY_HASH = f"""
    SELECT o.id, o.username, found.*
    FROM ({SELECT_SESSION_OWNER}) AS o
    LEFT JOIN LATERAL (
        SELECT {SCAN_COLUMNS} FROM scans WHERE owner_id = o.id AND file_hash = :file_hash
    ) AS found ON true
"""
# `:dicom` NULL lists every scan; true only DICOM files, false only PNG and JPEG (the web app's
# "Images", which are in no study).
_KIND = "(CAST(:dicom AS boolean) IS NULL OR (content_type = 'application/dicom') = CAST(:dicom AS boolean))"
SELECT_SCANS_FIRST_PAGE = f"""
    SELECT {SCAN_COLUMNS} FROM scans WHERE owner_id = :owner_id AND {_KIND}
    ORDER BY created_at DESC, id DESC LIMIT :limit
"""
SELECT_SCANS_NEXT_PAGE = f"""
    SELECT {SCAN_COLUMNS} FROM scans
    WHERE owner_id = :owner_id AND (created_at, id) < (:before_at, :before_id) AND {_KIND}
    ORDER BY created_at DESC, id DESC LIMIT :limit
"""
# Reading order within a series: instance number, then slice position; a missing one sorts last.
# The expressions match the indexes of migration 004 so the keyset comparison is an index range.
_INSTANCE_KEY = "COALESCE(instance_number, 2147483647)"
_POSITION_KEY = "COALESCE(slice_position, 'Infinity'::float8)"
_SERIES_KEY = "COALESCE(series_instance_uid, '')"
SELECT_SERIES_PAGE = f"""
    SELECT {SCAN_COLUMNS} FROM scans
    WHERE owner_id = :owner_id AND series_instance_uid = :series_uid
      AND (CAST(:study_uid AS text) IS NULL OR study_instance_uid = CAST(:study_uid AS text))
      AND ({_INSTANCE_KEY}, {_POSITION_KEY}, id)
          > (CAST(:after_instance AS integer), CAST(:after_position AS float8), CAST(:after_id AS text))
    ORDER BY {_INSTANCE_KEY}, {_POSITION_KEY}, id LIMIT :limit
"""
SELECT_STUDY_PAGE = f"""
    SELECT {SCAN_COLUMNS} FROM scans
    WHERE owner_id = :owner_id AND study_instance_uid = :study_uid
      AND ({_SERIES_KEY}, {_INSTANCE_KEY}, {_POSITION_KEY}, id)
          > (CAST(:after_series AS text), CAST(:after_instance AS integer), CAST(:after_position AS float8),
             CAST(:after_id AS text))
    ORDER BY {_SERIES_KEY}, {_INSTANCE_KEY}, {_POSITION_KEY}, id LIMIT :limit
"""
# The delete, its audit row (204, or 404 when there was no such scan of this owner) and, given a
# key, its outcome for a retry (shared/db/outcomes.py) in one statement.
DELETE_SCAN = """
    WITH gone AS (
        DELETE FROM scans WHERE id = :scan_id AND owner_id = :owner_id RETURNING id
    ), status AS (
        SELECT CASE WHEN EXISTS (SELECT FROM gone) THEN 204 ELSE 404 END AS status
    ), audit AS (
        INSERT INTO audit_events (user_id, action, scan_id, via, status, source_ip, request_id)
        SELECT :owner_id, 'scan.delete', left(CAST(:scan_id AS text), 64), 'token', status,
               CAST(:source_ip AS text), CAST(:request_id AS text)
        FROM status
    ), outcome AS (
        INSERT INTO request_outcomes (key, result)
        SELECT CAST(:outcome_key AS uuid), jsonb_build_object('status', status) FROM status
        WHERE CAST(:outcome_key AS uuid) IS NOT NULL
    )
    SELECT count(*) FROM gone
"""


def _scan(row: list[Any]) -> Scan:
    dicom_values = row[_BASE_FIELD_COUNT:]
    dicom = None
    if row[3] == "application/dicom":
        values = dict(zip(DICOM_FIELDS, dicom_values, strict=True))
        spacing = values["pixel_spacing_mm"]
        values["pixel_spacing_mm"] = (float(spacing[0]), float(spacing[1])) if spacing else None
        dicom = DicomIndex(**values)
    return Scan(
        id=row[0],
        owner_id=int(row[1]),
        filename=row[2],
        content_type=row[3],
        width=int(row[4]),
        height=int(row[5]),
        file_hash=row[6],
        results=row[7],
        created_at=row[8],
        file_size=int(row[9]),
        dicom=dicom,
    )


def scan_params(scan: NewScan) -> dict[str, Any]:
    """The parameters of INSERT_SCAN for a new scan."""
    dicom: dict[str, Any] = (
        {name: getattr(scan.dicom, name) for name in DICOM_FIELDS}
        if scan.dicom is not None
        else dict.fromkeys(DICOM_FIELDS)
    )
    if dicom["pixel_spacing_mm"] is not None:
        dicom["pixel_spacing_mm"] = list(dicom["pixel_spacing_mm"])
    images: dict[str, Any] = {}
    for kind, data in (
        (ImageType.original, scan.original),
        (ImageType.preview, scan.preview),
        (ImageType.annotated, scan.annotated),
        (ImageType.thumbnail, scan.thumbnail),
    ):
        in_s3 = kind in scan.in_s3
        images[kind.value] = None if in_s3 else data
        images[f"{kind.value}_storage"] = "s3" if in_s3 else "postgres"
        images[f"{kind.value}_size"] = len(data) if in_s3 else None
    return {
        "id": scan.id,
        "owner_id": scan.owner_id,
        "filename": scan.filename,
        "content_type": scan.content_type,
        "width": scan.width,
        "height": scan.height,
        "results": scan.results_json,
        **images,
        "file_hash": scan.file_hash,
        "preview_hash": scan.preview_hash,
        "annotated_hash": scan.annotated_hash,
        "thumbnail_hash": scan.thumbnail_hash,
        **dicom,
    }


def scan_from_row(row: list[Any]) -> Scan:
    """A Scan from a row of SCAN_COLUMNS."""
    return _scan(row)


def insert_scan(con: Connection, *, scan: NewScan) -> Scan | None:
    """Insert a scan with all its images; None when this owner already has a scan with this hash."""
    rows = con.run(INSERT_SCAN, **scan_params(scan))
    return _scan(rows[0]) if rows else None


def find_scan_by_hash(con: Connection, *, owner_id: int, file_hash: str) -> Scan | None:
    """This owner's scan of a file with this SHA-256, or None."""
    rows = con.run(SELECT_SCAN_BY_HASH, owner_id=owner_id, file_hash=file_hash)
    return _scan(rows[0]) if rows else None


SELECT_SCANS_BY_HASHES = (
    f"SELECT {SCAN_COLUMNS} FROM scans WHERE owner_id = :owner_id AND file_hash = ANY(CAST(:file_hashes AS text[]))"
)


def find_scans_by_hashes(con: Connection, *, owner_id: int, file_hashes: list[str]) -> dict[str, Scan]:
    """This owner's scans of files with these SHA-256s, by hash (those it holds)."""
    rows = con.run(SELECT_SCANS_BY_HASHES, owner_id=owner_id, file_hashes=file_hashes)
    return {scan.file_hash: scan for scan in map(_scan, rows)}


def find_owner_and_scan_by_hash(
    con: Connection, *, token_hash: str, file_hash: str
) -> tuple[Owner | None, Scan | None]:
    """The owner of an unexpired session (None: no such session) and that owner's scan of a file
    with this SHA-256 (None: none), in one round trip."""
    rows = con.run(SELECT_OWNER_AND_SCAN_BY_HASH, token_hash=token_hash, file_hash=file_hash)
    if not rows:
        return None, None
    row = rows[0]
    return Owner(int(row[0]), str(row[1])), None if row[2] is None else _scan(row[2:])


def get_scan(con: Connection, *, scan_id: str, owner_id: int) -> Scan:
    """One of this owner's scans; ScanNotFound otherwise (also for other owners' scans)."""
    rows = con.run(SELECT_SCAN, scan_id=scan_id, owner_id=owner_id)
    if not rows:
        raise ScanNotFound("No scan with this id.")
    return _scan(rows[0])


def list_scans_for_owner(
    con: Connection,
    *,
    owner_id: int,
    limit: int,
    before: tuple[datetime, str] | None = None,
    dicom: bool | None = None,
) -> list[Scan]:
    """This owner's scans, newest first, strictly older than `before` (keyset pagination); with
    `dicom`, only DICOM files (True) or only PNG and JPEG (False)."""
    if before is None:
        rows = con.run(SELECT_SCANS_FIRST_PAGE, owner_id=owner_id, limit=limit, dicom=dicom)
    else:
        rows = con.run(
            SELECT_SCANS_NEXT_PAGE,
            owner_id=owner_id,
            before_at=before[0],
            before_id=before[1],
            limit=limit,
            dicom=dicom,
        )
    return [_scan(row) for row in rows]


@dataclass(frozen=True)
class SeriesPosition:
    """A place in reading order (series, instance number, slice position, id): where a page ends."""

    series_uid: str
    instance_key: int
    position_key: float
    scan_id: str


SERIES_START = SeriesPosition("", -(2**31), float("-inf"), "")


def series_position(scan: Scan) -> SeriesPosition:
    """Where a scan sits in reading order, with the same defaults for missing values as the SQL."""
    dicom = scan.dicom
    instance = dicom.instance_number if dicom and dicom.instance_number is not None else 2**31 - 1
    position = dicom.slice_position if dicom and dicom.slice_position is not None else float("inf")
    series = (dicom.series_instance_uid if dicom else None) or ""
    return SeriesPosition(series, instance, position, scan.id)


def list_scans_in_series(
    con: Connection,
    *,
    owner_id: int,
    limit: int,
    series_uid: str | None,
    study_uid: str | None,
    after: SeriesPosition = SERIES_START,
) -> list[Scan]:
    """This owner's scans of one series (or study), in reading order, after `after` (keyset pagination)."""
    common = {
        "owner_id": owner_id,
        "limit": limit,
        "after_instance": after.instance_key,
        "after_position": after.position_key,
        "after_id": after.scan_id,
    }
    if series_uid is not None:
        rows = con.run(SELECT_SERIES_PAGE, series_uid=series_uid, study_uid=study_uid, **common)
    elif study_uid is not None:
        rows = con.run(SELECT_STUDY_PAGE, study_uid=study_uid, after_series=after.series_uid, **common)
    else:
        raise ValueError("a series or a study is required")
    return [_scan(row) for row in rows]


def delete_scan(
    con: Connection,
    *,
    scan_id: str,
    owner_id: int,
    source_ip: str | None = None,
    request_id: str | None = None,
    outcome_key: str | None = None,
) -> None:
    """Delete one of this owner's scans, audited in the same statement; ScanNotFound when there is none.

    With `outcome_key` (db.call_once), the answer is recorded there too: replay_delete_scan answers it."""
    deleted = con.run(
        DELETE_SCAN,
        scan_id=scan_id,
        owner_id=owner_id,
        source_ip=source_ip,
        request_id=request_id,
        outcome_key=outcome_key,
    )
    if not deleted[0][0]:
        raise ScanNotFound("No scan with this id.")


def replay_delete_scan(con: Connection, outcome: dict[str, Any]) -> None:
    """What a delete_scan that committed answered: nothing (204), or ScanNotFound (404)."""
    if outcome["status"] != 204:
        raise ScanNotFound("No scan with this id.")
