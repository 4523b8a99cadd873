"""The dicom_instances table (migration 010): every DICOM SOP instance an owner holds, its QIDO-RS keys
and what WADO-RS serves of it (metadata, frame and bulk data byte ranges).

Every DICOMweb statement names its reader by token hash (dicomweb_reader(): a session, or for reads
a viewer token) and is scoped to that owner, so another owner's instances, like unknown ones, are
simply not found. Searches and retrievals write their audit row in the same statement.
Column names are formatted into SQL only from COLUMNS, a fixed map.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pg8000.exceptions import DatabaseError

from shared.core.errors import DuplicateSopInstance
from shared.db.connection import UNIQUE_VIOLATION, sqlstate
from shared.db.protocol import Connection, Pending
from shared.db.scans import INSERT_SCAN, NewScan, Scan, scan_from_row, scan_params

SOP_KEY_CONSTRAINT = "dicom_instances_owner_sop_key"


@dataclass(frozen=True)
class NewInstance:
    """What ingest learned of one DICOM file (shared.dicom.describe_instance), as this table keeps it."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    attributes: dict[str, Any]  # keyword -> value, for the QIDO columns (see COLUMNS)
    patient_name_keys: tuple[str, ...]
    referring_physician_keys: tuple[str, ...]
    rows: int | None
    columns: int | None
    number_of_frames: int
    metadata_json: str
    bulk_data: dict[str, tuple[int, int]]  # path -> (offset, length) in the stored file
    frames: tuple[tuple[tuple[int, int], ...], ...] | None


@dataclass(frozen=True)
class StoredInstance:
    """An instance an owner already holds: where it is and the SHA-256 of its file."""

    id: int
    scan_id: str | None
    sha256: str
    study_instance_uid: str
    series_instance_uid: str


# QIDO-RS keyword -> column. The only names formatted into SQL.
COLUMNS: dict[str, str] = {
    "StudyInstanceUID": "study_instance_uid",
    "SeriesInstanceUID": "series_instance_uid",
    "SOPInstanceUID": "sop_instance_uid",
    "SOPClassUID": "sop_class_uid",
    "PatientName": "patient_name",
    "PatientID": "patient_id",
    "IssuerOfPatientID": "issuer_of_patient_id",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
    "StudyDate": "study_date",
    "StudyTime": "study_time",
    "TimezoneOffsetFromUTC": "timezone_offset_from_utc",
    "AccessionNumber": "accession_number",
    "StudyID": "study_id",
    "StudyDescription": "study_description",
    "ReferringPhysicianName": "referring_physician_name",
    "Modality": "modality",
    "SeriesNumber": "series_number",
    "SeriesDescription": "series_description",
    "InstanceNumber": "instance_number",
    "Rows": "rows",
    "Columns": "columns",
    "NumberOfFrames": "number_of_frames",
}
_STUDY_ATTRIBUTES = [
    "patient_name",
    "patient_id",
    "issuer_of_patient_id",
    "patient_birth_date",
    "patient_sex",
    "study_date",
    "study_time",
    "timezone_offset_from_utc",
    "accession_number",
    "study_id",
    "study_description",
    "referring_physician_name",
]
_SERIES_ATTRIBUTES = ["modality", "series_number", "series_description"]
_INSTANCE_ATTRIBUTES = [
    "sop_class_uid",
    "sop_instance_uid",
    "instance_number",
    "rows",
    "columns",
    "number_of_frames",
]


# The QIDO columns an INSERT sets beside the UIDs and the pixel module.
_ATTRIBUTE_COLUMNS = [*_STUDY_ATTRIBUTES, *_SERIES_ATTRIBUTES, "instance_number"]
_PERSON_KEYS = {"patient_name": "patient_name_keys", "referring_physician_name": "referring_physician_keys"}
# The keys of each QIDO-RS level's grouping (a study, a series) and of its reading order.
_INSTANCE_ORDER = "COALESCE(i.instance_number, 2147483647), i.sop_instance_uid"

_INSERT_COLUMNS = (
    "owner_id, scan_id, object_data, object_hash, object_size, study_instance_uid, series_instance_uid, "
    "sop_instance_uid, sop_class_uid, transfer_syntax_uid, "
    + ", ".join(_ATTRIBUTE_COLUMNS)
    + ", rows, columns, number_of_frames, patient_name_keys, referring_physician_keys, metadata, bulk_data, frames"
)
_INSERT_VALUES = (
    ":owner_id, :scan_id, :object_data, :object_hash, CAST(:object_size AS bigint), :study_instance_uid, "
    ":series_instance_uid, :sop_instance_uid, :sop_class_uid, :transfer_syntax_uid, "
    + ", ".join(
        f"CAST(:{c} AS integer)" if c in ("series_number", "instance_number") else f":{c}" for c in _ATTRIBUTE_COLUMNS
    )
    + ", CAST(:rows AS integer), CAST(:columns AS integer), CAST(:number_of_frames AS integer), "
    "CAST(:patient_name_keys AS text[]), CAST(:referring_physician_keys AS text[]), :metadata, "
    "CAST(:bulk_data AS jsonb), CAST(:frames AS jsonb)"
)
INSERT_INSTANCE = f"INSERT INTO dicom_instances ({_INSERT_COLUMNS}) VALUES ({_INSERT_VALUES}) RETURNING id"
SELECT_BY_SOP = """
    SELECT i.id, i.scan_id, COALESCE(sc.file_hash, i.object_hash), i.study_instance_uid, i.series_instance_uid
    FROM dicom_instances i LEFT JOIN scans sc ON sc.id = i.scan_id
    WHERE i.owner_id = :owner_id AND i.sop_instance_uid = :sop_instance_uid
"""
SELECT_BY_OBJECT_HASH = """
    SELECT id, study_instance_uid, series_instance_uid, sop_instance_uid
    FROM dicom_instances WHERE owner_id = :owner_id AND object_hash = :object_hash
"""


