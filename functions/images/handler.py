"""Serve a scan's stored images to their owner, with ETag, 304 and HEAD.

This is the hot, cold-start-sensitive path. It is a plain Starlette app: FastAPI's import alone
costs ~250 ms of a cold start and this one route needs none of it. It must not import Pillow or numpy.
"""

from __future__ import annotations

from mangum import Mangum
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared import db
from shared.errors import DomainError, InvalidParameter
from shared.responses import domain_error, etag_matches, http_error, image_response, request_owner, unexpected_error

IMAGE_ROUTE = "/api/v1/scans/image/{scan_id}/{image_type}"
_ALLOWED_TYPES = ", ".join(f"'{kind.value}'" for kind in db.ImageType)


async def read_scan_image(request: Request) -> Response:
    scan_id: str = request.path_params["scan_id"]
    try:
        image_type = db.ImageType(request.path_params["image_type"])
    except ValueError:
        raise InvalidParameter(f"image_type: Input should be one of {_ALLOWED_TYPES}") from None
    owner = request_owner(request)
    # Revalidations and HEAD read only the hash and size, never the image bytes.
    if_none_match = request.headers.get("if-none-match")
    if request.method == "HEAD" or if_none_match:
        meta = db.call(db.get_scan_image, scan_id=scan_id, owner_id=owner.id, image_type=image_type, with_data=False)
        if request.method == "HEAD" or etag_matches(if_none_match, f'"{meta.sha256}"'):
            return image_response(meta, request)
    image = db.call(db.get_scan_image, scan_id=scan_id, owner_id=owner.id, image_type=image_type)
    return image_response(image, request)


app = Starlette(
    routes=[Route(IMAGE_ROUTE, read_scan_image, methods=["GET", "HEAD"])],
    exception_handlers={DomainError: domain_error, HTTPException: http_error, Exception: unexpected_error},
)
handler = Mangum(app, lifespan="off")
