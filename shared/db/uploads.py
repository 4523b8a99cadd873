"""Presigned uploads in progress (table uploads, migration 008): recorded when the POST is signed,
gone when the upload completes, is refused, or expires (the cleanup job)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shared.db.protocol import Connection

INSERT_UPLOAD = """
    INSERT INTO uploads (id, owner_id, filename, max_bytes, expires_at)
    VALUES (:id, :owner_id, :filename, :max_bytes, :expires_at)
"""
SELECT_UPLOAD = """
    SELECT filename, max_bytes FROM uploads WHERE id = :id AND owner_id = :owner_id AND expires_at > now()
"""
DELETE_UPLOAD = "DELETE FROM uploads WHERE id = :id AND owner_id = :owner_id RETURNING id"


@dataclass(frozen=True)
class StagedUpload:
    """An unexpired upload: the client's file name and the size it declared (the POST's limit)."""

    filename: str
    max_bytes: int


def insert_upload(
    con: Connection, *, upload_id: str, owner_id: int, filename: str, max_bytes: int, expires_at: datetime
) -> None:
    """Record an upload whose POST was just signed."""
    con.run(
        INSERT_UPLOAD, id=upload_id, owner_id=owner_id, filename=filename, max_bytes=max_bytes, expires_at=expires_at
    )


def get_upload(con: Connection, *, upload_id: str, owner_id: int) -> StagedUpload | None:
    """This owner's unexpired upload, or None."""
    rows = con.run(SELECT_UPLOAD, id=upload_id, owner_id=owner_id)
    return StagedUpload(rows[0][0], int(rows[0][1])) if rows else None


def delete_upload(con: Connection, *, upload_id: str, owner_id: int) -> bool:
    """Delete this owner's upload; whether there was one."""
    return bool(con.run(DELETE_UPLOAD, id=upload_id, owner_id=owner_id))