def instance_params(
    instance: NewInstance, *, owner_id: int, scan_id: str | None, object_data: bytes | None, object_hash: str | None
) -> dict[str, Any]:
    """The INSERT_INSTANCE parameters of an instance stored in a scan (scan_id) or as an object."""
    values = {column: instance.attributes.get(keyword) for keyword, column in COLUMNS.items()}
    return {
        **{c: values[c] for c in _ATTRIBUTE_COLUMNS},
        "owner_id": owner_id,
        "scan_id": scan_id,
        "object_data": object_data,
        "object_hash": object_hash,
        "object_size": None if object_data is None else len(object_data),
        "study_instance_uid": instance.study_instance_uid,
        "series_instance_uid": instance.series_instance_uid,
        "sop_instance_uid": instance.sop_instance_uid,
        "sop_class_uid": instance.sop_class_uid,
        "transfer_syntax_uid": instance.transfer_syntax_uid,
        "rows": instance.rows,
        "columns": instance.columns,
        "number_of_frames": instance.number_of_frames,
        "patient_name_keys": list(instance.patient_name_keys),
        "referring_physician_keys": list(instance.referring_physician_keys),
        "metadata": instance.metadata_json,
        "bulk_data": json.dumps({path: list(span) for path, span in instance.bulk_data.items()}),
        "frames": None if instance.frames is None else json.dumps(instance.frames),
    }


def insert_instance(
    con: Connection,
    *,
    instance: NewInstance,
    owner_id: int,
    scan_id: str | None = None,
    object_data: bytes | None = None,
    object_hash: str | None = None,
) -> int:
    """Insert an instance of a scan (scan_id) or an object (its bytes and SHA-256); its id.
    DuplicateSopInstance when the owner already holds its SOP Instance UID."""
    params = instance_params(
        instance, owner_id=owner_id, scan_id=scan_id, object_data=object_data, object_hash=object_hash
    )
    try:
        return int(con.run(INSERT_INSTANCE, **params)[0][0])
    except DatabaseError as exc:
        raise_duplicate_sop(exc)
        raise


# The backfill's insert (shared.jobs.dicomweb_backfill): the instance of a scan stored before migration
# 010. A scan that has one by now (another run, or a replacing upload, got there first) inserts
# nothing; a scan deleted meanwhile fails the foreign key. The SOP Instance UID key still refuses.
INSERT_MISSING_SCAN_INSTANCE = (
    f"INSERT INTO dicom_instances ({_INSERT_COLUMNS}) VALUES ({_INSERT_VALUES}) "
    "ON CONFLICT (scan_id) DO NOTHING RETURNING id"
)
FOREIGN_KEY_VIOLATION = "23503"


def insert_missing_scan_instance(con: Connection, *, instance: NewInstance, owner_id: int, scan_id: str) -> int | None:
    """Insert the instance of a scan that had none; its id, or None when the scan has one by now or is
    gone. DuplicateSopInstance when the owner already holds its SOP Instance UID in another instance."""
    params = instance_params(instance, owner_id=owner_id, scan_id=scan_id, object_data=None, object_hash=None)
    try:
        rows = con.run(INSERT_MISSING_SCAN_INSTANCE, **params)
    except DatabaseError as exc:
        raise_duplicate_sop(exc)
        if sqlstate(exc) == FOREIGN_KEY_VIOLATION:
            return None
        raise
    return int(rows[0][0]) if rows else None


def raise_duplicate_sop(exc: DatabaseError) -> None:
    """DuplicateSopInstance for a unique violation of (owner_id, sop_instance_uid); returns otherwise."""
    detail = exc.args[0] if exc.args else None
    if sqlstate(exc) == UNIQUE_VIOLATION and isinstance(detail, dict) and detail.get("n") == SOP_KEY_CONSTRAINT:
        raise DuplicateSopInstance("This owner already holds an instance with this SOP Instance UID.") from None


def find_instance(con: Connection, *, owner_id: int, sop_instance_uid: str) -> StoredInstance | None:
    """This owner's instance with this SOP Instance UID, or None."""
    rows = con.run(SELECT_BY_SOP, owner_id=owner_id, sop_instance_uid=sop_instance_uid)
    if not rows:
        return None
    row = rows[0]
    return StoredInstance(int(row[0]), row[1], str(row[2]).strip(), row[3], row[4])


# ---------------------------------------------------------------- QIDO-RS


@dataclass(frozen=True)
class Filter:
    """One matching key on a column (a keyword of COLUMNS, or ModalitiesInStudy); see shared.dicomweb.qido."""

    keyword: str
    kind: str
    values: tuple[str, ...] = ()
    low: str | None = None
    high: str | None = None


