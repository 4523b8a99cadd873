"""List, read and delete an owner's scans (metadata and results, never image bytes); and delete
studies, series and instances through DICOMweb (shared.dicomweb.deletion)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query, Request, Response

from shared import db
from shared.db.audit import Origin
from shared.dicomweb import DICOMWEB_ROOT, UID_PATTERN
from shared.http.app import Owner, base_url, create_app, lambda_handler
from shared.http.schemas import ScanPage, ScanPublic, error_responses
from shared.scans import (
    decode_cursor,
    decode_series_cursor,
    encode_cursor,
    encode_series_cursor,
    scan_public,
    scan_summary,
)

app = create_app("scans")


@app.get(
    "/api/v1/scans",
    response_model=None,
    responses={200: {"model": ScanPage}, **error_responses(400, 401, 422, 503)},
    summary="List the caller's scans: newest first, or one series or study in reading order",
)
async def list_scans(
    request: Request,
    owner: Owner,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    series_instance_uid: Annotated[str | None, Query(alias="seriesInstanceUid", pattern=UID_PATTERN)] = None,
    study_instance_uid: Annotated[str | None, Query(alias="studyInstanceUid", pattern=UID_PATTERN)] = None,
    dicom: Annotated[
        bool | None, Query(description="true: only DICOM files; false: only PNG and JPEG (newest first only)")
    ] = None,
) -> dict[str, Any]:
    # One extra row tells us whether there is a next page.
    if series_instance_uid or study_instance_uid:
        # One series (or study) in reading order: instance number, then slice position.
        after = decode_series_cursor(cursor) if cursor else db.SERIES_START
        rows = db.call(
            db.list_scans_in_series,
            owner_id=owner.id,
            limit=limit + 1,
            series_uid=series_instance_uid,
            study_uid=study_instance_uid,
            after=after,
        )
        encode = encode_series_cursor
    else:
        before = decode_cursor(cursor) if cursor else None
        rows = db.call(db.list_scans_for_owner, owner_id=owner.id, limit=limit + 1, before=before, dicom=dicom)
        encode = encode_cursor
    page = rows[:limit]
    root = base_url(request)
    return {
        "items": [scan_summary(scan, root) for scan in page],
        "nextCursor": encode(page[-1]) if len(rows) > limit else None,
    }


@app.get(
    "/api/v1/scans/{scan_id}",
    response_model=None,
    responses={200: {"model": ScanPublic}, **error_responses(400, 401, 404, 503)},
    summary="One scan with its analysis",
)
async def read_scan(scan_id: str, request: Request, owner: Owner) -> dict[str, Any]:
    scan = db.call(db.get_scan, scan_id=scan_id, owner_id=owner.id)
    return scan_public(scan, base_url(request))


@app.delete(
    "/api/v1/scans/{scan_id}",
    status_code=204,
    response_model=None,
    responses=error_responses(400, 401, 404, 503),
    summary="Delete a scan and its images",
)
async def delete_scan(scan_id: str, owner: Owner, request: Request) -> Response:
    origin = Origin.of_scope(request.scope)
    db.call_once(
        db.delete_scan,
        replay=db.replay_delete_scan,
        scan_id=scan_id,
        owner_id=owner.id,
        source_ip=origin.source_ip,
        request_id=origin.request_id,
    )
    return Response(status_code=204)


StudyUid = Annotated[str, Path(pattern=UID_PATTERN, description="Study Instance UID")]
SeriesUid = Annotated[str, Path(pattern=UID_PATTERN, description="Series Instance UID")]
InstanceUid = Annotated[str, Path(pattern=UID_PATTERN, description="SOP Instance UID")]
_DELETED = dict(status_code=204, response_model=None, responses=error_responses(400, 401, 404, 503))


@app.delete(
    DICOMWEB_ROOT + "/studies/{study}",
    summary="DICOMweb: delete a study (its scans, and its other objects)",
    **_DELETED,  # type: ignore[arg-type]
)
async def delete_study(study: StudyUid, owner: Owner, request: Request) -> Response:
    from shared.dicomweb import deletion  # its SQL and WADO modules load for a DICOMweb DELETE only

    deletion.delete(
        owner_id=owner.id, study_uid=study, series_uid=None, sop_uid=None, origin=Origin.of_scope(request.scope)
    )
    return Response(status_code=204)


@app.delete(
    DICOMWEB_ROOT + "/studies/{study}/series/{series}",
    summary="DICOMweb: delete a series",
    **_DELETED,  # type: ignore[arg-type]
)
async def delete_series(study: StudyUid, series: SeriesUid, owner: Owner, request: Request) -> Response:
    from shared.dicomweb import deletion  # its SQL and WADO modules load for a DICOMweb DELETE only

    deletion.delete(
        owner_id=owner.id, study_uid=study, series_uid=series, sop_uid=None, origin=Origin.of_scope(request.scope)
    )
    return Response(status_code=204)


@app.delete(
    DICOMWEB_ROOT + "/studies/{study}/series/{series}/instances/{instance}",
    summary="DICOMweb: delete an instance",
    **_DELETED,  # type: ignore[arg-type]
)
async def delete_instance(
    study: StudyUid, series: SeriesUid, instance: InstanceUid, owner: Owner, request: Request
) -> Response:
    from shared.dicomweb import deletion  # its SQL and WADO modules load for a DICOMweb DELETE only

    deletion.delete(
        owner_id=owner.id, study_uid=study, series_uid=series, sop_uid=instance, origin=Origin.of_scope(request.scope)
    )
    return Response(status_code=204)


handler = lambda_handler(app)
