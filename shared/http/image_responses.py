"""The HTTP plumbing that needs only Starlette: JSON errors, the error map, image responses, bearer auth.

The images function (the hot read path) is built on this alone: FastAPI's import costs ~250 ms of a
cold start, Starlette's ~85 ms. shared.http adds the FastAPI parts for the other functions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mangum import Mangum
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared import auth, db, observability, origin
from shared.errors import (
    DatabaseUnavailable,
    DirectUploadUnavailable,
    DomainError,
    InvalidCredentials,
    InvalidImage,
    InvalidParameter,
    InvalidRequest,
    InvalidSignature,
    InvalidToken,
    InvalidUpload,
    NotAuthenticated,
    ScanNotFound,
    SigningUnavailable,
    StorageUnavailable,
    TooManyAttempts,
    UnsupportedMediaType,
    UploadIncomplete,
    UploadNotFound,
    UploadTooLarge,
    UrlExpired,
    UserExists,
)

log = logging.getLogger(__name__)

STATUS_FOR: dict[type[DomainError], int] = {
    InvalidRequest: 400,
    InvalidUpload: 400,
    NotAuthenticated: 401,
    InvalidCredentials: 401,
    InvalidSignature: 403,
    UrlExpired: 403,
    ScanNotFound: 404,
    UploadNotFound: 404,
    UserExists: 409,
    DirectUploadUnavailable: 409,
    UploadIncomplete: 409,
    UploadTooLarge: 413,
    UnsupportedMediaType: 415,
    InvalidImage: 422,
    InvalidParameter: 422,
    TooManyAttempts: 429,
    DatabaseUnavailable: 503,
    SigningUnavailable: 503,
    StorageUnavailable: 503,
}
IMMUTABLE_CACHE = "private, max-age=31536000, immutable"


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The one JSON error shape: {"error": {"code", "message"}}."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


async def domain_error(request: Request, exc: Exception) -> Response:
    """Exception handler: a DomainError as its status and JSON body (with WWW-Authenticate or Retry-After)."""
    assert isinstance(exc, DomainError)
    status = next((s for kind, s in STATUS_FOR.items() if isinstance(exc, kind)), 400)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="ctscan"'
        if isinstance(exc, InvalidToken):
            headers["WWW-Authenticate"] += ', error="invalid_token"'
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, exc.retry_after))
    elif status == 503:
        headers["Retry-After"] = "2"
    return error_response(status, exc.code, exc.message, headers)


async def http_error(request: Request, exc: Exception) -> Response:
    """Exception handler: Starlette's 404/405/400 as our JSON errors."""
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
    return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), exc.headers)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """Exception handler: anything else is a 500 that says nothing about its cause."""
    # Type only: messages can carry patient data or SQL parameters.
    route = getattr(request.scope.get("route"), "path", "?")  # the template, never the raw path
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, route)
    return error_response(500, "internal_error", "Internal server error.")


def request_owner(request: Request) -> db.Owner:
    """The owner of the request's bearer token; NotAuthenticated (401) otherwise."""
    token = auth.parse_bearer(request.headers.get("authorization"))
    return db.call(auth.authenticate, token=token)


# ---------------------------------------------------------------- the images function's read path

# Marks a response whose body is already base64 text; the Lambda entry point removes it and sets
# isBase64Encoded (see lambda_handler_for_base64_bodies).
PRE_ENCODED_HEADER = "x-ctscan-body-base64"
MAX_RANGE_DIGITS = 18  # fits a bigint
MAX_ETAGS = 32  # entity tags read from one If-None-Match


@dataclass(frozen=True)
class ByteRange:
    """One requested byte range as db.ImageRead takes it: start < 0 means the last -start bytes."""

    start: int
    stop: int | None


