"""Uploads past 4.5 MB: a presigned S3 POST to a staging key, then completing it like /analyze.

API Gateway and Lambda take at most 6 MB a request, so a larger file goes from the client straight
to the images bucket. create_upload records an upload (table uploads, migration 008) and answers a
presigned POST for `uploads/<upload_id>`: the key is ours, never from the file name; the policy
holds the exact key, a content-length-range up to the declared size, signature v4 and a short
expiry. complete_upload reads the staged file once, streamed to /tmp while it is hashed, and then
does what /analyze does (shared/scans/uploads.py): this owner's scan of the same bytes is the answer, else
the file is analyzed and stored. An original for the S3 tier is copied within the bucket from the
staging key (server side, verified by SHA-256) before the transaction that inserts the scan and
deletes the upload row, holding no lock while S3 copies (uploads.write_objects); a smaller one
goes to PostgreSQL as a direct upload's would.

The staging object is deleted after that commit. Until then its key is on the orphan list (recorded
in the same transaction as the row's delete), so a crash in between leaves a key the cleanup job
knows about; an upload never completed keeps its row until it expires, and the cleanup job deletes
both (and the bucket's lifecycle rule expires uploads/ after two days, should it miss one).

Memory: the file is read from /tmp into memory once (the image decoders take bytes; a DICOM file's
pixel data is a second copy while it is decoded), about 2x the file plus one decoded frame: ~1.1 GB
for a 500 MB file, within the upload function's 3008 MB. A duplicate is never read into memory.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from shared import db, imaging, storage
from shared.core.errors import (
    DirectUploadUnavailable,
    DuplicateSopInstance,
    InvalidImage,
    ObjectMissing,
    StorageUnavailable,
    UploadIncomplete,
    UploadNotFound,
    UploadTooLarge,
)
from shared.db import audit, instances
from shared.scans import instances as dicom_instances
from shared.scans import uploads

log = logging.getLogger(__name__)

UPLOAD_ID_PREFIX = "upl_"
UPLOAD_KEY_PREFIX = "uploads/"
# How long the presigned POST (and so the upload) is valid: enough to send 500 MB on a slow line
# (~4.5 Mbit/s), short enough that a leaked policy is soon worthless. Complete before it, too.
UPLOAD_TTL_SECONDS = 15 * 60


@dataclass(frozen=True)
class PresignedUpload:
    """What the client needs to post its file: where, with which form fields, until when, how much."""

    upload_id: str
    url: str
    fields: dict[str, str]
    expires_at: datetime
    max_bytes: int


def upload_key(upload_id: str) -> str:
    """The staging key of an upload's file in the images bucket."""
    return UPLOAD_KEY_PREFIX + upload_id


def _object_store() -> storage.ObjectStore:
    store = storage.object_store()
    if store is None:
        raise DirectUploadUnavailable(
            "Uploads through the images bucket are not available here (no IMAGES_BUCKET): "
            "POST the file to /api/v1/scans/analyze instead."
        )
    return store


# ---------------------------------------------------------------- create


def create_upload(
    *, owner_id: int, filename: str, size: int, content_type: str | None, max_direct_upload_bytes: int
) -> PresignedUpload:
    """Record an upload and presign the POST of its file; UploadTooLarge past MAX_DIRECT_UPLOAD_BYTES."""
    store = _object_store()
    if size > max_direct_upload_bytes:
        raise UploadTooLarge(f"The file is larger than the {max_direct_upload_bytes:,}-byte limit.")
    upload_id = UPLOAD_ID_PREFIX + secrets.token_urlsafe(18)
    expires_at = datetime.now(UTC) + timedelta(seconds=UPLOAD_TTL_SECONDS)
    # Bound to the declared size, not to MAX_DIRECT_UPLOAD_BYTES: a client that declares 1 MB cannot
    # stage 500 MB (our memory, time and bucket), and complete_upload expects what was declared.
    url, fields = _presigned_post(store, upload_key(upload_id), max_bytes=size, content_type=content_type)
    db.call(
        db.insert_upload,
        upload_id=upload_id,
        owner_id=owner_id,
        filename=filename,
        max_bytes=size,
        expires_at=expires_at,
    )
    return PresignedUpload(upload_id, url, fields, expires_at, size)


