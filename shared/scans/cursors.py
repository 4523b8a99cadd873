"""Opaque list cursors: where a newest-first page, or a series or study page in reading order, ends."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

from shared import db
from shared.core.errors import InvalidParameter
from shared.scans.public import SCAN_ID_PREFIX

_INVALID_CURSOR = "cursor is not valid for this listing; use nextCursor from the previous page of the same listing."
_SERIES_CURSOR = "series"


def encode_cursor(scan: db.Scan) -> str:
    """An opaque cursor that continues a newest-first listing after this scan."""
    return _b64(f"{scan.created_at.astimezone(UTC).isoformat()}|{scan.id}")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) position a cursor stands for; InvalidParameter when it is not one of ours."""
    try:
        moment, scan_id = _unb64(cursor).split("|", 1)
        when = datetime.fromisoformat(moment)
    except ValueError:
        raise InvalidParameter(_INVALID_CURSOR) from None
    if when.tzinfo is None or not scan_id.startswith(SCAN_ID_PREFIX):
        raise InvalidParameter(_INVALID_CURSOR)
    return when, scan_id


def encode_series_cursor(scan: db.Scan) -> str:
    """An opaque cursor that continues a series or study listing (reading order) after this scan."""
    position = db.series_position(scan)
    return _b64(
        "|".join(
            (
                _SERIES_CURSOR,
                str(position.instance_key),
                repr(position.position_key),
                position.scan_id,
                position.series_uid,
            )
        )
    )


def decode_series_cursor(cursor: str) -> db.SeriesPosition:
    """The reading-order position a series cursor stands for; InvalidParameter when it is not one."""
    try:
        kind, instance, position, scan_id, series_uid = _unb64(cursor).split("|", 4)
        result = db.SeriesPosition(series_uid, int(instance), float(position), scan_id)
    except ValueError:
        raise InvalidParameter(_INVALID_CURSOR) from None
    if kind != _SERIES_CURSOR or not scan_id.startswith(SCAN_ID_PREFIX) or not -(2**31) <= result.instance_key < 2**31:
        raise InvalidParameter(_INVALID_CURSOR)
    return result


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _unb64(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("not base64url text") from None
