"""Image reads (the images function): one call per read, authorised, decided and audited in the database."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pybase64 import b64encode as _b64encode  # SIMD base64: ~30 us for 200 KB

from shared.core.errors import ScanNotFound
from shared.db.protocol import Connection


class ImageType(StrEnum):
    """The four renderings stored for every scan."""

    original = "original"
    preview = "preview"
    annotated = "annotated"
    thumbnail = "thumbnail"


@dataclass(frozen=True)
class ImageRead:
    """What a request asks of one image, beyond which image: span, conditions, body or not.

    `start`/`stop` as ByteRange has them (start < 0: the last -start bytes; stop None: to the end),
    used only when `ranged`. `if_none_match` holds the hashes named by If-None-Match (`"*"` in it
    matches any). `known_sha256`: the hash of bytes the caller already holds (then none come back).
    """

    with_data: bool = True
    ranged: bool = False
    start: int = 0
    stop: int | None = None
    if_range: str | None = None
    if_none_match: tuple[str, ...] = ()
    known_sha256: str | None = None


WHOLE_IMAGE = ImageRead()


@dataclass(frozen=True)
class ImagePart:
    """What one image read found: type, hash, size, the HTTP status it makes, the span [first, stop)
    and its bytes as base64.

    `base64` is None when the bytes were not asked for (HEAD), not needed (304, 416) or already held
    by the caller (ImageRead.known_sha256).
    """

    content_type: str
    sha256: str
    size: int
    status: int
    first: int
    stop: int
    base64: str | None
    # Where the bytes live: "postgres" (then `base64` holds them when asked for) or "s3" (the
    # caller fetches them from the object at shared.storage.object_key(owner_id, sha256)).
    storage: str = "postgres"
    owner_id: int = 0


# One call per read, whatever the request: HEAD, revalidation (304), If-Range, Range (206 or 416)
# or the whole image (200). read_scan_image() (migration 005) resolves the token, the owner and the
# image, decides the status, writes the audit row and returns the span's bytes, in one round trip
# and one transaction; see its comments for why it is a PL/pgSQL function. The bytes come back in
# binary format (read_image), and are base64-encoded here for the response body.
READ_SCAN_IMAGE = """
    SELECT reader, content_type, sha256, size, status, first, stop, storage, data
    FROM read_scan_image(
        CAST(:token_hash AS text), :scan_id, :image_type, :with_data, :ranged, :start, :stop,
        CAST(:if_range AS text), CAST(:if_none_match AS text[]), CAST(:known_sha256 AS text),
        CAST(:source_ip AS text), CAST(:request_id AS text)
    )
"""


def read_image(
    con: Connection,
    *,
    token_hash: str | None,
    scan_id: str,
    image_type: ImageType,
    read: ImageRead = WHOLE_IMAGE,
    source_ip: str | None = None,
    request_id: str | None = None,
) -> ImagePart | None:
    """A scan's image, the read audited in the same call (read_scan_image()).

    With a token hash: the session owner's scan; None when there is no such unexpired session.
    Without (None): any scan by id alone, audited as its owner's read via a signature; call it only
    after a valid URL signature named this scan and type. ScanNotFound when there is no such scan.
    """
    params = dict(
        token_hash=token_hash,
        scan_id=scan_id,
        image_type=image_type.value,
        with_data=read.with_data,
        ranged=read.ranged,
        start=read.start,
        stop=read.stop,
        if_range=read.if_range,
        if_none_match=list(read.if_none_match),
        known_sha256=read.known_sha256,
        source_ip=source_ip,
        request_id=request_id,
    )
    # The image bytes (column 8) in binary format: they cross the wire once, as themselves.
    rows = con.run_with_raw_bytes(READ_SCAN_IMAGE, params, column_count=9, raw_column=8)
    if not rows:
        return None
    reader, content_type, digest, size, status, first, stop, storage, data = rows[0]
    if size is None or storage is None:  # no such scan, or it was deleted while the call read it
        raise ScanNotFound("No scan with this id.")
    encoded = None if data is None else _b64encode(data).decode("ascii")
    return ImagePart(content_type, digest, int(size), int(status), int(first), int(stop), encoded, storage, int(reader))


# The read's audit row, written by read_scan_image() with the status the database decided, when the
# answer turned out otherwise after the call (an S3 image: a 302 to S3, or a 503 when S3 failed).
# The newest row of this reader, scan, type and request: `at` within the hour keeps it on the
# (user_id, at) index.
UPDATE_READ_STATUS = """
    UPDATE audit_events SET status = :answered
    WHERE id = (
        SELECT max(id) FROM audit_events
        WHERE user_id = :reader AND at >= now() - interval '1 hour' AND action = 'image.read'
          AND scan_id = :scan_id AND image_type = :image_type AND status = :recorded
          AND request_id IS NOT DISTINCT FROM CAST(:request_id AS text))
"""


def set_read_status(
    con: Connection,
    *,
    reader: int,
    scan_id: str,
    image_type: ImageType,
    request_id: str | None,
    recorded: int,
    answered: int,
) -> None:
    """Make a read's audit row say what was answered (it said `recorded`, the database's status)."""
    con.run(
        UPDATE_READ_STATUS,
        reader=reader,
        scan_id=scan_id,
        image_type=image_type.value,
        request_id=request_id,
        recorded=recorded,
        answered=answered,
    )
