"""Storing an upload: hash, per-owner dedup, analysis, and one atomic insert.

A DICOM upload is also a DICOMweb instance (shared.scans.instances): its index and description go in
with the scan, in the same statement or transaction, under the duplicate SOP Instance UID rule.
Only the upload function imports this module (it pulls in Pillow and numpy via shared.imaging).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from pg8000.exceptions import DatabaseError, InterfaceError

from shared import db, imaging, storage
from shared.core.config import get_settings
from shared.core.errors import DuplicateSopInstance
from shared.db import audit, instances
from shared.dicom import InstanceRecord
from shared.scans import instances as dicom_instances
from shared.scans.public import new_scan_id


@dataclass(frozen=True)
class StoredUpload:
    """The scan an upload resolved to, and whether this owner already had it."""

    scan: db.Scan
    duplicate: bool


def store_upload(
    *,
    owner_id: int,
    filename: str,
    data: bytes,
    max_pixels: int,
    dense_hu_threshold: float,
    origin: audit.Origin = audit.NOWHERE,
    described: InstanceRecord | None = None,
) -> StoredUpload:
    """Analyze and store an upload, or return this owner's existing scan of the same bytes.
    `described`: the file's DICOMweb description, when the caller made it already (STOW-RS does).

    DuplicateSopInstance when it is a DICOM file with a SOP Instance UID the owner holds in other
    bytes, under DUPLICATE_SOP_POLICY=reject (under overwrite, it replaces that instance).
    """
    file_hash = hashlib.sha256(data).hexdigest()
    existing = db.call(db.find_scan_by_hash, owner_id=owner_id, file_hash=file_hash)
    if existing is not None:
        return StoredUpload(existing, duplicate=True)
    return store_prepared(
        prepare_upload(
            owner_id=owner_id,
            filename=filename,
            data=data,
            file_hash=file_hash,
            max_pixels=max_pixels,
            dense_hu_threshold=dense_hu_threshold,
            origin=origin,
            described=described,
        )
    )


@dataclass(frozen=True)
class PreparedUpload:
    """An upload analysed and rendered, its row and DICOMweb instance made: what is left is to
    write it (store_prepared, or send_prepared)."""

    owner_id: int
    filename: str
    data: bytes
    file_hash: str
    max_pixels: int
    dense_hu_threshold: float
    origin: audit.Origin
    record: InstanceRecord | None  # the DICOMweb description (None: not an instance)
    new_scan: db.NewScan
    check_first: bool
    conflict: dicom_instances.Conflict | None
    instance: instances.NewInstance | None


def prepare_upload(
    *,
    owner_id: int,
    filename: str,
    data: bytes,
    file_hash: str,
    max_pixels: int,
    dense_hu_threshold: float,
    origin: audit.Origin = audit.NOWHERE,
    described: InstanceRecord | None = None,
) -> PreparedUpload:
    """Analyse, render and describe an upload the owner's scans were found not to hold (the upload
    route asks that with the token's owner, in one round trip; STOW-RS for a whole request), ready
    to write (InvalidImage when it cannot be analysed). A concurrent upload of the same bytes can
    still win: store_prepared then answers with its scan, as a duplicate."""
    analyzed = imaging.analyze_upload(data, max_pixels=max_pixels, dense_hu_threshold=dense_hu_threshold)
    record = None
    if analyzed.dicom is not None:
        record = described if described is not None else dicom_instances.describe(data)
    new_scan = new_scan_in_tiers(
        owner_id=owner_id, filename=filename, data=data, file_hash=file_hash, analyzed=analyzed
    )
    # Under DUPLICATE_SOP_POLICY=reject (the default) the INSERT's own unique index on the owner's
    # SOP Instance UIDs refuses a second file under a held UID, writing nothing: a lookup before it
    # would cost every DICOM upload a round trip to the database. It still comes first where it
    # decides something before the INSERT: which instance to replace (overwrite), and whether to put
    # objects in S3 at all (the S3 tier).
    check_first = bool(new_scan.in_s3) or get_settings().duplicate_sop_policy != "reject"
    conflict = (
        dicom_instances.check_duplicate_sop(owner_id=owner_id, record=record, file_hash=file_hash)
        if record is not None and check_first
        else None
    )
    return PreparedUpload(
        owner_id=owner_id,
        filename=filename,
        data=data,
        file_hash=file_hash,
        max_pixels=max_pixels,
        dense_hu_threshold=dense_hu_threshold,
        origin=origin,
        record=record,
        new_scan=new_scan,
        check_first=check_first,
        conflict=conflict,
        instance=None if record is None else dicom_instances.new_instance(record),
    )


def store_prepared(prepared: PreparedUpload) -> StoredUpload:
    """Write a prepared upload and answer with its scan, or with the winner of a concurrent upload
    of the same bytes (a duplicate). DuplicateSopInstance as store_upload raises it."""
    try:
        scan = store_new_scan(
            scan=prepared.new_scan, instance=prepared.instance, conflict=prepared.conflict, origin=prepared.origin
        )
    except DuplicateSopInstance:
        _name_the_holder(prepared)
        raise
    return _settle(prepared, scan)


def send_prepared(prepared: PreparedUpload) -> PendingUpload | None:
    """Send a prepared upload's INSERT without waiting for it (Connection.send), so that the caller
    can prepare the next one while the database writes this one (STOW-RS does); PendingUpload.finish()
    answers as store_prepared does. Only for the one-statement write (a DICOM instance, its images in
    PostgreSQL, no instance to replace, DUPLICATE_SOP_POLICY=reject); None otherwise: store_prepared."""
    if prepared.instance is None or prepared.check_first:  # (a conflict is only looked up first)
        return None
    pending = db.call(instances.send_scan_with_instance, scan=prepared.new_scan, instance=prepared.instance)
    return PendingUpload(prepared, pending)


@dataclass(frozen=True)
class PendingUpload:
    """A prepared upload whose INSERT is on its way (send_prepared)."""

    prepared: PreparedUpload
    pending: instances.PendingScan

    def finish(self) -> StoredUpload:
        """Read the INSERT's answer: as store_prepared answers."""
        try:
            scan = self.pending.result()
        except DuplicateSopInstance:
            _name_the_holder(self.prepared)
            raise
        except (DatabaseError, InterfaceError, OSError):
            # Any other error of the statement, or the connection lost with the INSERT on its way
            # (committed or not): written again as store_prepared writes it, which is safe to retry
            # (the scan's id is the upload's own) and reports errors as every upload does.
            return store_prepared(self.prepared)
        return _settle(self.prepared, scan)


