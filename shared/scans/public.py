"""How scans look to clients: ids, absolute signed image URLs, the public JSON."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from shared import db
from shared.auth import signing
from shared.core.dicom_index import DicomIndex

SCAN_ID_PREFIX = "scan_"
IMAGE_PATH = "/api/v1/scans/image/{scan_id}/{image_type}"


def new_scan_id() -> str:
    """A fresh, unguessable scan id: scan_ + 128 random bits."""
    return SCAN_ID_PREFIX + secrets.token_urlsafe(16)


def image_urls(base_url: str, scan_id: str) -> dict[str, str]:
    """Absolute, signed URLs of a scan's four images (they work in <img> without a token; see shared.auth.signing)."""

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