@dataclass(frozen=True)
class InstanceQuery:
    """A QIDO-RS search as SQL needs it: level, path UIDs, filters, page, and whether metadata comes too."""

    level: str  # "study", "series" or "instance"
    study_uid: str | None
    series_uid: str | None
    filters: tuple[Filter, ...]
    limit: int
    offset: int
    with_metadata: bool


# A TM value as six digits (fractions dropped), as shared.dicomweb.qido.time_key keys the bounds.
_TIME_KEY = "rpad(split_part({t}, '.', 1), 6, '0')"


def _filter_sql(f: Filter, index: int, params: dict[str, Any]) -> str:
    name = f"f{index}"
    if f.keyword == "ModalitiesInStudy":
        params[name] = list(f.values)
        return (
            "EXISTS (SELECT FROM dicom_instances m WHERE m.owner_id = i.owner_id "
            f"AND m.study_instance_uid = i.study_instance_uid AND m.modality = ANY(CAST(:{name} AS text[])))"
        )
    column = f"i.{COLUMNS[f.keyword]}"
    if f.kind == "uids":
        params[name] = list(f.values)
        return f"{column} = ANY(CAST(:{name} AS text[]))"
    if f.kind == "exact":
        params[name] = f.values[0]
        return f"{column} = CAST(:{name} AS text)"
    if f.kind == "pattern":
        params[name] = f.values[0]
        return f"{column} LIKE CAST(:{name} AS text) ESCAPE '\\'"
    if f.kind == "number":
        params[name] = int(f.values[0])
        return f"{column} = CAST(:{name} AS integer)"
    if f.kind == "person":
        keys = "i." + _PERSON_KEYS[COLUMNS[f.keyword]]
        params[name] = list(f.values)
        return f"EXISTS (SELECT FROM unnest({keys}) k, unnest(CAST(:{name} AS text[])) p WHERE k LIKE p ESCAPE '\\')"
    if f.kind in ("date_range", "time_range", "date_time_range"):
        if f.kind == "date_time_range":
            key = "i.study_date || " + _TIME_KEY.format(t="COALESCE(i.study_time, '')")
        elif f.kind == "time_range":
            key = _TIME_KEY.format(t=column)
        else:
            key = column
        parts = []
        if f.low is not None:
            params[f"{name}_low"] = f.low
            parts.append(f"{key} >= CAST(:{name}_low AS text)")
        if f.high is not None:
            params[f"{name}_high"] = f.high
            parts.append(f"{key} <= CAST(:{name}_high AS text)")
        return f"({column} IS NOT NULL AND {' AND '.join(parts)})"
    raise ValueError(f"unknown match kind {f.kind!r}")


def _first(column: str) -> str:
    """A study's (or series') value of an attribute: that of its earliest instance that has one."""
    return f"(array_agg(i.{column} ORDER BY i.id) FILTER (WHERE i.{column} IS NOT NULL))[1]"


def search_sql(query: InstanceQuery, params: dict[str, Any]) -> tuple[str, list[str]]:
    """The SELECT of one QIDO-RS page for `query` (params filled in) and the names of its columns.

    Filters apply to instances: a study (or series) matches when any of its instances does. Its
    attributes come from its earliest instance; its counts from all of its instances. Results are
    in a stable order (newest study first, then series and instance order), so that offset pages.
    """
    where = ["i.owner_id = :owner_id"]
    if query.study_uid is not None:
        where.append("i.study_instance_uid = :path_study")
        params["path_study"] = query.study_uid
    if query.series_uid is not None:
        where.append("i.series_instance_uid = :path_series")
        params["path_series"] = query.series_uid
    where += [_filter_sql(f, n, params) for n, f in enumerate(query.filters)]
    params["limit"], params["offset"] = query.limit, query.offset
    condition = " AND ".join(where)
    metadata = ["metadata"] if query.with_metadata else []
    if query.level == "instance":
        names = ["study_instance_uid", "series_instance_uid", *_STUDY_ATTRIBUTES, *_SERIES_ATTRIBUTES]
        names += _INSTANCE_ATTRIBUTES + metadata
        sql = (
            f"SELECT {', '.join('i.' + n for n in names)} FROM dicom_instances i WHERE {condition} "
            f"ORDER BY i.study_instance_uid, i.series_instance_uid, {_INSTANCE_ORDER} "
            "LIMIT :limit OFFSET :offset"
        )
        return sql, names
    if query.level == "series":
        group = ["study_instance_uid", "series_instance_uid"]
        attributes = _STUDY_ATTRIBUTES + _SERIES_ATTRIBUTES
        counts = ["count(*) AS number_of_series_related_instances"]
        order = "i.study_instance_uid, min(i.series_number) NULLS LAST, i.series_instance_uid"
    else:
        group = ["study_instance_uid"]
        attributes = _STUDY_ATTRIBUTES
        counts = [
            "array_agg(DISTINCT i.modality) FILTER (WHERE i.modality IS NOT NULL) AS modalities_in_study",
            "count(DISTINCT i.series_instance_uid) AS number_of_study_related_series",
            "count(*) AS number_of_study_related_instances",
        ]
        order = f"{_first('study_date')} DESC NULLS LAST, {_first('study_time')} DESC NULLS LAST, i.study_instance_uid"
    keys = ", ".join(f"i.{g}" for g in group)
    selected = [f"i.{g}" for g in group] + [f"{_first(a)} AS {a}" for a in attributes] + counts
    if query.with_metadata:
        selected.append("(array_agg(i.metadata ORDER BY i.id))[1] AS metadata")
    sql = (
        f"SELECT {', '.join(selected)} FROM dicom_instances i "
        f"WHERE i.owner_id = :owner_id "
        f"AND ({keys}) IN (SELECT DISTINCT {keys} FROM dicom_instances i WHERE {condition}) "
        f"GROUP BY {keys} ORDER BY {order} LIMIT :limit OFFSET :offset"
    )
    names = group + attributes + [c.rsplit(" AS ", 1)[1] for c in counts] + metadata
    return sql, names