def _name_the_holder(prepared: PreparedUpload) -> None:
    if prepared.record is not None and not prepared.check_first:
        # The refusal names the file that holds the UID, as the lookup's would (a round trip on
        # this path only); the same bytes stored as a DICOMweb object keep the index's message.
        dicom_instances.check_duplicate_sop(
            owner_id=prepared.owner_id, record=prepared.record, file_hash=prepared.file_hash
        )


def _settle(prepared: PreparedUpload, scan: db.Scan | None) -> StoredUpload:
    if scan is not None:
        return StoredUpload(scan, duplicate=False)
    # A concurrent upload of the same file by the same owner won the unique index; or, with our
    # own id, our first attempt did (its reply was lost and the retry found our row).
    winner = db.call(db.find_scan_by_hash, owner_id=prepared.owner_id, file_hash=prepared.file_hash)
    if winner is not None and winner.id == prepared.new_scan.id:
        return StoredUpload(winner, duplicate=False)
    if winner is None:  # it was deleted in between: store ours after all
        return store_upload(
            owner_id=prepared.owner_id,
            filename=prepared.filename,
            data=prepared.data,
            max_pixels=prepared.max_pixels,
            dense_hu_threshold=prepared.dense_hu_threshold,
            origin=prepared.origin,
            described=prepared.record,
        )
    return StoredUpload(winner, duplicate=True)


def store_new_scan(
    *,
    scan: db.NewScan,
    instance: instances.NewInstance | None,
    conflict: dicom_instances.Conflict | None = None,
    origin: audit.Origin = audit.NOWHERE,
) -> db.Scan | None:
    """Write a new scan whole (its images in their tiers, its DICOMweb instance), replacing the
    conflicting instance in the same transaction; None when the owner already has these bytes.

    Safe to retry (db.call_once): a transaction records the scan it stored under the call's key,
    and a retry after a lost reply answers that scan. A single INSERT records nothing: its retry
    meets its own row in the unique index (None here), and the scan's id, made once per upload,
    tells the caller that row is its own (store_upload).
    """
    if scan.in_s3:
        write_objects(scan)
    return db.call_once(
        _store_new_scan, replay=replay_stored, scan=scan, instance=instance, conflict=conflict, origin=origin
    )


