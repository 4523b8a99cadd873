"""Upload a CT scan (PNG, JPEG or DICOM): analyze it, store the original and its renderings, answer."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from shared.config import get_settings
from shared.http import Owner, base_url, create_app, lambda_handler, read_upload
from shared.observability import DUPLICATE_UPLOADS, UPLOADS
from shared.scans import scan_public
from shared.schemas import UploadResult, error_responses
from shared.uploads import store_upload

app = create_app("upload")


# async def on purpose: Lambda serves one request per container, so running the blocking
# pg8000 and Pillow work on the event-loop thread costs nothing and keeps one connection per container.
@app.post(
    "/api/v1/scans/analyze",
    response_model=None,
    responses={
        201: {"model": UploadResult, "description": "Stored and analyzed"},
        200: {"model": UploadResult, "description": "This owner already had the same bytes: that scan"},
        **error_responses(400, 401, 413, 415, 422, 503),
    },
    status_code=201,
    summary="Upload a scan (DICOM, PNG or JPEG): analyze it and store it with its renderings",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                }
            },
        }
    },
)
async def analyze_scan(request: Request, owner: Owner) -> JSONResponse:
    filename, data = await read_upload(request)
    settings = get_settings()
    stored = store_upload(
        owner_id=owner.id,
        filename=filename,
        data=data,
        max_pixels=settings.max_image_pixels,
        dense_hu_threshold=settings.dense_hu_threshold,
    )
    body = {"duplicate": stored.duplicate, **scan_public(stored.scan, base_url(request))}
    return JSONResponse(body, status_code=200 if stored.duplicate else 201)


# 201 stored a new scan, 200 found the owner's existing one (see analyze_scan).
handler = lambda_handler(app, status_metrics={201: UPLOADS, 200: DUPLICATE_UPLOADS})
