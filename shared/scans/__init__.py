"""What the service does with scans: store uploads (direct and presigned), read their images, and
show them to clients.

    public          ids, signed image URLs, the scan JSON
    cursors         list cursors (newest first; a series or study in reading order)
    images          an image read for a request (token or signature), audited in one call
    uploads         store an upload: hash, dedup, analysis, the S3 tier, one atomic insert
    direct_uploads  uploads past 4.5 MB: a presigned S3 POST, then complete

The front door exports only what needs neither numpy nor Pillow: the images and scans functions
import it. uploads and direct_uploads pull in shared.imaging; the upload function imports them as
submodules (`from shared.scans import uploads`).
"""

from typing import TYPE_CHECKING

from shared.core.front_door import lazy_exports

if TYPE_CHECKING:
    from shared.scans.cursors import decode_cursor, decode_series_cursor, encode_cursor, encode_series_cursor
    from shared.scans.images import presigned_s3_get, read_image_part, record_answer, s3_span_base64
    from shared.scans.public import IMAGE_PATH, SCAN_ID_PREFIX, image_urls, iso, new_scan_id, scan_public, scan_summary
else:  # each name loads with its module on first use (shared/core/front_door.py)
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "cursors": ("decode_cursor", "decode_series_cursor", "encode_cursor", "encode_series_cursor"),
            "images": ("presigned_s3_get", "read_image_part", "record_answer", "s3_span_base64"),
            "public": (
                "IMAGE_PATH",
                "SCAN_ID_PREFIX",
                "image_urls",
                "iso",
                "new_scan_id",
                "scan_public",
                "scan_summary",
            ),
        },
    )

__all__ = [
    "IMAGE_PATH",
    "SCAN_ID_PREFIX",
    "decode_cursor",
    "decode_series_cursor",
    "encode_cursor",
    "encode_series_cursor",
    "image_urls",
    "iso",
    "new_scan_id",
    "presigned_s3_get",
    "read_image_part",
    "record_answer",
    "s3_span_base64",
    "scan_public",
    "scan_summary",
]
