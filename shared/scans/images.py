"""Reading a scan's image for a request: by its owner's bearer token, or by id alone once a URL
signature named it. Authorisation, the HTTP status and the audit row come from one database call;
the bytes come with it, or, for an image in the S3 tier, from the bucket afterwards: then the audit
row is set to what was answered (a 302 to S3, a 503 when S3 failed) once it is known."""

from __future__ import annotations

import logging

from pybase64 import b64encode

from shared import db, storage
from shared.auth import hash_token
from shared.core.errors import DatabaseUnavailable, InvalidToken, StorageUnavailable

log = logging.getLogger(__name__)


def read_image_part(
    con: db.Connection,
    *,
    token: str | None,
    scan_id: str,
    image_type: db.ImageType,
    read: db.ImageRead = db.WHOLE_IMAGE,
    source_ip: str | None = None,
    request_id: str | None = None,
) -> db.ImagePart:
    """The token owner's scan image, token and image resolved (and the read audited) in one call;
    InvalidToken otherwise. token None: a valid URL signature already named this scan and type."""
    part = db.read_image(
        con,
        token_hash=None if token is None else hash_token(token),
        scan_id=scan_id,
        image_type=image_type,
        read=read,
        source_ip=source_ip,
        request_id=request_id,
    )
    if part is None:
        raise InvalidToken("Invalid or expired token.")
    return part


def s3_span_base64(part: db.ImagePart) -> str:
    """The span [first, stop) of an S3 image as base64 text (the whole object when it is whole)."""
    whole = part.first == 0 and part.stop == part.size
    key = storage.object_key(part.owner_id, part.sha256)
    data = _bucket().get(key) if whole else _bucket().get(key, part.first, part.stop)
    if len(data) != part.stop - part.first:
        raise StorageUnavailable("The images bucket answered a different size than stored.")
    return b64encode(data).decode("ascii")


def presigned_s3_get(part: db.ImagePart) -> str:
    """A short-lived presigned GET of an S3 image, for one too large for a Lambda response body.

    Only a read already authorised (and audited) may ask. The client sends its Range (if any) again
    to S3, which answers it.
    """
    return _bucket().presigned_get(storage.object_key(part.owner_id, part.sha256), content_type=part.content_type)


def _bucket() -> storage.ObjectStore:
    store = storage.object_store()
    if store is None:  # an image moved to S3 by a stack whose settings have since lost the bucket
        raise StorageUnavailable("This image is in the S3 tier, but no images bucket is configured.")
    return store


def record_answer(
    part: db.ImagePart, *, scan_id: str, image_type: db.ImageType, request_id: str | None, answered: int
) -> None:
    """Set the read's audit row (written with part.status) to the status the request was answered
    with. A database that fails now leaves the row as it was, logged: the answer goes out all the same."""
    if answered == part.status:
        return
    try:
        db.call(
            db.set_read_status,
            reader=part.owner_id,  # the reader: scans are read only by their owner
            scan_id=scan_id,
            image_type=image_type,
            request_id=request_id,
            recorded=part.status,
            answered=answered,
        )
    except DatabaseUnavailable:
        log.warning("an image read's audit row keeps status %d where %d was answered", part.status, answered)