def _presigned_post(
    store: storage.ObjectStore, key: str, *, max_bytes: int, content_type: str | None
) -> tuple[str, dict[str, str]]:
    """Sign a POST policy (signature v4: the store's client is s3v4) for exactly this key and size range.

    boto3 adds the bucket, the exact key and the x-amz-algorithm, -credential and -date conditions.
    Signing is local: no request goes to S3.
    """
    conditions: list[Any] = [["content-length-range", 1, max_bytes]]
    fields: dict[str, str] = {}
    if content_type is not None:
        conditions.append({"Content-Type": content_type})
        fields["Content-Type"] = content_type
    return store.presigned_post(key, conditions=conditions, fields=fields, seconds=UPLOAD_TTL_SECONDS)


# ---------------------------------------------------------------- complete


def complete_upload(
    *,
    owner_id: int,
    upload_id: str,
    max_pixels: int,
    dense_hu_threshold: float,
    origin: audit.Origin = audit.NOWHERE,
) -> uploads.StoredUpload:
    """Analyze and store a posted upload, or return this owner's scan of the same bytes (as store_upload).

    UploadNotFound: no such upload of this owner, or expired. UploadIncomplete: no file posted yet.
    UploadTooLarge: the file is over the declared size (it is deleted; post it again). InvalidImage:
    not an image we accept (the upload and its file are deleted). StorageUnavailable: S3 failed (the
    upload stays: complete it again).
    """
    store = _object_store()
    upload = db.call(_get_upload, owner_id=owner_id, upload_id=upload_id)
    key = upload_key(upload_id)
    staged = store.size_of(key)
    if staged is None:
        raise UploadIncomplete(
            "No file has been posted for this upload yet: POST it to the upload's url with its fields, then complete."
        )
    if staged > upload.max_bytes:
        store.delete(key)
        raise UploadTooLarge(f"The posted file is larger than the {upload.max_bytes:,} bytes declared; post it again.")
    with tempfile.TemporaryFile(prefix="ctscan-upload-") as spool:
        file_hash = _download(store, key, spool, max_bytes=upload.max_bytes)
        existing = db.call(db.find_scan_by_hash, owner_id=owner_id, file_hash=file_hash)
        if existing is not None:
            _retire(store, owner_id=owner_id, upload_id=upload_id)
            return uploads.StoredUpload(existing, duplicate=True)
        spool.seek(0)
        data = spool.read()
    try:
        if not data:
            raise InvalidImage("The uploaded file is empty.")
        analyzed = imaging.analyze_upload(data, max_pixels=max_pixels, dense_hu_threshold=dense_hu_threshold)
        record = dicom_instances.describe(data) if analyzed.dicom is not None else None
        conflict = (
            None
            if record is None
            else dicom_instances.check_duplicate_sop(owner_id=owner_id, record=record, file_hash=file_hash)
        )
    except (InvalidImage, DuplicateSopInstance):
        _retire(store, owner_id=owner_id, upload_id=upload_id)
        raise
    scan = uploads.new_scan_in_tiers(
        owner_id=owner_id, filename=upload.filename, data=data, file_hash=file_hash, analyzed=analyzed
    )
    instance = None if record is None else dicom_instances.new_instance(record)
    if scan.in_s3:  # under no lock: the copy from the staging key may take a while
        uploads.write_objects(scan, original_source_key=key)
    # db.call_once: a retry after a lost reply answers what the first attempt stored, where running
    # it again would find the upload gone (404).
    stored, duplicate = db.call_once(
        _insert_completed,
        replay=_replay_completed,
        scan=scan,
        upload_id=upload_id,
        instance=instance,
        conflict=conflict,
        origin=origin,
    )
    _delete_staged(store, key)
    return uploads.StoredUpload(stored, duplicate=duplicate)


def _get_upload(con: db.Connection, *, owner_id: int, upload_id: str) -> db.StagedUpload:
    upload = db.get_upload(con, upload_id=upload_id, owner_id=owner_id)
    if upload is None:
        raise UploadNotFound("No upload with this id (or it has expired).")
    return upload


