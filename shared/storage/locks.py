"""The rule that keeps the bucket and the table in step (migration 007, storage_orphans).

Every delete of a `scans/` object holds `pg_advisory_xact_lock` on its key and first checks that no
scan refers to the key, and (the cleanup job) that the key has been on storage_orphans for its grace
period. Every write that makes a scan refer to a key first puts the key on storage_orphans (or
refreshes its `since`) under the same lock, committed, and only then writes the object, holding no
lock while S3 works (shared/scans/uploads.py write_objects); the transaction that commits the
reference takes the lock again. A delete under the lock thus either ends before the write begins,
or sees a fresh `since` and keeps the object, which stays safe for the grace period (an hour, far
past any function's timeout). A crash leaves a row the cleanup job finds, never an object nobody
knows about. (A move between the tiers, shared/jobs/tiering.py, still holds the lock across its
write: a job with no request waiting on it.) A staging object (`uploads/<id>`, a presigned
upload's file) whose upload row is gone is deleted without the lock: no scan ever refers to it.
"""

from __future__ import annotations

from collections.abc import Iterable

from shared import db
from shared.storage.tiers import parse_object_key

LOCK_KEY = "SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"
RECORD_ORPHANS = """
    INSERT INTO storage_orphans (key) SELECT unnest(CAST(:keys AS text[]))
    ON CONFLICT (key) DO UPDATE SET since = now()
"""

FORGET_ORPHANS = "DELETE FROM storage_orphans WHERE key = ANY(CAST(:keys AS text[]))"
KEY_IN_USE = "SELECT s3_key_in_use(:owner_id, :sha256)"


def lock_keys(con: db.Connection, keys: Iterable[str]) -> None:
    """Hold the transaction-scoped lock of each key (sorted: two writers never deadlock)."""
    for key in sorted(set(keys)):
        con.run(LOCK_KEY, key=key)


def record_orphans(con: db.Connection, keys: list[str]) -> None:
    """Note keys about to be written (or no longer referred to): the cleanup job checks them."""
    if keys:
        con.run(RECORD_ORPHANS, keys=keys)


def forget_orphans(con: db.Connection, keys: list[str]) -> None:
    """Drop keys from the orphan list once a committed row refers to them (same transaction)."""
    if keys:
        con.run(FORGET_ORPHANS, keys=keys)


def key_in_use(con: db.Connection, key: str) -> bool:
    """Whether any scan refers to this `scans/` key."""
    owner_id, sha256 = parse_object_key(key)
    return bool(con.run(KEY_IN_USE, owner_id=owner_id, sha256=sha256)[0][0])