def search(
    con: Connection,
    *,
    token_hash: str,
    query: InstanceQuery,
    audit: dict[str, Any],
    source_ip: str | None,
    request_id: str | None,
) -> tuple[int | None, list[dict[str, Any]]]:
    """(the reader, the page of results as column -> value) of a QIDO-RS search, audited in the same
    statement (level, result count, and the keyed hashes in `audit`); reader None: no such token."""
    params: dict[str, Any] = {
        "token_hash": token_hash,
        "audit": json.dumps(audit),
        "source_ip": source_ip,
        "request_id": request_id,
    }
    page_sql, names = search_sql(query, params)
    page_sql = page_sql.replace(":owner_id", "(SELECT owner_id FROM reader)")
    sql = f"""
        WITH reader AS (
            -- The audit row's commit does not wait for the WAL flush, as an image read's (migration 005).
            SELECT dicomweb_reader(CAST(:token_hash AS text), true) AS owner_id,
                   set_config('synchronous_commit', 'off', true) AS no_flush_wait
        ),
        page AS ({page_sql}),
        audit AS (
            INSERT INTO audit_events (user_id, action, via, status, source_ip, request_id, details)
            SELECT owner_id, 'dicomweb.search',
                   CASE WHEN EXISTS (SELECT FROM sessions s WHERE s.token_hash = CAST(:token_hash AS text))
                        THEN 'token' ELSE 'viewer_token' END,
                   200, CAST(:source_ip AS text), CAST(:request_id AS text),
                   CAST(:audit AS jsonb) || jsonb_build_object('results', (SELECT count(*) FROM page))
            FROM reader WHERE owner_id IS NOT NULL
        )
        SELECT (SELECT owner_id FROM reader), p.* FROM (SELECT 1) one LEFT JOIN page p ON true
    """
    rows = con.run(sql, **params)
    reader = rows[0][0] if rows else None
    if reader is None:
        return None, []
    results = [dict(zip(names, row[1:], strict=True)) for row in rows if row[1] is not None]
    return int(reader), results


# ---------------------------------------------------------------- WADO-RS


def _resource_where(study_uid: str, series_uid: str | None, sop_uid: str | None, params: dict[str, Any]) -> str:
    params["study_uid"], params["series_uid"], params["sop_uid"] = study_uid, series_uid, sop_uid
    return (
        "i.study_instance_uid = CAST(:study_uid AS text)"
        " AND (CAST(:series_uid AS text) IS NULL OR i.series_instance_uid = CAST(:series_uid AS text))"
        " AND (CAST(:sop_uid AS text) IS NULL OR i.sop_instance_uid = CAST(:sop_uid AS text))"
    )


@dataclass(frozen=True)
class Metadata:
    """The DICOM JSON array of a study, series or instance, and a tag that changes when it does."""

    reader: int | None
    count: int
    json: bytes | None  # UTF-8, as PostgreSQL sent it; None when the caller holds this etag's JSON
    etag: str


