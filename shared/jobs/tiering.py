"""Moving existing images between the tiers: the tiering function, `make move-to-s3` and
`make move-to-postgres` (README, "Two storage tiers").

Online, verified, one image per transaction, resumable:

- To S3: the key goes on the orphan list (committed) before anything is written; then one
  transaction holds the key's lock, reads the bytes from PostgreSQL, writes the object (S3 checks
  its SHA-256), reads it back and hashes it, and only if that matches the row's hash clears the
  column (an UPDATE that also checks the image is still in PostgreSQL with that hash) and takes the
  key off the list. Readers see the old row version until the commit, the new one after (MVCC).
- To PostgreSQL: one transaction holds the key's lock, fetches the object, checks its SHA-256,
  writes the bytes into the column and lists the key as an orphan (this row no longer refers to it).
  The object is not deleted here: a reader that saw the image in S3 just before the commit still
  fetches it. The cleanup job deletes it once it has been listed for its grace period (an hour).

A kill at any point leaves each image either where it was or where it went: at worst an object in
the bucket that no row refers to, whose key is on the orphan list for the cleanup job. A rerun
selects what is still to move and finishes it.

Column names are formatted into SQL only from COLUMNS, a fixed mapping of the four image kinds.

Moving to S3 with STORAGE_TIER_S3_MIN_BYTES unset needs an explicit min_bytes (1 moves every
image): with no threshold the service keeps images in PostgreSQL, so a move of everything must be
asked for, never a default.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from shared import db, storage
from shared.core.config import Settings
from shared.core.errors import StorageUnavailable
from shared.db import ImageType
from shared.jobs.deadline import Deadline

log = logging.getLogger(__name__)

TO_S3 = "to-s3"
TO_POSTGRES = "to-postgres"
DIRECTIONS = (TO_S3, TO_POSTGRES)
# Candidates one query selects: enough to amortise the query, few enough to keep it quick.
BATCH_IMAGES = 100
# With a deadline (the Lambda's), start no image this long before it: the slowest image (a 1 GB
# bytea to S3 and back) must finish, and the report must get out. As the cleanup job does.
STOP_BEFORE_DEADLINE_SECONDS = 60.0
# Without a deadline (make move-to-s3), how long one statement may wait on the socket.
LOCAL_STATEMENT_TIMEOUT_SECONDS = 3600.0
# The report lists at most this many skipped (or kept) images by id; their counts are always whole.
MAX_LISTED = 50

GONE = "the scan was deleted, or the image moved, while this run was at it"
CORRUPT = "the bytes in PostgreSQL do not match the image's recorded SHA-256: left where they are"
TOO_LARGE = (
    f"larger than the {storage.MAX_INLINE_BYTES} bytes a function can answer from PostgreSQL: "
    "kept in S3 (served by a redirect to a presigned GET)"
)


@dataclass(frozen=True)
class _Columns:
    data: str
    hash: str
    storage: str
    size: str
    content_type: str  # an SQL expression of the scans row


# The only text formatted into SQL: one entry per image kind, never anything from a request.
COLUMNS = {
    ImageType.annotated: _Columns(
        "annotated_image_data", "annotated_hash", "annotated_storage", "annotated_size", "'image/jpeg'"
    ),
    ImageType.original: _Columns(
        "original_image_data", "file_hash", "original_storage", "original_size", "content_type"
    ),
    ImageType.preview: _Columns(
        "preview_image_data", "preview_hash", "preview_storage", "preview_size", "'image/jpeg'"
    ),
    ImageType.thumbnail: _Columns(
        "thumbnail_image_data", "thumbnail_hash", "thumbnail_storage", "thumbnail_size", "'image/jpeg'"
    ),
}

# Each image of each scan as a row. A PostgreSQL image's size is octet_length() of its column, which
# reads the TOAST pointer only; an S3 image's is in the row. A scan with no preview (from before
# 004) has none to move: its size is NULL and no comparison selects it.
_IMAGES = (
    "(VALUES "
    + ", ".join(
        f"('{kind.value}', s.{c.hash}, s.{c.storage}, COALESCE(s.{c.size}, octet_length(s.{c.data})), {c.content_type})"
        for kind, c in COLUMNS.items()
    )
    + ") AS m (kind, sha256, storage, size, content_type)"
)
_CANDIDATES = f"""
    FROM scans s CROSS JOIN LATERAL {_IMAGES}
    WHERE m.storage = :from_tier AND m.size >= :min_bytes
      AND (CAST(:max_bytes AS bigint) IS NULL OR m.size <= CAST(:max_bytes AS bigint))
      AND (CAST(:before AS timestamptz) IS NULL OR s.created_at < CAST(:before AS timestamptz))
