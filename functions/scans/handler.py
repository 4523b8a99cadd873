"""List, read and delete an owner's scans (metadata and results, never image bytes)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request, Response
from mangum import Mangum

from shared import db
from shared.http import Owner, base_url, create_app
from shared.scans import (
    decode_cursor,
    decode_series_cursor,
    encode_cursor,
    encode_series_cursor,
    scan_public,
    scan_summary,
)

app = create_app("scans")

# A DICOM UID: digits and dots, at most 64 characters (PS3.5 9.1).
UID_PATTERN = r"^[0-9][0-9.]{0,63}$"


@app.get("/api/v1/scans")
async def list_scans(
    request: Request,
    owner: Owner,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    series_instance_uid: Annotated[str | None, Query(alias="seriesInstanceUid", pattern=UID_PATTERN)] = None,
    study_instance_uid: Annotated[str | None, Query(alias="studyInstanceUid", pattern=UID_PATTERN)] = None,
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
        rows = db.call(db.list_scans_for_owner, owner_id=owner.id, limit=limit + 1, before=before)
        encode = encode_cursor
    page = rows[:limit]
    root = base_url(request)
    return {
        "items": [scan_summary(scan, root) for scan in page],
        "nextCursor": encode(page[-1]) if len(rows) > limit else None,
    }


@app.get("/api/v1/scans/{scan_id}")
async def read_scan(scan_id: str, request: Request, owner: Owner) -> dict[str, Any]:
    scan = db.call(db.get_scan, scan_id=scan_id, owner_id=owner.id)
    return scan_public(scan, base_url(request))


@app.delete("/api/v1/scans/{scan_id}", status_code=204)
async def delete_scan(scan_id: str, owner: Owner) -> Response:
    db.call(db.delete_scan, scan_id=scan_id, owner_id=owner.id)
    return Response(status_code=204)


handler = Mangum(app, lifespan="off")