def _store_new_scan(
    con: db.Connection,
    *,
    outcome_key: str,
    scan: db.NewScan,
    instance: instances.NewInstance | None,
    conflict: dicom_instances.Conflict | None,
    origin: audit.Origin,
) -> db.Scan | None:
    if scan.in_s3:
        return insert_scan_with_objects(
            con, scan=scan, instance=instance, conflict=conflict, origin=origin, outcome_key=outcome_key
        )
    if conflict is not None:
        with db.transaction(con):
            dicom_instances.remove_replaced(con, owner_id=scan.owner_id, conflict=conflict, origin=origin)
            return record_stored(con, _insert_row(con, scan=scan, instance=instance), outcome_key=outcome_key)
    if instance is not None:
        # One statement is one implicit transaction: the row, its images and its instance, or nothing.
        return instances.insert_scan_with_instance(con, scan=scan, instance=instance)
    return db.insert_scan(con, scan=scan)


def record_stored(
    con: db.Connection, stored: db.Scan | None, *, outcome_key: str | None, **extra: bool
) -> db.Scan | None:
    """Record, in the caller's transaction, which scan this write stored (None: the owner had it)."""
    if outcome_key is not None:
        scan_id, owner_id = (None, None) if stored is None else (stored.id, stored.owner_id)
        db.record_outcome(con, key=outcome_key, result={"scan_id": scan_id, "owner_id": owner_id, **extra})
    return stored


def replay_stored(con: db.Connection, outcome: dict[str, Any]) -> db.Scan | None:
    """The scan a write that committed had stored (record_stored), as it is now."""
    if outcome["scan_id"] is None:
        return None
    return db.get_scan(con, scan_id=outcome["scan_id"], owner_id=outcome["owner_id"])


def _insert_row(con: db.Connection, *, scan: db.NewScan, instance: instances.NewInstance | None) -> db.Scan | None:
    if instance is None:
        return db.insert_scan(con, scan=scan)
    return instances.insert_scan_with_instance(con, scan=scan, instance=instance)


def new_scan_in_tiers(
    *, owner_id: int, filename: str, data: bytes, file_hash: str, analyzed: imaging.AnalyzedScan
) -> db.NewScan:
    """The row an analyzed upload makes, each image marked for the tier its size puts it in."""
    new_scan = _new_scan(owner_id=owner_id, filename=filename, data=data, file_hash=file_hash, analyzed=analyzed)
    settings = get_settings()
    return dataclasses.replace(
        new_scan,
        in_s3=frozenset(
            kind for kind, image in _images(new_scan) if storage.tier_for(len(image.data), settings) == storage.S3
        ),
    )


@dataclass(frozen=True)
class _Image:
    data: bytes
    sha256: str
    content_type: str


def _images(scan: db.NewScan) -> list[tuple[db.ImageType, _Image]]:
    return [
        (db.ImageType.original, _Image(scan.original, scan.file_hash, scan.content_type)),
        (db.ImageType.preview, _Image(scan.preview, scan.preview_hash, "image/jpeg")),
        (db.ImageType.annotated, _Image(scan.annotated, scan.annotated_hash, "image/jpeg")),
        (db.ImageType.thumbnail, _Image(scan.thumbnail, scan.thumbnail_hash, "image/jpeg")),
    ]


def insert_scan_with_objects(
    con: db.Connection,
    *,
    scan: db.NewScan,
    instance: instances.NewInstance | None = None,
    conflict: dicom_instances.Conflict | None = None,
    origin: audit.Origin = audit.NOWHERE,
    outcome_key: str | None = None,
) -> db.Scan | None:
    """insert_scan for a scan with images in the S3 tier (scan.in_s3), once write_objects(scan) has
    written them: one short transaction holds the keys' locks, inserts the row and takes the keys off
    the orphan list. None, as insert_scan, when this owner already has the file: its keys stay
    listed, and the cleanup job drops them, as that scan refers to them."""
    with db.transaction(con):
        if conflict is not None:
            dicom_instances.remove_replaced(con, owner_id=scan.owner_id, conflict=conflict, origin=origin)
        stored = insert_scan_referring_to_objects(con, scan=scan, instance=instance)
        return record_stored(con, stored, outcome_key=outcome_key)


