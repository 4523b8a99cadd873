"""Upload a CT scan (PNG, JPEG or DICOM): analyze it, store the original and its renderings, answer."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import Path, Request, Response
from fastapi.responses import JSONResponse

from shared import auth, db
from shared.core.config import get_settings
from shared.core.errors import UploadTooLarge
from shared.core.observability import DUPLICATE_UPLOADS, UPLOADS
from shared.db import Owner as DbOwner
from shared.db.audit import Origin
from shared.dicomweb import DICOMWEB_ROOT, UID_PATTERN, store
from shared.http.app import BearerToken, Owner, base_url, clean_filename, create_app, lambda_handler, read_upload
from shared.http.plain import request_owner
from shared.http.schemas import DirectUpload, ErrorBody, UploadCreate, UploadResult, error_responses
from shared.scans import iso, scan_public
from shared.scans.direct_uploads import complete_upload, create_upload
from shared.scans.uploads import StoredUpload, prepare_upload, store_prepared

app = create_app("upload")

# PS3.18 10.5.3: the Store Instances Response, a DICOM JSON dataset, whatever the outcome.
STORE_RESPONSE = {"application/dicom+json": {"schema": {"type": "object"}}}
STOW_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "All instances stored (00081199 lists them)", "content": STORE_RESPONSE},
    202: {"description": "Some stored (00081199), some failed (00081198, with 00081197)", "content": STORE_RESPONSE},
    409: {"description": "None stored (00081198, with 00081197 per instance)", "content": STORE_RESPONSE},
}
STOW_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            'multipart/related; type="application/dicom"': {
                "schema": {"type": "string", "format": "binary"},
            }
        },
    }
}


# Up to this many bytes of request body (a 512x512 CT slice is ~0.5 MB), the upload asks for the
# token's owner and that owner's scan of the same bytes in one round trip, which needs the file
# parsed and hashed before the token is known good. Past it, the owner comes first, as on every
# other route: an unknown caller's body is never parsed (a 4.5 MB one: ~7 ms of CPU saved per
# refusal), and the round trip saved would be lost in the large file's analysis anyway.
ONE_TRIP_MAX_BODY = 1024 * 1024


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
async def analyze_scan(request: Request, token: BearerToken) -> JSONResponse:
    if len(await request.body()) > ONE_TRIP_MAX_BODY:
        # A large file: its owner first, as every route does, so that no unknown caller has megabytes
        # parsed and hashed; then the duplicate lookup (one round trip more, beside its analysis).
        owner = request_owner(request)
        filename, data = await read_upload(request)
        file_hash = hashlib.sha256(data).hexdigest()
        existing = db.call(db.find_scan_by_hash, owner_id=owner.id, file_hash=file_hash)
    else:
        try:
            filename, data = await read_upload(request)
        except Exception:
            # The token still decides first: an invalid one gets its 401 whatever the body, and
            # only the token's owner hears what is wrong with the body.
            request_owner(request)
            raise
        file_hash = hashlib.sha256(data).hexdigest()
        # The token's owner and whether they hold these bytes already: one round trip, not two.
        owner, existing = db.call(auth.authenticate_upload, token=token, file_hash=file_hash)
    if existing is not None:
        return upload_result(StoredUpload(existing, duplicate=True), request)
    settings = get_settings()
    prepared = prepare_upload(
        owner_id=owner.id,
        filename=filename,
        data=data,
        file_hash=file_hash,
        max_pixels=settings.max_image_pixels,
        dense_hu_threshold=settings.dense_hu_threshold,
        origin=Origin.of_scope(request.scope),
    )
    stored = store_prepared(prepared)
    return upload_result(stored, request)


def upload_result(stored: StoredUpload, request: Request) -> JSONResponse:
    """201 with a new scan, or 200 with this owner's scan of the same bytes."""
    body = {"duplicate": stored.duplicate, **scan_public(stored.scan, base_url(request))}
    return JSONResponse(body, status_code=200 if stored.duplicate else 201)


# Without IMAGES_BUCKET both routes answer 409 direct_upload_unavailable (a state of this deployment,
# not a server fault: /analyze still takes files up to MAX_UPLOAD_BYTES).
UNAVAILABLE = {"model": ErrorBody, "description": "No images bucket here (direct_upload_unavailable): use /analyze"}


