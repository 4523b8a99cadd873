"""Upload a CT scan: analyze it, store original, annotation and thumbnail, answer with the results."""

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
    stored = store_upload(owner_id=owner.id, filename=filename, data=data, max_pixels=get_settings().max_image_pixels)
    body = {"duplicate": stored.duplicate, **scan_public(stored.scan, base_url(request))}
    return JSONResponse(body, status_code=200 if stored.duplicate else 201)


handler = Mangum(app, lifespan="off")
