"""How scans look to clients: ids, absolute image URLs, public JSON, list cursors."""

from __future__ import annotations

import base64
import binascii
import secrets
from datetime import UTC, datetime
from typing import Any

from shared import db, signing
from shared.dicom_index import DicomIndex
from shared.errors import InvalidParameter

SCAN_ID_PREFIX = "scan_"
IMAGE_PATH = "/api/v1/scans/image/{scan_id}/{image_type}"


def new_scan_id() -> str:
    """A fresh, unguessable scan id: scan_ + 128 random bits."""
    return SCAN_ID_PREFIX + secrets.token_urlsafe(16)


def image_urls(base_url: str, scan_id: str) -> dict[str, str]:
    """Absolute, signed URLs of a scan's four images (they work in <img> without a token; see shared.signing)."""

    def url(kind: db.ImageType) -> str:
        path = IMAGE_PATH.format(scan_id=scan_id, image_type=kind.value)
        return f"{base_url}{path}?{signing.signed_query(path)}"

    return {
        "imageUrl": url(db.ImageType.original),
        "previewUrl": url(db.ImageType.preview),
        "annotatedImageUrl": url(db.ImageType.annotated),
        "thumbnailUrl": url(db.ImageType.thumbnail),
    }


def dicom_public(dicom: DicomIndex | None) -> dict[str, Any] | None:
    """The PHI-free DICOM attributes as the API shows them; None for PNG and JPEG scans."""
    return None if dicom is None else dicom.to_json()


def iso(moment: datetime) -> str:
    """UTC ISO 8601 with a Z, to the microsecond."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _metadata(scan: db.Scan) -> dict[str, Any]:
    return {
        "scanId": scan.id,
        "filename": scan.filename,
        "contentType": scan.content_type,
        "fileSize": scan.file_size,
        "width": scan.width,
        "height": scan.height,
        "fileHash": scan.file_hash,
        "createdAt": iso(scan.created_at),
        "dicom": dicom_public(scan.dicom),
    }


def scan_public(scan: db.Scan, base_url: str) -> dict[str, Any]:
    """A scan's metadata and results as the API shows them."""
    return {**_metadata(scan), "results": {**image_urls(base_url, scan.id), **scan.results}}


def scan_summary(scan: db.Scan, base_url: str) -> dict[str, Any]:
    """A scan as a list item: metadata, finding count and image URLs."""
    findings = scan.results.get("findings", [])
    return {
        **_metadata(scan),
        "findingsCount": len(findings) if isinstance(findings, list) else 0,
        **image_urls(base_url, scan.id),
    }


_INVALID_CURSOR = "cursor is not valid for this listing; use nextCursor from the previous page of the same listing."
_SERIES_CURSOR = "series"


def encode_cursor(scan: db.Scan) -> str:
    """An opaque cursor that continues a newest-first listing after this scan."""
    return _b64(f"{scan.created_at.astimezone(UTC).isoformat()}|{scan.id}")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) position a cursor stands for; InvalidParameter when it is not one of ours."""
    try:
        moment, scan_id = _unb64(cursor).split("|", 1)
        when = datetime.fromisoformat(moment)
    except ValueError:
        raise InvalidParameter(_INVALID_CURSOR) from None
    if when.tzinfo is None or not scan_id.startswith(SCAN_ID_PREFIX):
        raise InvalidParameter(_INVALID_CURSOR)
    return when, scan_id


def encode_series_cursor(scan: db.Scan) -> str:
    """An opaque cursor that continues a series or study listing (reading order) after this scan."""
    position = db.series_position(scan)
    return _b64(
        "|".join(
            (
                _SERIES_CURSOR,
                str(position.instance_key),
                repr(position.position_key),
                position.scan_id,
                position.series_uid,
            )
        )
    )


def decode_series_cursor(cursor: str) -> db.SeriesPosition:
    """The reading-order position a series cursor stands for; InvalidParameter when it is not one."""
    try:
        kind, instance, position, scan_id, series_uid = _unb64(cursor).split("|", 4)
        result = db.SeriesPosition(series_uid, int(instance), float(position), scan_id)
    except ValueError:
        raise InvalidParameter(_INVALID_CURSOR) from None
    if kind != _SERIES_CURSOR or not scan_id.startswith(SCAN_ID_PREFIX) or not -(2**31) <= result.instance_key < 2**31:
        raise InvalidParameter(_INVALID_CURSOR)
    return result


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _unb64(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("not base64url text") from None
