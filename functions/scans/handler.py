"""List, read and delete an owner's scans (metadata and results, never image bytes)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request, Response
from mangum import Mangum

from shared import db
from shared.http import Owner, base_url, create_app
from shared.scans import decode_cursor, encode_cursor, scan_public, scan_summary

app = create_app("scans")


@app.get("/api/v1/scans")
async def list_scans(
    request: Request,
    owner: Owner,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    before = decode_cursor(cursor) if cursor else None
    # One extra row tells us whether there is a next page.
    rows = db.call(db.list_scans_for_owner, owner_id=owner.id, limit=limit + 1, before=before)
    page = rows[:limit]
    root = base_url(request)
    return {
        "items": [scan_summary(scan, root) for scan in page],
        "nextCursor": encode_cursor(page[-1]) if len(rows) > limit else None,
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
