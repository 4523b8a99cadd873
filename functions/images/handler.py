"""Serve a scan's stored images: to a signed URL or a bearer token, with ETag, 304, HEAD and Range;
and the DICOMweb reads (functions/images/dicomweb.py).

This is the hot, cold-start-sensitive path. It is a plain Starlette app: FastAPI's import alone
costs ~250 ms of a cold start and this one route needs none of it. It must not import Pillow or numpy.

Authorization: a URL signature (checked before any database access) or a bearer token. When both
are sent, either valid one suffices: the signature is checked first, and if it fails the token
decides, so a client with a token is never locked out by a stale URL.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from functions.images import dicomweb
from shared import auth, db, scans, storage
from shared.auth import signing
from shared.core.errors import (
    DomainError,
    InvalidParameter,
    InvalidSignature,
    ScanNotFound,
    StorageUnavailable,
    UrlExpired,
)
from shared.db.audit import Origin
from shared.http.entry import lambda_handler_for_base64_bodies
from shared.http.errors import domain_error, http_error, unexpected_error
from shared.http.image_cache import CachedImage, image_cache
from shared.http.image_responses import if_none_match_hashes, image_part_response, parse_range, redirect_response
from shared.scans import IMAGE_PATH

_ALLOWED_TYPES = ", ".join(f"'{kind.value}'" for kind in db.ImageType)
_SIGNATURE_PARAMS = ("exp", "kid", "sig")


def _signed_until(request: Request, path: str, now: float) -> int | None:
    """The verified URL's expiry; None when the request carries no signature but a token may do."""
    if not any(name in request.query_params for name in _SIGNATURE_PARAMS):
        return None
    try:
        return signing.verify_query(path, request.query_params, now=now)
    except (InvalidSignature, UrlExpired):
        if request.headers.get("authorization"):
            return None
        raise


async def read_scan_image(request: Request) -> Response:
    scan_id: str = request.path_params["scan_id"]
    try:
        image_type = db.ImageType(request.path_params["image_type"])
    except ValueError:
        raise InvalidParameter(f"image_type: Input should be one of {_ALLOWED_TYPES}") from None
    now = time.time()
    signed_until = _signed_until(request, IMAGE_PATH.format(scan_id=scan_id, image_type=image_type.value), now)
    token = None if signed_until is not None else auth.parse_bearer(request.headers.get("authorization"))

    headers = request.headers
    wanted = parse_range(headers.get("range"))
    ask = db.ImageRead(
        with_data=request.method != "HEAD",
        ranged=wanted is not None,
        start=wanted.start if wanted else 0,
        stop=wanted.stop if wanted else None,
        if_range=(headers.get("if-range", "").strip() or None) if wanted else None,
        if_none_match=if_none_match_hashes(headers.get("if-none-match")),
    )
    # A whole image this container holds: the database still decides (and audits), but sends no
    # bytes when the image's hash is still the one held (see shared.http.image_cache).
    cache, key = image_cache(), (scan_id, image_type.value)
    held = cache.get(key) if ask.with_data and not ask.ranged else None
    if held is not None:
        ask = dataclasses.replace(ask, known_sha256=held.sha256)
    origin = Origin.of_scope(request.scope)
    where: dict[str, Any] = {
        "scan_id": scan_id,
        "image_type": image_type,
        "read": ask,
        "source_ip": origin.source_ip,
        "request_id": origin.request_id,
    }
    try:  # token None: a valid signature named this scan and type, which is read by id alone
        part = db.call(scans.read_image_part, token=token, **where)
    except ScanNotFound:
        cache.discard(key)
        raise
    if held is not None and part.status == 200 and part.base64 is None and part.sha256 == held.sha256:
        part = dataclasses.replace(part, base64=held.base64)
    else:
        if part.storage == storage.S3 and ask.with_data and part.status in (200, 206):
            redirect, part = _from_s3(part, scan_id=scan_id, image_type=image_type, request_id=origin.request_id)
            if redirect is not None:
                return redirect
        if ask.with_data and part.status == 200 and part.base64 is not None:
            cache.put(key, CachedImage(part.sha256, part.base64))
    return image_part_response(part, request, signed_until=signed_until, now=now)


def _from_s3(
    part: db.ImagePart, *, scan_id: str, image_type: db.ImageType, request_id: str | None
) -> tuple[Response | None, db.ImagePart]:
    """An S3 image's bytes, or a redirect to them; the read's audit row then says what was answered."""

    def answered(status: int) -> None:
        scans.record_answer(part, scan_id=scan_id, image_type=image_type, request_id=request_id, answered=status)

    try:
        if part.stop - part.first > storage.MAX_INLINE_BYTES:
            # Too large for a Lambda response body: the client follows a short-lived presigned GET.
            redirect = redirect_response(scans.presigned_s3_get(part))
            answered(redirect.status_code)
            return redirect, part
        return None, dataclasses.replace(part, base64=scans.s3_span_base64(part))
    except StorageUnavailable:
        answered(503)
        raise


app = Starlette(
    routes=[Route(IMAGE_PATH, read_scan_image, methods=["GET", "HEAD"]), *dicomweb.ROUTES],
    exception_handlers={DomainError: domain_error, HTTPException: http_error, Exception: unexpected_error},
)
handler = lambda_handler_for_base64_bodies(app)
