"""FastAPI plumbing of the upload function, the one FastAPI app: the app factory, validation errors,
the owner dependency, multipart uploads.

The images, scans and auth functions never import this module (FastAPI's import is most of a cold
start): their Starlette-only parts live beside it (shared.http.errors, entry, image_responses, plain).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared import auth, db
from shared.core.config import get_settings
from shared.core.errors import DomainError, InvalidImage, InvalidUpload, UnsupportedMediaType, UploadTooLarge
from shared.http.entry import lambda_handler
from shared.http.errors import domain_error, error_response, http_error, unexpected_error
from shared.http.plain import SecurityHeaders, request_owner
from shared.http.urls import base_url

# Re-exported for the FastAPI function: one import site for HTTP plumbing.
__all__ = [
    "BearerToken",
    "Owner",
    "base_url",
    "create_app",
    "current_owner",
    "error_response",
    "lambda_handler",
]

# Room for the multipart framing around the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "request"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return error_response(422, "invalid_request", "; ".join(problems) or "Invalid request.")


def create_app(name: str) -> FastAPI:
    """A FastAPI app with our error map; no docs routes and no lifespan work (Mangum runs it per call)."""
    app = FastAPI(title=f"ctscan-store {name}", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(SecurityHeaders)
    app.add_exception_handler(DomainError, domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
    return app


async def current_owner(request: Request) -> db.Owner:
    """FastAPI dependency: the owner of the request's bearer token; NotAuthenticated (401) otherwise.

    async so FastAPI runs it on the invoking thread, whose connection the handler reuses.
    """
    return request_owner(request)


Owner = Annotated[db.Owner, Depends(current_owner)]


async def bearer_token(request: Request) -> str:
    """The raw bearer token of this request (for logout)."""
    return auth.parse_bearer(request.headers.get("authorization"))


BearerToken = Annotated[str, Depends(bearer_token)]


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
