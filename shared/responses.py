"""The HTTP plumbing that needs only Starlette: JSON errors, the error map, image responses, bearer auth.

The images function (the hot read path) is built on this alone: FastAPI's import costs ~250 ms of a
cold start, Starlette's ~85 ms. shared.http adds the FastAPI parts for the other functions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared import auth, db
from shared.errors import (
    DatabaseUnavailable,
    DomainError,
    InvalidCredentials,
    InvalidImage,
    InvalidParameter,
    InvalidRequest,
    InvalidToken,
    InvalidUpload,
    NotAuthenticated,
    ScanNotFound,
    UnsupportedMediaType,
    UploadTooLarge,
    UserExists,
)

log = logging.getLogger(__name__)

STATUS_FOR: dict[type[DomainError], int] = {
    InvalidRequest: 400,
    InvalidUpload: 400,
    NotAuthenticated: 401,
    InvalidCredentials: 401,
    ScanNotFound: 404,
    UserExists: 409,
    UploadTooLarge: 413,
    UnsupportedMediaType: 415,
    InvalidImage: 422,
    InvalidParameter: 422,
    DatabaseUnavailable: 503,
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
    if status == 503:
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
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.scope.get("route_path", "?"))
    return error_response(500, "internal_error", "Internal server error.")


def request_owner(request: Request) -> db.Owner:
    """The owner of the request's bearer token; NotAuthenticated (401) otherwise."""
    token = auth.parse_bearer(request.headers.get("authorization"))
    return db.call(auth.authenticate, token=token)


def image_response(image: db.StoredImage, request: Request) -> Response:
    """The stored bytes with a strong ETag; 304 when If-None-Match matches, headers only for HEAD."""
    etag = f'"{image.sha256}"'
    headers = {
        "ETag": etag,
        "Cache-Control": IMMUTABLE_CACHE,
        "X-Content-Type-Options": "nosniff",
    }
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    headers["Content-Length"] = str(image.size)
    body = b"" if request.method == "HEAD" or image.data is None else image.data
    return Response(content=body, media_type=image.content_type, headers=headers)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison of an If-None-Match header against our ETag."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(candidate.strip().removeprefix("W/") == etag for candidate in if_none_match.split(","))
