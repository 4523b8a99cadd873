"""Upload a CT scan (PNG, JPEG or DICOM): analyze it, store the original and its renderings, answer."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse
from mangum import Mangum

from shared.config import get_settings
from shared.http import Owner, base_url, create_app, read_upload
from shared.scans import scan_public
from shared.uploads import store_upload

app = create_app("upload")


# async def on purpose: Lambda serves one request per container, so running the blocking
# pg8000 and Pillow work on the event-loop thread costs nothing and keeps one connection per container.
@app.post("/api/v1/scans/analyze")
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


handler = Mangum(app, lifespan="off")
