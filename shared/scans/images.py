"""Reading a scan's image for a request: by its owner's bearer token, or by id alone once a URL
signature named it. Authorisation, the HTTP status and the audit row come from one database call."""

from __future__ import annotations

from shared import db
from shared.auth import hash_token
from shared.core.errors import InvalidToken


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