@app.post(
    "/api/v1/scans/uploads",
    response_model=None,
    responses={
        201: {"model": DirectUpload, "description": "Post the file to url with these fields, then complete"},
        **error_responses(400, 401, 413, 422, 503),
        409: UNAVAILABLE,
    },
    status_code=201,
    summary="Start an upload past 4.5 MB: a presigned S3 POST for the file (needs IMAGES_BUCKET)",
)
async def start_upload(upload: UploadCreate, owner: Owner) -> JSONResponse:
    presigned = create_upload(
        owner_id=owner.id,
        filename=clean_filename(upload.filename),
        size=upload.size,
        content_type=upload.content_type,
        max_direct_upload_bytes=get_settings().max_direct_upload_bytes,
    )
    body = {
        "uploadId": presigned.upload_id,
        "url": presigned.url,
        "fields": presigned.fields,
        "expiresAt": iso(presigned.expires_at),
        "maxBytes": presigned.max_bytes,
    }
    return JSONResponse(body, status_code=201)


@app.post(
    "/api/v1/scans/uploads/{upload_id}/complete",
    response_model=None,
    responses={
        201: {"model": UploadResult, "description": "Stored and analyzed"},
        200: {"model": UploadResult, "description": "This owner already had the same bytes: that scan"},
        **error_responses(400, 401, 413, 422, 503),
        404: {"model": ErrorBody, "description": "No such upload for this owner, or it has expired"},
        409: {
            "model": ErrorBody,
            "description": "The file has not been posted yet (upload_incomplete), or no images bucket here "
            "(direct_upload_unavailable)",
        },
    },
    status_code=201,
    summary="Finish an upload: analyze the posted file and answer exactly as /analyze does",
)
async def finish_upload(upload_id: Annotated[str, Path(max_length=64)], owner: Owner, request: Request) -> JSONResponse:
    settings = get_settings()
    stored = complete_upload(
        owner_id=owner.id,
        upload_id=upload_id,
        max_pixels=settings.max_image_pixels,
        dense_hu_threshold=settings.dense_hu_threshold,
        origin=Origin.of_scope(request.scope),
    )
    return upload_result(stored, request)


@app.post(
    "/api/v1/dicomweb/studies",
    response_model=None,
    responses={**STOW_RESPONSES, **error_responses(400, 401, 413, 415, 503)},
    summary="STOW-RS: store instances (multipart/related; type=application/dicom)",
    openapi_extra=STOW_BODY,
)
async def stow(request: Request, owner: Owner) -> Response:
    return await _stow(request, owner, study_uid=None)


@app.post(
    "/api/v1/dicomweb/studies/{study}",
    response_model=None,
    responses={**STOW_RESPONSES, **error_responses(400, 401, 413, 415, 503)},
    summary="STOW-RS: store instances of one study; an instance of another study fails (0xA900)",
    openapi_extra=STOW_BODY,
)
async def stow_study(request: Request, owner: Owner, study: Annotated[str, Path(pattern=UID_PATTERN)]) -> Response:
    return await _stow(request, owner, study_uid=study)


async def _stow(request: Request, owner: DbOwner, *, study_uid: str | None) -> Response:
    settings = get_settings()
    body = await request.body()
    if len(body) > settings.max_upload_bytes:
        # Refused whole, before any part is stored: a sender never holds a half-stored request it cannot see.
        raise UploadTooLarge(
            f"This STOW-RS request is {len(body):,} bytes; one request carries at most "
            f"{settings.max_upload_bytes:,}. Send the study in several requests (each instance is stored on its "
            "own, so any split works); a single file over the limit goes through POST /api/v1/scans/uploads "
            "(a presigned upload, up to MAX_DIRECT_UPLOAD_BYTES), and DICOMweb finds it like any other."
        )
    outcomes = store.store_instances(
        owner_id=owner.id,
        body=body,
        content_type=request.headers.get("content-type", ""),
        study_uid=study_uid,
        max_pixels=settings.max_image_pixels,
        dense_hu_threshold=settings.dense_hu_threshold,
        origin=Origin.of_scope(request.scope),
    )
    body = store.response_body(outcomes, retrieve_root=base_url(request) + DICOMWEB_ROOT, study_uid=study_uid)
    # Exactly this type: dicomweb-client reads nothing from "application/dicom+json; charset=utf-8".
    return Response(body, status_code=store.status_of(outcomes), media_type=store.DICOM_JSON)


# 201 stored a new scan, 200 found the owner's existing one (see analyze_scan), on the two routes that
# store; a started presigned upload (201 too) is not an upload yet.
handler = lambda_handler(
    app,
    status_metrics={201: UPLOADS, 200: DUPLICATE_UPLOADS},
    status_metric_routes={"POST /api/v1/scans/analyze", "POST /api/v1/scans/uploads/{upload_id}/complete"},
)
