"""`make openapi`: one OpenAPI document for every HTTP function, generated from their apps.

    python -m scripts.build.openapi            writes openapi.json (checked in; tests/test_openapi.py fails when stale)
    python -m scripts.build.openapi --check    exits 1 when openapi.json is not what the code generates

upload, scans and auth are FastAPI apps: their routes describe themselves (shared/http/schemas.py holds
the JSON shapes). The images function is plain Starlette for its cold start, so its one route is
described here by a FastAPI stub that is never deployed. Security schemes (bearer token, signed
image URL) and the routes each applies to are added here, from serverless.yml's route list.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Response
from fastapi import Path as PathParam
from fastapi.openapi.utils import get_openapi

from shared.http.schemas import error_responses

ROOT = Path(__file__).resolve().parents[2]

OUTPUT = ROOT / "openapi.json"
TITLE = "CT scan image store"
VERSION = "1"
PUBLIC_OPERATIONS = {("post", "/api/v1/auth/sessions")}
IMAGE_PATH = "/api/v1/scans/image/{scan_id}/{image_type}"


class ImageType(StrEnum):
    """Mirrors shared.db.ImageType (the images function's own enum): tests check they agree."""

    original = "original"
    preview = "preview"
    annotated = "annotated"
    thumbnail = "thumbnail"


def images_stub() -> FastAPI:
    """The images function's route, described with FastAPI (the function itself is plain Starlette)."""
    app = FastAPI()
    image_content = {
        media: {"schema": {"type": "string", "format": "binary"}}
        for media in ("image/jpeg", "image/png", "application/dicom")
    }

    route = dict(
        response_model=None,
        summary="A scan's image: original (the file of record), preview, annotated or thumbnail",
        description=(
            "Authorised by a bearer token, or by a signed URL (exp, kid, sig) as found in scan JSON, which "
            "works in an <img>. Strong ETag, 304 on If-None-Match, Range requests (206/416), HEAD."
        ),
        responses={
            200: {"description": "The image bytes", "content": image_content},
            206: {"description": "The requested byte range", "content": image_content},
            304: {"description": "Not modified (If-None-Match matched the ETag)"},
            **error_responses(401, 403, 404, 416, 422, 503),
        },
    )

    # GET and HEAD as two operations with ids of their own: FastAPI derives one id for a
    # multi-method route from a set of methods, whose order changes from run to run.
    def read_scan_image(
        scan_id: Annotated[str, PathParam(max_length=64)],
        image_type: ImageType,
        exp: Annotated[int | None, Query(description="Signed URL: expiry, Unix seconds")] = None,
        kid: Annotated[str | None, Query(description="Signed URL: signing key id")] = None,
        sig: Annotated[str | None, Query(description="Signed URL: base64url HMAC-SHA256")] = None,
        range_: Annotated[str | None, Header(alias="Range")] = None,
        if_range: Annotated[str | None, Header(alias="If-Range")] = None,
        if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
    ) -> Response:
        raise NotImplementedError  # documentation only

    app.get(IMAGE_PATH, operation_id="read_scan_image", **route)(read_scan_image)
    app.head(IMAGE_PATH, operation_id="read_scan_image_head", **route)(read_scan_image)
    return app


def build() -> dict[str, Any]:
    """The merged OpenAPI document, deterministic (sorted keys when written)."""
    import functions.auth.handler as auth
    import functions.scans.handler as scans
    import functions.upload.handler as upload

    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": VERSION,
            "description": (
                "Upload CT scans (DICOM, PNG, JPEG), read their analysis and images. Errors are always "
                '{"error": {"code", "message"}}.'
            ),
        },
        "paths": {},
        "components": {
            "schemas": {},
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from POST /api/v1/auth/sessions",
                },
                "signedUrl": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "sig",
                    "description": "Image URLs in scan JSON carry exp, kid and sig: valid without a token until exp",
                },
            },
        },
    }
    for app in (upload.app, scans.app, auth.app, images_stub()):
        part = get_openapi(title=TITLE, version=VERSION, routes=app.routes)
        for path, operations in part.get("paths", {}).items():
            document["paths"].setdefault(path, {}).update(operations)
        document["components"]["schemas"].update(part.get("components", {}).get("schemas", {}))
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            # FastAPI describes its own validation errors; ours are the one JSON error shape (shared.http).
            invalid = operation["responses"].get("422")
            if invalid and "HTTPValidationError" in json.dumps(invalid):
                invalid.update(description="A bad parameter", content={"application/json": {"schema": error_ref}})
            if (method, path) in PUBLIC_OPERATIONS:
                continue
            operation["security"] = [{"bearer": []}, {"signedUrl": []}] if path == IMAGE_PATH else [{"bearer": []}]
    for unused in ("HTTPValidationError", "ValidationError"):
        document["components"]["schemas"].pop(unused, None)
    return document


def render(document: dict[str, Any]) -> str:
    """The document as written to openapi.json."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render(build())
    if "--check" in argv:
        if not OUTPUT.exists() or OUTPUT.read_text(encoding="utf-8") != text:
            print("openapi.json is stale: run `make openapi`", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({len(document_paths(text))} paths)")
    return 0


def document_paths(text: str) -> list[str]:
    """The paths a rendered document holds."""
    return list(json.loads(text)["paths"])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
