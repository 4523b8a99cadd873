"""Storing an upload: hash, per-owner dedup, analysis, and one transactional insert.

Only the upload function imports this module (it pulls in Pillow and numpy via shared.imaging).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from shared import db, imaging
from shared.scans import new_scan_id


@dataclass(frozen=True)
class StoredUpload:
    """The scan an upload resolved to, and whether this owner already had it."""

    scan: db.Scan
    duplicate: bool


def store_upload(*, owner_id: int, filename: str, data: bytes, max_pixels: int) -> StoredUpload:
    """Analyze and store an upload, or return this owner's existing scan of the same bytes."""
    file_hash = hashlib.sha256(data).hexdigest()
    existing = db.call(db.find_scan_by_hash, owner_id=owner_id, file_hash=file_hash)
    if existing is not None:
        return StoredUpload(existing, duplicate=True)

    analyzed = imaging.analyze_scan(data, max_pixels=max_pixels)
    scan = db.call(
        _insert,
        scan_id=new_scan_id(),
        owner_id=owner_id,
        filename=filename,
        data=data,
        file_hash=file_hash,
        analyzed=analyzed,
    )
    if scan is not None:
        return StoredUpload(scan, duplicate=False)
    # A concurrent upload of the same file by the same owner won the unique index.
    winner = db.call(db.find_scan_by_hash, owner_id=owner_id, file_hash=file_hash)
    if winner is None:  # it was deleted in between: store ours after all
        return store_upload(owner_id=owner_id, filename=filename, data=data, max_pixels=max_pixels)
    return StoredUpload(winner, duplicate=True)


def _insert(
    con: db.Connection,
    *,
    scan_id: str,
    owner_id: int,
    filename: str,
    data: bytes,
    file_hash: str,
    analyzed: imaging.AnalyzedScan,
) -> db.Scan | None:
    with db.transaction(con):
        return db.insert_scan(
            con,
            scan_id=scan_id,
            owner_id=owner_id,
            filename=filename,
            content_type=analyzed.content_type,
            width=analyzed.width,
            height=analyzed.height,
            results_json=json.dumps(analyzed.results),
            original=data,
            annotated=analyzed.annotated_jpeg,
            thumbnail=analyzed.thumbnail_jpeg,
            file_hash=file_hash,
            annotated_hash=hashlib.sha256(analyzed.annotated_jpeg).hexdigest(),
            thumbnail_hash=hashlib.sha256(analyzed.thumbnail_jpeg).hexdigest(),
        )
