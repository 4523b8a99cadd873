"""Serve a scan's stored images to their owner, with ETag, 304 and HEAD.

This is the hot, cold-start-sensitive path: it must not import Pillow or numpy.
"""

from __future__ import annotations

from fastapi import Request, Response
from mangum import Mangum

from shared import db
from shared.http import Owner, create_app, etag_matches, image_response

app = create_app("images")


@app.api_route("/api/v1/scans/image/{scan_id}/{image_type}", methods=["GET", "HEAD"])
async def read_scan_image(scan_id: str, image_type: db.ImageType, request: Request, owner: Owner) -> Response:
    # Revalidations and HEAD read only the hash and size, never the image bytes.
    if_none_match = request.headers.get("if-none-match")
    if request.method == "HEAD" or if_none_match:
        meta = db.call(db.get_scan_image, scan_id=scan_id, owner_id=owner.id, image_type=image_type, with_data=False)
        if request.method == "HEAD" or etag_matches(if_none_match, f'"{meta.sha256}"'):
            return image_response(meta, request)
    image = db.call(db.get_scan_image, scan_id=scan_id, owner_id=owner.id, image_type=image_type)
    return image_response(image, request)


handler = Mangum(app, lifespan="off")