"""
# Keyset pagination by (scan id, kind): a skipped image is never selected twice in one run.
SELECT_CANDIDATES = f"""
    SELECT s.id, m.kind, s.owner_id, m.sha256, m.size, m.content_type
    {_CANDIDATES}
      AND s.id >= CAST(:after_id AS text) AND (s.id, m.kind) > (CAST(:after_id AS text), CAST(:after_kind AS text))
    ORDER BY s.id, m.kind
    LIMIT :batch
"""
COUNT_CANDIDATES = f"SELECT count(*) {_CANDIDATES}"

SELECT_POSTGRES_BYTES = "SELECT {data} FROM scans WHERE id = :scan_id AND {storage} = 'postgres' AND {hash} = :sha256"
STILL_IN_S3 = "SELECT 1 FROM scans WHERE id = :scan_id AND {storage} = 's3' AND {hash} = :sha256"
# The WHERE re-checks what the move read: a scan deleted or an image moved meanwhile updates nothing.
UPDATE_TO_S3 = """
    UPDATE scans SET {storage} = 's3', {size} = CAST(:size AS bigint), {data} = NULL
    WHERE id = :scan_id AND {storage} = 'postgres' AND {hash} = :sha256
"""
UPDATE_TO_POSTGRES = """
    UPDATE scans SET {data} = :data, {storage} = 'postgres', {size} = NULL
    WHERE id = :scan_id AND {storage} = 's3' AND {hash} = :sha256
"""


def _sql(template: str, kind: ImageType) -> str:
    c = COLUMNS[kind]
    return template.format(data=c.data, hash=c.hash, storage=c.storage, size=c.size)


class BadMoveRequest(ValueError):
    """A move asked for with bad parameters, or one this deployment cannot do (no bucket)."""


class CopyMismatch(Exception):
    """A copy's bytes do not hash to the row's SHA-256 (nothing was cleared)."""


class Progress(Protocol):
    """What a caller may watch a run by (manage.py draws a progress bar)."""

    def begin(self, total: int) -> None: ...

    def step(self, moved_bytes: int) -> None: ...


@dataclass(frozen=True)
class Candidate:
    scan_id: str
    kind: ImageType
    owner_id: int
    sha256: str
    size: int
    content_type: str

    @property
    def key(self) -> str:
        return storage.object_key(self.owner_id, self.sha256)


@dataclass
class _Tally:
    """Images left where they are, by reason; the first MAX_LISTED by id."""

    count: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    images: list[dict[str, Any]] = field(default_factory=list)

    def add(self, image: Candidate, reason: str) -> None:
        self.count += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if len(self.images) < MAX_LISTED:
            self.images.append(
                {"scanId": image.scan_id, "kind": image.kind.value, "bytes": image.size, "reason": reason}
            )

    def as_json(self) -> dict[str, Any]:
        return {"count": self.count, "reasons": self.reasons, "images": self.images}


# ---------------------------------------------------------------- parameters


_AGE = re.compile(r"^\s*(\d{1,6})\s*([smhdw])\s*$")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_older_than(value: str | datetime, *, now: datetime | None = None) -> datetime:
    """The cut-off time of `older_than`: an age ("30d"; s, m = minutes, h, d, w) before now, or an
    ISO 8601 timestamp with its time zone ("2026-01-31T00:00:00Z")."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise BadMoveRequest("olderThan: a timestamp needs its time zone (Z or +hh:mm)")
        return value
    if not isinstance(value, str):
        raise BadMoveRequest("olderThan: an age like '30d' or an ISO 8601 timestamp with time zone")
    age = _AGE.match(value)
    if age is not None:
        return (now or datetime.now(UTC)) - timedelta(**{_AGE_UNITS[age.group(2)]: int(age.group(1))})
    try:
        cutoff = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadMoveRequest(
            f"olderThan: {value[:40]!r} is neither an age (30d, 12h, 90m, 2w) nor an ISO 8601 timestamp"
        ) from None
    if cutoff.tzinfo is None:
        raise BadMoveRequest("olderThan: a timestamp needs its time zone (Z or +hh:mm)")
    return cutoff