def read_metadata(
    con: Connection,
    *,
    token_hash: str,
    study_uid: str,
    series_uid: str | None,
    sop_uid: str | None,
    source_ip: str | None,
    request_id: str | None,
    known_etag: str | None = None,
) -> Metadata:
    """The metadata of every instance of a study, series or one instance, in reading order, as one
    JSON array built by the database from the descriptions stored at ingest; audited. When the
    resource's tag is still `known_etag` (the caller holds that JSON), the JSON is neither built nor sent."""
    params: dict[str, Any] = {
        "token_hash": token_hash,
        "source_ip": source_ip,
        "request_id": request_id,
        "known_etag": known_etag,
    }
    where = _resource_where(study_uid, series_uid, sop_uid, params)
    level = "instance" if sop_uid else "series" if series_uid else "study"
    params["level"] = level
    sql = f"""
        WITH reader AS (
            -- The audit row's commit does not wait for the WAL flush, as an image read's (migration 005).
            SELECT dicomweb_reader(CAST(:token_hash AS text), true) AS owner_id,
                   set_config('synchronous_commit', 'off', true) AS no_flush_wait
        ),
        found AS (
            SELECT i.id, i.scan_id, i.metadata, i.sop_instance_uid, i.series_instance_uid,
                   COALESCE(i.instance_number, 2147483647) AS n, i.object_hash
            FROM dicom_instances i
            WHERE i.owner_id = (SELECT owner_id FROM reader) AND {where}
        ),
        audit AS (
            INSERT INTO audit_events (user_id, action, scan_id, via, status, source_ip, request_id, details)
            SELECT owner_id, 'dicomweb.retrieve',
                   CASE WHEN CAST(:sop_uid AS text) IS NOT NULL THEN (SELECT min(scan_id) FROM found) END,
                   CASE WHEN EXISTS (SELECT FROM sessions s WHERE s.token_hash = CAST(:token_hash AS text))
                        THEN 'token' ELSE 'viewer_token' END,
                   CASE WHEN EXISTS (SELECT FROM found) THEN 200 ELSE 404 END,
                   CAST(:source_ip AS text), CAST(:request_id AS text),
                   jsonb_build_object('level', CAST(:level AS text) || '.metadata',
                                      'instances', (SELECT count(*) FROM found))
            FROM reader WHERE owner_id IS NOT NULL
        ),
        summary AS (
            SELECT count(*) AS instances,
                   md5(COALESCE(string_agg(sop_instance_uid || ':' || COALESCE(scan_id, object_hash), ','
                                           ORDER BY series_instance_uid, n, sop_instance_uid), '')) AS etag
            FROM found
        )
        SELECT (SELECT owner_id FROM reader), s.instances,
               CASE WHEN s.etag IS DISTINCT FROM CAST(:known_etag AS text) THEN
                   (SELECT '[' || COALESCE(string_agg(metadata, ',' ORDER BY series_instance_uid, n, sop_instance_uid),
                                           '') || ']'
                    FROM found)
               END,
               s.etag
        FROM summary s
    """
    reader, count, text, digest = con.run_with_raw_bytes(sql, params, column_count=4, raw_column=2)[0]
    return Metadata(None if reader is None else int(reader), int(count), text, str(digest))


@dataclass(frozen=True)
class InstanceFile:
    """One stored DICOM file of a retrieval: where its bytes are (a scan's original, or an object)."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    scan_id: str | None
    owner_id: int
    sha256: str
    size: int
    storage: str  # "postgres" or "s3"
    number_of_frames: int = 0  # 0: no pixel data
    is_image: bool = False  # a scan (analyzed and rendered at ingest), not a stored object


def list_files(
    con: Connection,
    *,
    token_hash: str,
    study_uid: str,
    series_uid: str | None,
    sop_uid: str | None,
) -> tuple[int | None, list[InstanceFile]]:
    """(the reader, the files of a study, series or instance in reading order): sizes and places, no bytes."""
    params: dict[str, Any] = {"token_hash": token_hash}
    where = _resource_where(study_uid, series_uid, sop_uid, params)
    sql = f"""
        WITH reader AS (SELECT dicomweb_reader(CAST(:token_hash AS text), true) AS owner_id)
        SELECT (SELECT owner_id FROM reader), i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid,
               i.scan_id, i.owner_id,
               COALESCE(sc.file_hash, i.object_hash),
               COALESCE(i.object_size, sc.original_size, octet_length(sc.original_image_data)),
               COALESCE(sc.original_storage, 'postgres'), i.number_of_frames
        FROM (SELECT 1) one
        LEFT JOIN dicom_instances i ON i.owner_id = (SELECT owner_id FROM reader) AND {where}
        LEFT JOIN scans sc ON sc.id = i.scan_id
        ORDER BY i.series_instance_uid, COALESCE(i.instance_number, 2147483647), i.sop_instance_uid
    """
    rows = con.run(sql, **params)
    reader = rows[0][0] if rows else None
    files = [
        InstanceFile(r[1], r[2], r[3], r[4], int(r[5]), str(r[6]).strip(), int(r[7]), r[8], int(r[9]), r[4] is not None)
        for r in rows
        if r[1] is not None
    ]
    return (None if reader is None else int(reader)), files


READ_FILES = """
    SELECT i.sop_instance_uid, CASE WHEN i.scan_id IS NULL THEN i.object_data ELSE sc.original_image_data END
    FROM dicom_instances i LEFT JOIN scans sc ON sc.id = i.scan_id
    WHERE i.owner_id = :owner_id AND i.sop_instance_uid = ANY(CAST(:sop_uids AS text[]))
      AND COALESCE(sc.original_storage, 'postgres') = 'postgres'
"""


def read_files(con: Connection, *, owner_id: int, sop_uids: Sequence[str]) -> dict[str, bytes]:
    """The bytes of these instances of this owner that are in PostgreSQL, by SOP Instance UID (in binary format)."""
    rows = con.run_with_raw_bytes(
        READ_FILES, {"owner_id": owner_id, "sop_uids": list(sop_uids)}, column_count=2, raw_column=1
    )
    return {str(row[0]): row[1] for row in rows if row[1] is not None}


@dataclass(frozen=True)
class Frame:
    """One frame of a WADO-RS frames read: its number, its bytes (None for an S3 image: read
    `fragments`, the (offset, length) byte ranges of the original)."""

    number: int
    data: bytes | None
    fragments: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class FramesRead:
    """What read_dicom_frames() found: the reader (None: no such token), the status (200, 404, or
    409 when the frames are not byte ranges of the stored file), the stored syntax and the frames."""

    reader: int | None
    status: int
    transfer_syntax_uid: str | None
    sha256: str | None
    storage: str | None
    frames: tuple[Frame, ...]


READ_FRAMES = """
    SELECT reader, status, transfer_syntax_uid, sha256, storage, frame, fragments, data
    FROM read_dicom_frames(CAST(:token_hash AS text), :study_uid, :series_uid, :sop_uid,
                           CAST(:frames AS integer[]), CAST(:source_ip AS text), CAST(:request_id AS text),
                           CAST(:known_sha256 AS text))