def parse_range(header: str | None) -> ByteRange | None:
    """A single `bytes=a-b`, `a-` or `-n` range; None for no Range header, or one we answer whole (RFC 9110 14.2).

    Several ranges, other units and malformed headers are answered with the whole image (200), as
    the RFC allows. `-0` asks for nothing and is unsatisfiable.
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if unit.strip().lower() != "bytes" or not dash or "," in spec or not (first or last):
        return None
    if not all(part.isascii() and part.isdigit() and len(part) <= MAX_RANGE_DIGITS for part in (first, last) if part):
        return None
    if not first:
        suffix = int(last)
        return ByteRange(-suffix, None) if suffix else ByteRange(0, 0)
    if not last:
        return ByteRange(int(first), None)
    if int(last) < int(first):
        return None
    return ByteRange(int(first), int(last) + 1)


def if_none_match_hashes(header: str | None) -> tuple[str, ...]:
    """The image hashes an If-None-Match names (weak comparison: W/ is ignored), "*" as itself.

    Our ETags are the quoted SHA-256 hex; any other entity tag can never match one and is dropped.
    """
    if not header:
        return ()
    if header.strip() == "*":
        return ("*",)
    hashes = []
    for candidate in header.split(","):
        tag = candidate.strip().removeprefix("W/")
        if len(tag) == 66 and tag[0] == tag[-1] == '"':
            hashes.append(tag[1:-1])
    return tuple(hashes[:MAX_ETAGS])


def image_part_response(part: db.ImagePart, request: Request, *, signed_until: int | None, now: float) -> Response:
    """The 200, 206, 304 or 416 the read statement decided; the body goes out as the base64 text
    the database sent."""
    etag = f'"{part.sha256}"'
    headers = {
        "ETag": etag,
        "Cache-Control": IMMUTABLE_CACHE,
        "X-Content-Type-Options": "nosniff",
        "Accept-Ranges": "bytes",
    }
    if signed_until is not None:
        # A signed URL must not outlive its signature in a cache, nor leak through a Referer. public:
        # the CDN (infra/web.yml) does not cache `private`, and the URL itself is the credential, so
        # every holder of it gets the same bytes; max-age ends with the signature, in CloudFront too.
        # Token-authorized reads stay private (IMMUTABLE_CACHE).
        headers["Cache-Control"] = f"public, max-age={max(0, signed_until - int(now))}, immutable"
        headers["Referrer-Policy"] = "no-referrer"
    if part.status == 304:
        return Response(status_code=304, headers=headers)
    if part.status == 416:
        headers["Content-Range"] = f"bytes */{part.size}"
        return error_response(416, "range_not_satisfiable", "The requested range is not in the image.", headers)
    if part.status == 206:
        headers["Content-Range"] = f"bytes {part.first}-{part.stop - 1}/{part.size}"
    headers["Content-Length"] = str(part.stop - part.first)
    if request.method == "HEAD" or part.base64 is None:
        return Response(status_code=part.status, headers=headers, media_type=part.content_type)
    headers[PRE_ENCODED_HEADER] = "1"
    return Response(part.base64.encode("ascii"), status_code=part.status, headers=headers, media_type=part.content_type)


LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]


def within_time_limit(handler: LambdaHandler) -> LambdaHandler:
    """A Lambda entry point whose database waits end in time to answer before the function times out.

    Each invocation gets its own budget from the context's remaining time (db.invocation_budget),
    cleared when it returns: a database that stops answering is a JSON 503, not Lambda's timeout.
    """

    def bounded(event: dict[str, Any], context: Any) -> dict[str, Any]:
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        with db.invocation_budget(remaining() if callable(remaining) else None):
            return handler(event, context)

    return bounded


def lambda_handler_for_base64_bodies(app: Starlette) -> LambdaHandler:
    """Mangum, except that a body marked as already base64 goes to API Gateway as it is.

    Mangum base64-encodes every body whose content type is not in its text list. Here every type
    counts as text (the empty string is in every content type): Mangum then sends a body that is
    valid UTF-8 as text, which reaches the client as the very same bytes, and base64-encodes any
    other. So our base64 text passes through untouched, and the marker tells us to set
    isBase64Encoded: the image bytes are never decoded and encoded again in Python.

    It is the images function's entry point: shared.observability logs it and sums the image bytes served.
    Requests that did not come through the CDN are refused first, and behind the CDN an unsigned
    request gets a 401 that says why (shared.origin), before any database access.
    """
    adapter = Mangum(app, lifespan="off", text_mime_types=[""])

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        refused = origin.refuse(event) or origin.unsigned_image_read(event)
        if refused is not None:
            return refused
        result: dict[str, Any] = adapter(event, context)
        headers = result.get("headers") or {}
        if headers.pop(PRE_ENCODED_HEADER, None) is not None:
            result["isBase64Encoded"] = True
        return without_content_type_when_empty(result)

    return observability.observed(within_time_limit(handler), bytes_metric=observability.IMAGE_BYTES_SERVED)


def without_content_type_when_empty(result: dict[str, Any]) -> dict[str, Any]:
    """A 204 or 304 Lambda result without the Content-Type Mangum adds to every v2 response."""
    if result.get("statusCode") in (204, 304):
        headers = result.get("headers") or {}
        for name in [name for name in headers if name.lower() == "content-type"]:
            del headers[name]
    return result
