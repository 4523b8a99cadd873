"""How scans look to clients: ids, absolute image URLs, public JSON, list cursors."""

from __future__ import annotations

import base64
import binascii
import secrets
from datetime import UTC, datetime
from typing import Any

from shared import db
from shared.errors import InvalidRequest

SCAN_ID_PREFIX = "scan_"
IMAGE_PATH = "/api/v1/scans/image/{scan_id}/{image_type}"


def new_scan_id() -> str:
    """A fresh, unguessable scan id: scan_ + 128 random bits."""
    return SCAN_ID_PREFIX + secrets.token_urlsafe(16)


def image_urls(base_url: str, scan_id: str) -> dict[str, str]:
    """Absolute URLs of a scan's three images."""

    def url(kind: db.ImageType) -> str:
        return base_url + IMAGE_PATH.format(scan_id=scan_id, image_type=kind.value)

    return {
        "imageUrl": url(db.ImageType.original),
        "annotatedImageUrl": url(db.ImageType.annotated),
        "thumbnailUrl": url(db.ImageType.thumbnail),
    }


def iso(moment: datetime) -> str:
    """UTC ISO 8601 with a Z, to the microsecond."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _metadata(scan: db.Scan) -> dict[str, Any]:
    return {
        "scanId": scan.id,
        "filename": scan.filename,
        "contentType": scan.content_type,
        "width": scan.width,
        "height": scan.height,
        "fileHash": scan.file_hash,
        "createdAt": iso(scan.created_at),
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


def encode_cursor(scan: db.Scan) -> str:
    """An opaque cursor that continues a listing after this scan."""
    raw = f"{scan.created_at.astimezone(UTC).isoformat()}|{scan.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) position a cursor stands for; InvalidRequest when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, scan_id = raw.split("|", 1)
        when = datetime.fromisoformat(moment)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest("cursor is not valid; use nextCursor from a previous page.") from None
    if when.tzinfo is None or not scan_id.startswith(SCAN_ID_PREFIX):
        raise InvalidRequest("cursor is not valid; use nextCursor from a previous page.")
    return when, scan_id