"""


def read_frames(
    con: Connection,
    *,
    token_hash: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    frames: Sequence[int],
    source_ip: str | None,
    request_id: str | None,
    known_sha256: str | None = None,
) -> FramesRead:
    """Frames of one instance by number (1-based), authorised and audited in one call (read_dicom_frames()).
    With `known_sha256` the file's frames the caller already holds: when it is still the stored
    file's hash, no bytes are read or sent (each Frame's data is None, as for an S3 file)."""
    params = {
        "known_sha256": known_sha256,
        "token_hash": token_hash,
        "study_uid": study_uid,
        "series_uid": series_uid,
        "sop_uid": sop_uid,
        "frames": list(frames),
        "source_ip": source_ip,
        "request_id": request_id,
    }
    rows = con.run_with_raw_bytes(READ_FRAMES, params, column_count=8, raw_column=7)
    if not rows:
        return FramesRead(None, 401, None, None, None, ())
    first = rows[0]
    if first[1] != 200:
        return FramesRead(int(first[0]), int(first[1]), None, None, None, ())
    parsed = tuple(Frame(int(row[5]), row[7], tuple((int(o), int(n)) for o, n in _json(row[6]))) for row in rows)
    return FramesRead(int(first[0]), 200, first[2], str(first[3]).strip(), first[4], parsed)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


RECORD_RETRIEVAL = """
    INSERT INTO audit_events (user_id, action, scan_id, via, status, source_ip, request_id, details)
    VALUES (:reader, 'dicomweb.retrieve', CAST(:scan_id AS text),
            CASE WHEN EXISTS (SELECT FROM sessions s WHERE s.token_hash = CAST(:token_hash AS text))
                 THEN 'token' ELSE 'viewer_token' END,
            200, CAST(:source_ip AS text), CAST(:request_id AS text), CAST(:details AS jsonb))
"""


def record_retrieval(
    con: Connection,
    *,
    reader: int,
    token_hash: str,
    scan_id: str | None,
    details: dict[str, Any],
    source_ip: str | None,
    request_id: str | None,
) -> None:
    """Audit a WADO-RS retrieval of files (which scans, how many objects)."""
    con.run(
        RECORD_RETRIEVAL,
        reader=reader,
        token_hash=token_hash,
        scan_id=scan_id,
        details=json.dumps(details),
        source_ip=source_ip,
        request_id=request_id,
    )


# A scan and its instance in one statement (one implicit transaction: both or neither), as an upload
# of a DICOM image stores them. The instance's parameters are prefixed (di_) to keep them apart
# from the scan's DICOM index columns of the same names.
_PREFIXED_VALUES = re.sub(r":(\w+)", r":di_\1", _INSERT_VALUES).replace(":di_scan_id", "(SELECT id FROM s)")
INSERT_SCAN_WITH_INSTANCE = f"""
    WITH s AS ({INSERT_SCAN}),
    i AS (INSERT INTO dicom_instances ({_INSERT_COLUMNS}) SELECT {_PREFIXED_VALUES} FROM s RETURNING id)
    SELECT * FROM s
