"""FastAPI plumbing every HTTP function shares: the app factory, JSON errors, auth, image responses."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared import auth, db
from shared.config import get_settings
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
# Room for the multipart framing around the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The one JSON error shape: {"error": {"code", "message"}}."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
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


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "request"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return error_response(422, "invalid_request", "; ".join(problems) or "Invalid request.")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
    return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Type only: messages can carry patient data or SQL parameters.
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.scope.get("route_path", "?"))
    return error_response(500, "internal_error", "Internal server error.")


def create_app(name: str) -> FastAPI:
    """A FastAPI app with our error map; no docs routes and no lifespan work (Mangum runs it per call)."""
    app = FastAPI(title=f"ctscan-store {name}", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    return app


async def current_owner(request: Request) -> db.Owner:
    """FastAPI dependency: the owner of the request's bearer token, or 401.

    async so FastAPI runs it on the invoking thread, whose connection the handler reuses.
    """
    token = auth.parse_bearer(request.headers.get("authorization"))
    return db.call(auth.authenticate, token=token)


Owner = Annotated[db.Owner, Depends(current_owner)]


async def bearer_token(request: Request) -> str:
    """The raw bearer token of this request (for logout)."""
    return auth.parse_bearer(request.headers.get("authorization"))


def base_url(request: Request) -> str:
    """Where the API lives, for absolute URLs: API_BASE_URL, else the request's own scheme and host."""
    configured = get_settings().api_base_url
    if configured:
        return configured
    scheme = request.headers.get("x-forwarded-proto", request.url.scheme).split(",")[0].strip()
    host = request.headers.get("host") or request.url.netloc
    return f"{scheme}://{host}"


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


async def read_upload(request: Request, *, field: str = "file") -> tuple[str, bytes]:
    """The filename and bytes of one multipart file field, with size limits applied before parsing."""
    max_bytes = get_settings().max_upload_bytes
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType(f"Send the scan as multipart/form-data with a '{field}' field.")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD_BYTES:
        raise UploadTooLarge(f"The file is larger than the {max_bytes:,}-byte limit.")
    body = await request.body()
    if len(body) > max_bytes + MULTIPART_OVERHEAD_BYTES:
        raise UploadTooLarge(f"The file is larger than the {max_bytes:,}-byte limit.")
    try:
        form = await request.form(max_files=1, max_fields=16)
    except StarletteHTTPException as exc:
        raise InvalidUpload(f"Malformed multipart body: {exc.detail}") from None
    except Exception:  # python-multipart raises several kinds for garbage input
        raise InvalidUpload("Malformed multipart body.") from None
    try:
        upload = form.get(field)
        if not isinstance(upload, UploadFile):
            raise InvalidUpload(f"Missing multipart file field '{field}'.")
        data = await upload.read()
        filename = clean_filename(upload.filename)
    finally:
        await form.close()
    if len(data) > max_bytes:
        raise UploadTooLarge(f"The file is larger than the {max_bytes:,}-byte limit.")
    if not data:
        raise InvalidImage("The uploaded file is empty.")
    return filename, data


def clean_filename(name: str | None) -> str:
    """A display-safe filename: last path part, no control characters, at most 255 characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch for ch in base if ch.isprintable()).strip()
    return cleaned[:255] or "upload"