def s3_keys(scan: db.NewScan) -> list[str]:
    """The bucket keys of the scan's images in the S3 tier (scan.in_s3), sorted."""
    return sorted(
        {storage.object_key(scan.owner_id, image.sha256) for kind, image in _images(scan) if kind in scan.in_s3}
    )


def write_objects(scan: db.NewScan, *, original_source_key: str | None = None) -> None:
    """Write the scan's images in the S3 tier (scan.in_s3) to the bucket, holding no lock and no
    transaction while S3 works (a slow PUT blocks nothing else; its time comes out of the
    invocation's budget).

    First, in a short transaction of their own under the keys' locks, the keys go on the orphan list
    (or have their `since` refreshed there), committed: from then on the cleanup job leaves them
    alone for its grace period (an hour, far past any function's timeout), and a failure or a kill
    leaves nothing it does not know about. Under the lock, because the cleanup job decides under it:
    a job that holds it has finished with the key (deleted the old object and its row) before this
    write begins, and a job that comes after sees the fresh `since`. S3 checks each object against
    its SHA-256.

    original_source_key: a bucket key already holding the original's bytes (a presigned upload's
    staging object, shared/scans/direct_uploads.py). The original is then copied from it server side
    (ObjectStore.copy verifies its SHA-256) instead of put from scan.original, whose length alone is
    used (for the size column).
    """
    store = storage.object_store()
    if store is None:
        raise AssertionError("images in the S3 tier need IMAGES_BUCKET")
    objects = {
        storage.object_key(scan.owner_id, image.sha256): (kind, image)
        for kind, image in _images(scan)
        if kind in scan.in_s3
    }
    db.call(_reserve_keys, keys=sorted(objects))
    for key, (kind, image) in objects.items():
        if kind == db.ImageType.original and original_source_key is not None:
            store.copy(original_source_key, key, content_type=image.content_type, sha256=image.sha256)
        else:
            store.put(key, image.data, content_type=image.content_type, sha256=image.sha256)


def _reserve_keys(con: db.Connection, *, keys: list[str]) -> None:
    with db.transaction(con):
        storage.lock_keys(con, keys)
        storage.record_orphans(con, keys)


def insert_scan_referring_to_objects(
    con: db.Connection, *, scan: db.NewScan, instance: instances.NewInstance | None = None
) -> db.Scan | None:
    """In the caller's transaction, once write_objects(scan) has written the objects: lock the keys,
    insert the row, take the keys off the orphan list. The locks are held from here to the commit
    only: no S3 call happens under them."""
    keys = s3_keys(scan)
    storage.lock_keys(con, keys)
    stored = _insert_row(con, scan=scan, instance=instance)
    if stored is not None:
        storage.forget_orphans(con, keys)
    return stored


def _new_scan(
    *, owner_id: int, filename: str, data: bytes, file_hash: str, analyzed: imaging.AnalyzedScan
) -> db.NewScan:
    dicom = analyzed.dicom
    if dicom is not None:
        # A NaN or infinite position would sort unpredictably in a series: treat it as absent.
        dicom = dataclasses.replace(
            dicom,
            slice_position=_finite(dicom.slice_position),
            slice_thickness_mm=_finite(dicom.slice_thickness_mm),
        )
    return db.NewScan(
        id=new_scan_id(),
        owner_id=owner_id,
        filename=filename,
        content_type=analyzed.content_type,
        width=analyzed.width,
        height=analyzed.height,
        results_json=json.dumps(analyzed.results),
        original=data,
        preview=analyzed.preview_jpeg,
        annotated=analyzed.annotated_jpeg,
        thumbnail=analyzed.thumbnail_jpeg,
        file_hash=file_hash,
        preview_hash=hashlib.sha256(analyzed.preview_jpeg).hexdigest(),
        annotated_hash=hashlib.sha256(analyzed.annotated_jpeg).hexdigest(),
        thumbnail_hash=hashlib.sha256(analyzed.thumbnail_jpeg).hexdigest(),
        dicom=dicom,
    )


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value