"""


def insert_scan_with_instance(con: Connection, *, scan: NewScan, instance: NewInstance) -> Scan | None:
    """insert_scan, with the scan's DICOMweb instance in the same statement; None when this owner
    already has a scan of the same bytes (then nothing is written). DuplicateSopInstance when the
    owner holds another file with this SOP Instance UID (then nothing is written either)."""
    return send_scan_with_instance(con, scan=scan, instance=instance).result()


def send_scan_with_instance(con: Connection, *, scan: NewScan, instance: NewInstance) -> PendingScan:
    """insert_scan_with_instance, sent without waiting for its answer (Connection.send): the
    server writes the scan while the caller goes on; PendingScan.result() answers as
    insert_scan_with_instance does. The statement is a transaction of its own."""
    params = scan_params(scan)
    instance_values = instance_params(
        instance, owner_id=scan.owner_id, scan_id=None, object_data=None, object_hash=None
    )
    params.update({f"di_{name}": value for name, value in instance_values.items() if name != "scan_id"})
    return PendingScan(con.send(INSERT_SCAN_WITH_INSTANCE, **params))


@dataclass(frozen=True)
class PendingScan:
    """An INSERT of a scan and its instance on its way (send_scan_with_instance)."""

    pending: Pending

    def result(self) -> Scan | None:
        """The scan stored; None when this owner already had these bytes; DuplicateSopInstance as
        insert_scan_with_instance raises it; a network error as the connection raised it."""
        try:
            rows = self.pending.result()
        except DatabaseError as exc:
            raise_duplicate_sop(exc)
            raise
        return scan_from_row(rows[0]) if rows else None


DELETE_REPLACED_SCAN = "DELETE FROM scans WHERE id = :scan_id AND owner_id = :owner_id"
DELETE_REPLACED_OBJECT = "DELETE FROM dicom_instances WHERE id = :id AND owner_id = :owner_id AND scan_id IS NULL"


def delete_stored(con: Connection, *, owner_id: int, stored: StoredInstance) -> None:
    """Delete an instance a new file replaces: its scan (and so its instance), or the object."""
    if stored.scan_id is not None:
        con.run(DELETE_REPLACED_SCAN, scan_id=stored.scan_id, owner_id=owner_id)
    else:
        con.run(DELETE_REPLACED_OBJECT, id=stored.id, owner_id=owner_id)


@dataclass(frozen=True)
class BulkRead:
    """One bulk data element of an instance: its bytes (None for an image in the S3 tier: read the
    range at `offset`), or status 404 (no such instance or element for this reader)."""

    reader: int | None
    status: int
    sha256: str | None = None
    storage: str | None = None
    offset: int = 0
    length: int = 0
    data: bytes | None = None


READ_BULK = """
    WITH reader AS (SELECT dicomweb_reader(CAST(:token_hash AS text), true) AS owner_id),
    found AS (
        SELECT i.id, i.scan_id, i.bulk_data -> CAST(:path AS text) AS span,
               COALESCE(sc.file_hash, i.object_hash) AS sha256, COALESCE(sc.original_storage, 'postgres') AS storage
        FROM dicom_instances i LEFT JOIN scans sc ON sc.id = i.scan_id
        WHERE i.owner_id = (SELECT owner_id FROM reader) AND i.study_instance_uid = :study_uid
          AND i.series_instance_uid = :series_uid AND i.sop_instance_uid = :sop_uid
          AND i.bulk_data ? CAST(:path AS text)
    ),
    audit AS (
        INSERT INTO audit_events (user_id, action, scan_id, via, status, source_ip, request_id, details)
        SELECT owner_id, 'dicomweb.retrieve', (SELECT scan_id FROM found),
               CASE WHEN EXISTS (SELECT FROM sessions s WHERE s.token_hash = CAST(:token_hash AS text))
                    THEN 'token' ELSE 'viewer_token' END,
               CASE WHEN EXISTS (SELECT FROM found) THEN 200 ELSE 404 END,
               CAST(:source_ip AS text), CAST(:request_id AS text),
               jsonb_build_object('level', 'bulkdata', 'instances', (SELECT count(*) FROM found))
        FROM reader WHERE owner_id IS NOT NULL
    )
    SELECT (SELECT owner_id FROM reader), f.sha256, f.storage,
           CAST(f.span ->> 0 AS bigint), CAST(f.span ->> 1 AS bigint),
           CASE WHEN f.storage = 'postgres' THEN
               (SELECT substring(CASE WHEN i.scan_id IS NULL THEN i.object_data ELSE sc.original_image_data END
                                 FROM CAST(f.span ->> 0 AS integer) + 1 FOR CAST(f.span ->> 1 AS integer))
                FROM dicom_instances i LEFT JOIN scans sc ON sc.id = i.scan_id WHERE i.id = f.id)
           END
    FROM (SELECT 1) one LEFT JOIN found f ON true
"""


def read_bulk(
    con: Connection,
    *,
    token_hash: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    path: str,
    source_ip: str | None,
    request_id: str | None,
) -> BulkRead:
    """One bulk data element of an instance by its path (as its BulkDataURI names it), audited."""
    params = {
        "token_hash": token_hash,
        "study_uid": study_uid,
        "series_uid": series_uid,
        "sop_uid": sop_uid,
        "path": path,
        "source_ip": source_ip,
        "request_id": request_id,
    }
    reader, sha256, storage, offset, length, data = con.run_with_raw_bytes(
        READ_BULK, params, column_count=6, raw_column=5
    )[0]
    if reader is None:
        return BulkRead(None, 401)
    if sha256 is None:
        return BulkRead(int(reader), 404)
    return BulkRead(int(reader), 200, str(sha256).strip(), storage, int(offset), int(length), data)


@dataclass(frozen=True)
class Thumbnail:
    """The stored thumbnail (JPEG) standing for a study, series or instance: its middle image's.
    `data` is None for one in the S3 tier (read it by `sha256`) or when there is no image (scan_id None)."""

    reader: int | None
    scan_id: str | None
    sha256: str | None = None
    storage: str | None = None
    data: bytes | None = None


# The representative image of a study or series: the middle one in reading order, as a viewer's
# series thumbnail shows it. Objects (no scan) have no renderings and are never chosen. Audited.
READ_THUMBNAIL = """
    WITH reader AS (SELECT dicomweb_reader(CAST(:token_hash AS text), true) AS owner_id),
    images AS (
        SELECT i.scan_id, row_number() OVER (ORDER BY i.series_instance_uid,
                   COALESCE(i.instance_number, 2147483647), i.sop_instance_uid) AS n, count(*) OVER () AS total
        FROM dicom_instances i
        WHERE i.owner_id = (SELECT owner_id FROM reader) AND i.scan_id IS NOT NULL
          AND i.study_instance_uid = CAST(:study_uid AS text)
          AND (CAST(:series_uid AS text) IS NULL OR i.series_instance_uid = CAST(:series_uid AS text))
          AND (CAST(:sop_uid AS text) IS NULL OR i.sop_instance_uid = CAST(:sop_uid AS text))
    ),
    chosen AS (SELECT scan_id FROM images WHERE n = (total + 1) / 2),
    audit AS (
        INSERT INTO audit_events (user_id, action, scan_id, image_type, via, status, source_ip, request_id, details)
        SELECT owner_id, 'dicomweb.retrieve', (SELECT scan_id FROM chosen), 'thumbnail',
               CASE WHEN EXISTS (SELECT FROM sessions s WHERE s.token_hash = CAST(:token_hash AS text))
                    THEN 'token' ELSE 'viewer_token' END,
               CASE WHEN EXISTS (SELECT FROM chosen) THEN 200 ELSE 404 END,
               CAST(:source_ip AS text), CAST(:request_id AS text), jsonb_build_object('level', 'thumbnail')
        FROM reader WHERE owner_id IS NOT NULL
    )
    SELECT (SELECT owner_id FROM reader), c.scan_id, sc.thumbnail_hash, sc.thumbnail_storage,
           CASE WHEN sc.thumbnail_storage = 'postgres' THEN sc.thumbnail_image_data END
    FROM (SELECT 1) one LEFT JOIN chosen c ON true LEFT JOIN scans sc ON sc.id = c.scan_id