def _download(store: storage.ObjectStore, key: str, into: IO[bytes], *, max_bytes: int) -> str:
    """Stream the staged file into `into` in 1 MB chunks; its SHA-256 (hex)."""
    digest, size = hashlib.sha256(), 0
    try:
        for chunk in store.chunks(key):
            size += len(chunk)
            if size > max_bytes:  # replaced after the head by a larger one
                break
            digest.update(chunk)
            into.write(chunk)
    except ObjectMissing:
        raise UploadIncomplete("The upload's file is no longer in the bucket: post it again.") from None
    if size > max_bytes:
        store.delete(key)
        raise UploadTooLarge(f"The posted file is larger than the {max_bytes:,} bytes declared; post it again.")
    return digest.hexdigest()


def _insert_completed(
    con: db.Connection,
    *,
    scan: db.NewScan,
    upload_id: str,
    instance: instances.NewInstance | None,
    conflict: dicom_instances.Conflict | None,
    origin: audit.Origin,
    outcome_key: str,
) -> tuple[db.Scan, bool]:
    """One transaction: take the upload (its row goes, its staging key onto the orphan list) and
    insert the scan (its S3 objects already written, the original copied from the staging key), and
    record the outcome under the call's key (db.call_once). (scan, duplicate)."""
    source_key = upload_key(upload_id)
    scan_keys = uploads.s3_keys(scan)
    with db.transaction(con):
        # One sorted lock call: the same order as every other holder of these keys.
        storage.lock_keys(con, [*scan_keys, source_key])
        if not db.delete_upload(con, upload_id=upload_id, owner_id=scan.owner_id):
            raise UploadNotFound("No upload with this id (or it was completed meanwhile).")
        storage.record_orphans(con, [source_key])
        if conflict is not None:
            dicom_instances.remove_replaced(con, owner_id=scan.owner_id, conflict=conflict, origin=origin)
        if scan.in_s3:  # its objects are written (complete_upload): the row refers to them
            stored = uploads.insert_scan_referring_to_objects(con, scan=scan, instance=instance)
        elif instance is not None:
            stored = instances.insert_scan_with_instance(con, scan=scan, instance=instance)
        else:
            stored = db.insert_scan(con, scan=scan)
        if stored is not None:
            uploads.record_stored(con, stored, outcome_key=outcome_key, duplicate=False)
            return stored, False
        # A concurrent upload of the same file by the same owner won the unique index.
        winner = db.find_scan_by_hash(con, owner_id=scan.owner_id, file_hash=scan.file_hash)
        if winner is None:
            # ... and was deleted at once: roll back (the upload stays) and let the client retry.
            raise UploadIncomplete("The same file was stored and deleted meanwhile: complete the upload again.")
        uploads.record_stored(con, winner, outcome_key=outcome_key, duplicate=True)
        return winner, True


def _replay_completed(con: db.Connection, outcome: dict[str, Any]) -> tuple[db.Scan, bool]:
    stored = uploads.replay_stored(con, outcome)
    if stored is None:
        raise AssertionError("a completed upload records the scan it resolved to")
    return stored, bool(outcome["duplicate"])


def _retire(store: storage.ObjectStore, *, owner_id: int, upload_id: str) -> None:
    """Delete an upload that ends without a new scan (a duplicate, an invalid image): its row, then its file."""
    db.call(_delete_upload, owner_id=owner_id, upload_id=upload_id)
    _delete_staged(store, upload_key(upload_id))


def _delete_upload(con: db.Connection, *, owner_id: int, upload_id: str) -> None:
    key = upload_key(upload_id)
    with db.transaction(con):
        storage.lock_keys(con, [key])
        db.delete_upload(con, upload_id=upload_id, owner_id=owner_id)
        storage.record_orphans(con, [key])


def _delete_staged(store: storage.ObjectStore, key: str) -> None:
    """Delete a staging object whose upload row is gone, then its orphan entry. If S3 fails, the
    entry stays and the cleanup job deletes the object: the scan is stored either way."""
    try:
        store.delete(key)
    except StorageUnavailable:
        log.warning("staging object left for the cleanup job")
        return
    db.call(storage.forget_orphans, keys=[key])
