"""List, read and delete an owner's scans (metadata and results, never image bytes); and delete
studies, series and instances through DICOMweb (shared.dicomweb.deletion).

A plain Starlette app, as the images function is: FastAPI and Pydantic were more than half of this
function's cold start (the library's first listing after an idle spell), and its routes need none of
them. shared.http.plain makes the checks FastAPI's parameters made, with its messages; openapi.json
describes these routes from a FastAPI stub that states the same limits (scripts/build/openapi.py).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from functions.scans.limits import DEFAULT_LIMIT, INSTANCE, MAX_CURSOR_LENGTH, MAX_LIMIT, SCANS, SERIES, STUDY
from shared import db
from shared.db.audit import Origin
from shared.dicomweb import UID_PATTERN
from shared.http.entry import lambda_handler
from shared.http.plain import create_plain_app, path_text, query_bool, query_int, query_text, request_owner
from shared.http.urls import base_url
from shared.scans import (
    decode_cursor,
    decode_series_cursor,
    encode_cursor,
    encode_series_cursor,
    scan_public,
    scan_summary,
)


async def list_scans(request: Request) -> Response:
    """The caller's scans: newest first, or one series (or study) in reading order."""
    owner = request_owner(request)
    limit = query_int(request, "limit", default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    cursor = query_text(request, "cursor", max_length=MAX_CURSOR_LENGTH)
    series_uid = query_text(request, "seriesInstanceUid", pattern=UID_PATTERN)
    study_uid = query_text(request, "studyInstanceUid", pattern=UID_PATTERN)
    dicom = query_bool(request, "dicom")
    # One extra row tells us whether there is a next page.
    if series_uid or study_uid:
        # One series (or study) in reading order: instance number, then slice position.
        after = decode_series_cursor(cursor) if cursor else db.SERIES_START
        rows = db.call(
            db.list_scans_in_series,
            owner_id=owner.id,
            limit=limit + 1,
            series_uid=series_uid,
            study_uid=study_uid,
            after=after,
        )
        encode = encode_series_cursor
    else:
        before = decode_cursor(cursor) if cursor else None
        rows = db.call(db.list_scans_for_owner, owner_id=owner.id, limit=limit + 1, before=before, dicom=dicom)
        encode = encode_cursor
    page = rows[:limit]
    root = base_url(request)
    body: dict[str, Any] = {
        "items": [scan_summary(scan, root) for scan in page],
        "nextCursor": encode(page[-1]) if len(rows) > limit else None,
    }
    return JSONResponse(body)


async def read_scan(request: Request) -> Response:
    """One scan with its analysis."""
    owner = request_owner(request)
    scan = db.call(db.get_scan, scan_id=request.path_params["scan_id"], owner_id=owner.id)
    return JSONResponse(scan_public(scan, base_url(request)))


async def delete_scan(request: Request) -> Response:
    """Delete a scan and its images."""
    owner = request_owner(request)
    origin = Origin.of_scope(request.scope)
    db.call_once(
        db.delete_scan,
        replay=db.replay_delete_scan,
        scan_id=request.path_params["scan_id"],
        owner_id=owner.id,
        source_ip=origin.source_ip,
        request_id=origin.request_id,
    )
    return Response(status_code=204)


async def delete_dicomweb(request: Request) -> Response:
    """DICOMweb: delete a study (its scans and its other objects), a series or an instance."""
    owner = request_owner(request)
    uids = {name: path_text(request, name, pattern=UID_PATTERN) for name in request.path_params}
    from shared.dicomweb import deletion  # its SQL and WADO modules load for a DICOMweb DELETE only

    deletion.delete(
        owner_id=owner.id,
        study_uid=uids["study"],
        series_uid=uids.get("series"),
        sop_uid=uids.get("instance"),
        origin=Origin.of_scope(request.scope),
    )
    return Response(status_code=204)


app = create_plain_app(
    [
        Route(SCANS, list_scans, methods=["GET"]),
        Route(SCANS + "/{scan_id}", read_scan, methods=["GET"]),
        Route(SCANS + "/{scan_id}", delete_scan, methods=["DELETE"]),
        Route(STUDY, delete_dicomweb, methods=["DELETE"]),
        Route(SERIES, delete_dicomweb, methods=["DELETE"]),
        Route(INSTANCE, delete_dicomweb, methods=["DELETE"]),
    ]
)
handler = lambda_handler(app)