"""


def read_thumbnail(
    con: Connection,
    *,
    token_hash: str,
    study_uid: str,
    series_uid: str | None,
    sop_uid: str | None,
    source_ip: str | None,
    request_id: str | None,
) -> Thumbnail:
    """The thumbnail standing for a study, series or instance of the reader, audited."""
    params = {
        "token_hash": token_hash,
        "study_uid": study_uid,
        "series_uid": series_uid,
        "sop_uid": sop_uid,
        "source_ip": source_ip,
        "request_id": request_id,
    }
    reader, scan_id, sha256, storage, data = con.run_with_raw_bytes(
        READ_THUMBNAIL, params, column_count=5, raw_column=4
    )[0]
    if reader is None:
        return Thumbnail(None, None)
    return Thumbnail(int(reader), scan_id, None if sha256 is None else str(sha256).strip(), storage, data)


@dataclass(frozen=True)
class Deleted:
    """What a DICOMweb DELETE removed: instances in all, and how many of them were scans."""

    instances: int
    scans: int


def delete_resource(
    con: Connection,
    *,
    owner_id: int,
    study_uid: str,
    series_uid: str | None,
    sop_uid: str | None,
    source_ip: str | None,
    request_id: str | None,
    outcome_key: str | None = None,
) -> Deleted:
    """Delete every instance of this owner's study, series or instance, audited, in one statement:
    an image's scan row (its instance goes with it, ON DELETE CASCADE; the cleanup job removes an S3
    original nobody references any more), any other object's row. Nothing of another owner's. With
    `outcome_key` (db.call_once), the answer is recorded there too: replay_delete_resource answers it."""
    params: dict[str, Any] = {"owner_id": owner_id, "source_ip": source_ip, "request_id": request_id}
    where = _resource_where(study_uid, series_uid, sop_uid, params)
    params["level"] = "instance" if sop_uid else "series" if series_uid else "study"
    sql = f"""
        WITH targets AS (
            SELECT i.id, i.scan_id FROM dicom_instances i WHERE i.owner_id = :owner_id AND {where}
        ),
        scans_gone AS (
            DELETE FROM scans s WHERE s.owner_id = :owner_id AND s.id IN (SELECT scan_id FROM targets)
            RETURNING s.id
        ),
        objects_gone AS (
            DELETE FROM dicom_instances i
            WHERE i.owner_id = :owner_id AND i.id IN (SELECT id FROM targets WHERE scan_id IS NULL)
            RETURNING i.id
        ),
        audit AS (
            INSERT INTO audit_events (user_id, action, scan_id, via, status, source_ip, request_id, details)
            SELECT :owner_id, 'dicomweb.delete',
                   CASE WHEN (SELECT count(*) FROM scans_gone) = 1 THEN (SELECT min(id) FROM scans_gone) END,
                   'token', CASE WHEN EXISTS (SELECT FROM targets) THEN 204 ELSE 404 END,
                   CAST(:source_ip AS text), CAST(:request_id AS text),
                   jsonb_build_object(
                       'level', CAST(:level AS text),
                       'instances', (SELECT count(*) FROM targets),
                       'scans', (SELECT COALESCE(jsonb_agg(id ORDER BY id), '[]') FROM
                                 (SELECT id FROM scans_gone ORDER BY id LIMIT 1000) first_scans),
                       'objects', (SELECT count(*) FROM objects_gone))
        ),
        outcome AS (
            INSERT INTO request_outcomes (key, result)
            SELECT CAST(:outcome_key AS uuid),
                   jsonb_build_object('instances', (SELECT count(*) FROM targets),
                                      'scans', (SELECT count(*) FROM scans_gone))
            WHERE CAST(:outcome_key AS uuid) IS NOT NULL
        )
        SELECT (SELECT count(*) FROM targets), (SELECT count(*) FROM scans_gone)
    """
    instances_count, scans_count = con.run(sql, **params, outcome_key=outcome_key)[0]
    return Deleted(int(instances_count), int(scans_count))


def replay_delete_resource(con: Connection, outcome: dict[str, Any]) -> Deleted:
    """What a delete_resource that committed answered (db.call_once)."""
    return Deleted(int(outcome["instances"]), int(outcome["scans"]))
