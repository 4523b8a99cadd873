"""The one JSON error shape, and the map from domain errors to HTTP statuses (Starlette only)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared.core.errors import (
    DatabaseUnavailable,
    DirectUploadUnavailable,
    DomainError,
    DuplicateSopInstance,
    InvalidCredentials,
    InvalidImage,
    InvalidParameter,
    InvalidRequest,
    InvalidSignature,
    InvalidToken,
    InvalidUpload,
    NotAcceptable,
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
    NotAcceptable: 406,
    UserExists: 409,
    DuplicateSopInstance: 409,
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


# On every error of every function, the Starlette-only ones (images, render) and a 500 included,
# which no middleware sees (Starlette answers it outside them): a browser never sniffs a JSON error
# into something else, and no cache keeps one.
ERROR_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The one JSON error shape: {"error": {"code", "message"}}."""
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers={**ERROR_HEADERS, **(headers or {})}
    )


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
