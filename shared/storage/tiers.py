"""Where an image's bytes live: PostgreSQL (its bytea column) or the images bucket under
`scans/<owner_id>/<sha256>` (migration 007), and the size rule that picks one.

The key follows from the owner and the bytes, never from a file name: the same owner storing the
same bytes again reuses the object; two owners never share one, so deleting one's scan never touches
the other's.
"""

from __future__ import annotations

from shared.core.config import Settings

POSTGRES = "postgres"
S3 = "s3"
# The most bytes a function answers in its body: API Gateway's 6 MB Lambda response limit holds the
# base64 text (4/3 of the bytes) and the headers. A larger S3 image (or span) is a 302 to a
# presigned GET instead; and while a bucket is configured, a larger image never goes to PostgreSQL.
MAX_INLINE_BYTES = 4_400_000


def object_key(owner_id: int, sha256: str) -> str:
    """The bucket key of an owner's image with this SHA-256 (hex)."""
    return f"scans/{owner_id}/{sha256}"


def parse_object_key(key: str) -> tuple[int, str]:
    """(owner_id, sha256) of a `scans/` key; ValueError for any other key."""
    prefix, owner, sha256 = key.split("/")
    if prefix != "scans" or not owner.isdigit() or len(sha256) != 64:
        raise ValueError(f"not an image key: {key!r}")
    return int(owner), sha256


def tier_for(size: int, settings: Settings) -> str:
    """Where an image of this many bytes is written: S3 at or above STORAGE_TIER_S3_MIN_BYTES,
    and always when Lambda could not answer it whole, provided a bucket is configured."""
    if settings.images_bucket is None:
        return POSTGRES
    threshold = settings.storage_tier_s3_min_bytes
    if (threshold is not None and size >= threshold) or size > MAX_INLINE_BYTES:
        return S3
    return POSTGRES