def _positive(name: str, value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadMoveRequest(f"{name}: a whole number of at least 1")
    return value


@dataclass(frozen=True)
class MoveRequest:
    """A validated move: the tiering function's event, or manage.py's arguments."""

    direction: str
    older_than: datetime | None = None
    min_bytes: int | None = None
    limit: int | None = None

    @classmethod
    def from_event(cls, event: object) -> MoveRequest:
        """{"direction": "to-s3" | "to-postgres", "olderThan"?, "minBytes"?, "limit"?}; BadMoveRequest otherwise."""
        if not isinstance(event, dict):
            raise BadMoveRequest(_USAGE)
        unknown = sorted(set(event) - {"direction", "olderThan", "minBytes", "limit"})
        if unknown:
            raise BadMoveRequest(f"unknown fields {unknown}: {_USAGE}")
        direction = event.get("direction")
        if direction not in DIRECTIONS:
            raise BadMoveRequest(f"direction: one of {list(DIRECTIONS)}; {_USAGE}")
        if direction == TO_POSTGRES and ("olderThan" in event or "minBytes" in event):
            raise BadMoveRequest("olderThan and minBytes select images to move to S3; to-postgres takes only limit")
        older_than = event.get("olderThan")
        return cls(
            direction=direction,
            older_than=None if older_than is None else parse_older_than(older_than),
            min_bytes=_positive("minBytes", event.get("minBytes")),
            limit=_positive("limit", event.get("limit")),
        )


_USAGE = (
    "send {'direction': 'to-s3' | 'to-postgres', 'olderThan'?: '30d' or an ISO 8601 timestamp, "
    "'minBytes'?: bytes, 'limit'?: images} (olderThan and minBytes: to-s3 only)"
)


def run(settings: Settings, request: MoveRequest, **kwargs: Any) -> dict[str, Any]:
    """move_to_s3 or move_to_postgres, as the request says."""
    if request.direction == TO_S3:
        return move_to_s3(
            settings, min_bytes=request.min_bytes, older_than=request.older_than, limit=request.limit, **kwargs
        )
    return move_to_postgres(settings, limit=request.limit, **kwargs)


# ---------------------------------------------------------------- the runs


def move_to_s3(
    settings: Settings,
    *,
    min_bytes: int | None = None,
    older_than: str | datetime | None = None,
    limit: int | None = None,
    deadline: float | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Move PostgreSQL images of at least min_bytes (default STORAGE_TIER_S3_MIN_BYTES; required
    when that is unset) of scans created before older_than, at most `limit` of them, to S3.

    deadline: time.monotonic() by which the run must have answered (the Lambda's), or None.
    Returns the report (see _report). BadMoveRequest when it cannot run as asked.
    """
    store = _store(settings)
    threshold = min_bytes if min_bytes is not None else settings.storage_tier_s3_min_bytes
    if threshold is None:
        raise BadMoveRequest(
            "STORAGE_TIER_S3_MIN_BYTES is unset, so no image belongs in S3 by size: give minBytes "
            "(--min-bytes, MIN_BYTES=) to say which to move (1 moves every image)"
        )
    _positive("minBytes", threshold)
    cutoff = None if older_than is None else parse_older_than(older_than)
    criteria = {"from_tier": storage.POSTGRES, "min_bytes": threshold, "max_bytes": None, "before": cutoff}
    shown = {"minBytes": threshold, "olderThan": None if cutoff is None else cutoff.isoformat(), "limit": limit}
    return _run(
        settings, TO_S3, criteria, shown, limit, deadline, progress, lambda con, image: _to_s3(con, store, image)
    )


def move_to_postgres(
    settings: Settings,
    *,
    limit: int | None = None,
    deadline: float | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Move S3 images back into PostgreSQL, at most `limit` of them; their objects are left listed
    for the cleanup job (readers that saw them in S3 a moment before may still fetch them).

    An image larger than storage.MAX_INLINE_BYTES stays in S3 (reported as "kept"): from
    PostgreSQL a function could not answer it whole, while from S3 it is a redirect.
    """
    store = _store(settings)
    criteria = {"from_tier": storage.S3, "min_bytes": 0, "max_bytes": storage.MAX_INLINE_BYTES, "before": None}
    shown = {"limit": limit}
    return _run(
        settings,
        TO_POSTGRES,
        criteria,
        shown,
        limit,
        deadline,
        progress,
        lambda con, image: _to_postgres(con, store, image),
    )


def _store(settings: Settings) -> storage.ObjectStore:
    if settings.images_bucket is None:
        raise BadMoveRequest("IMAGES_BUCKET is not set: there is no S3 tier to move images to or from")
    return storage.ObjectStore(settings.images_bucket)


# What moving one image did: ("moved", bytes) or ("skipped", reason).
_Outcome = tuple[str, int | str]
_Mover = Callable[[db.Connection, Candidate], _Outcome]


def _run(
    settings: Settings,
    direction: str,
    criteria: dict[str, Any],
    shown: dict[str, Any],
    limit: int | None,
    deadline: float | None,
    progress: Progress | None,
    move: _Mover,
) -> dict[str, Any]:
    started = time.monotonic()
    clock = Deadline(deadline, stop_before=STOP_BEFORE_DEADLINE_SECONDS)
    moved = moved_bytes = 0
    skipped, kept = _Tally(), _Tally()
    stopped: str | None = None
    error: dict[str, Any] | None = None
    # A connection of its own, as the cleanup job: a generous connect timeout (a cold database).
    con = db.connect(settings.database, timeout=max(settings.db_timeout_seconds, 60.0))
    try:
        left = clock.left()
        con.default_timeout = LOCAL_STATEMENT_TIMEOUT_SECONDS if left is None else max(left, 1.0)
        if progress is not None:
            total = _count(con, criteria)
            progress.begin(total if limit is None else min(total, limit))
        if direction == TO_POSTGRES:
            for image in _candidates(con, {**criteria, "min_bytes": storage.MAX_INLINE_BYTES + 1, "max_bytes": None}):
                kept.add(image, TOO_LARGE)
        for image in _candidates(con, criteria):
            if limit is not None and moved >= limit:
                stopped = "limit"
                break
            if clock.stopping():
                stopped = "time"
                break
            try:
                outcome, detail = move(con, image)
            except (StorageUnavailable, CopyMismatch) as exc:
                # Nothing of this image was cleared (its transaction rolled back). Stop: an S3 that
                # refuses or returns other bytes is not a problem the next image will not have.
                error = {"scanId": image.scan_id, "kind": image.kind.value, "error": str(exc)}
                stopped = "error"
                log.warning("tiering %s stopped at %s/%s: %s", direction, image.scan_id, image.kind.value, exc)
                break
            if outcome == "moved":
                moved += 1
                moved_bytes += int(detail)
            else:
                skipped.add(image, str(detail))
            if progress is not None:
                progress.step(int(detail) if outcome == "moved" else 0)
        remaining = _count(con, criteria)
    finally:
        con.close()
    report: dict[str, Any] = {
        "direction": direction,
        "status": "done" if remaining == 0 and error is None else "partial",
        "moved": moved,
        "bytesMoved": moved_bytes,
        "skipped": skipped.as_json(),
        "kept": kept.as_json(),
        "remaining": remaining,
        "stoppedBy": stopped,
        "criteria": shown,
        "seconds": round(time.monotonic() - started, 3),
    }
    if error is not None:
        report["error"] = error
    return report


def _count(con: db.Connection, criteria: dict[str, Any]) -> int:
    return int(con.run(COUNT_CANDIDATES, **criteria)[0][0])


def _candidates(con: db.Connection, criteria: dict[str, Any]) -> Iterator[Candidate]:
    """The images the criteria select, BATCH_IMAGES per query, by (scan id, kind)."""
    after_id, after_kind = "", ""
    while True:
        rows = con.run(SELECT_CANDIDATES, **criteria, after_id=after_id, after_kind=after_kind, batch=BATCH_IMAGES)
        for scan_id, kind, owner_id, sha256, size, content_type in rows:
            yield Candidate(scan_id, ImageType(kind), int(owner_id), sha256, int(size), content_type)
        if len(rows) < BATCH_IMAGES:
            return
        after_id, after_kind = rows[-1][0], rows[-1][1]


def _to_s3(con: db.Connection, store: storage.ObjectStore, image: Candidate) -> _Outcome:
    """Copy one image to S3, verify the copy, then clear its column, in one transaction."""
    key, kind = image.key, image.kind
    storage.record_orphans(con, [key])  # committed before the object is written
    with db.transaction(con):
        storage.lock_keys(con, [key])
        rows = con.run_with_raw_bytes(
            _sql(SELECT_POSTGRES_BYTES, kind),
            {"scan_id": image.scan_id, "sha256": image.sha256},
            column_count=1,
            raw_column=0,
        )
        if not rows or rows[0][0] is None:
            return "skipped", GONE  # the key stays listed: the cleanup job checks it
        data: bytes = rows[0][0]
        if hashlib.sha256(data).hexdigest() != image.sha256:
            return "skipped", CORRUPT
        store.put(key, data, content_type=image.content_type, sha256=image.sha256)
        if store.sha256_of(key) != image.sha256:
            raise CopyMismatch("the copy read back from S3 does not match the image's SHA-256; nothing was cleared")
        con.run(_sql(UPDATE_TO_S3, kind), scan_id=image.scan_id, sha256=image.sha256, size=len(data))
        if con.row_count != 1:
            return "skipped", GONE
        storage.forget_orphans(con, [key])
    return "moved", len(data)


def _to_postgres(con: db.Connection, store: storage.ObjectStore, image: Candidate) -> _Outcome:
    """Copy one image from S3 into its column (verified); the object goes on the orphan list."""
    key, kind = image.key, image.kind
    with db.transaction(con):
        storage.lock_keys(con, [key])
        # Under the lock no cleanup deletes the object; a scan deleted from here on keeps it too.
        if not con.run(_sql(STILL_IN_S3, kind), scan_id=image.scan_id, sha256=image.sha256):
            return "skipped", GONE
        data = store.get(key)
        if len(data) != image.size or hashlib.sha256(data).hexdigest() != image.sha256:
            raise CopyMismatch("the object in S3 does not match the image's size and SHA-256; nothing was changed")
        con.run(_sql(UPDATE_TO_POSTGRES, kind), scan_id=image.scan_id, sha256=image.sha256, data=data)
        if con.row_count != 1:
            return "skipped", GONE
        storage.record_orphans(con, [key])  # this row no longer refers to the object: cleanup deletes it
    return "moved", len(data)
