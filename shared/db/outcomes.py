"""Writes that a retry must not run twice (table request_outcomes, migration 011).

db.call runs its function again after a network error. When that error came after the COMMIT had
gone through (only the reply was lost), a second run of a write answers as if the first had not
happened: the scan is already gone (404, audited twice), the upload already stored ("duplicate"),
the presigned upload already completed (404). call_once runs a write whose transaction records its
outcome under a key made once per call (record_outcome); before the retry runs it again, it looks
the key up, and when the first attempt committed, answers what that attempt did (replay).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from pg8000.exceptions import DatabaseError

from shared.db.connection import UNIQUE_VIOLATION, call, sqlstate
from shared.db.protocol import Connection

log = logging.getLogger(__name__)

R = TypeVar("R")

INSERT_OUTCOME = "INSERT INTO request_outcomes (key, result) VALUES (CAST(:key AS uuid), CAST(:result AS jsonb))"
SELECT_OUTCOME = "SELECT result FROM request_outcomes WHERE key = CAST(:key AS uuid)"
# What the cleanup job removes: a retry follows its first attempt within the invocation, seconds later.
DELETE_OLD_OUTCOMES = """
    DELETE FROM request_outcomes WHERE key IN (
        SELECT key FROM request_outcomes WHERE created_at < now() - interval '1 day' LIMIT :batch_rows)
"""
OUTCOME_KEY_CONSTRAINT = "request_outcomes_pkey"


def record_outcome(con: Connection, *, key: str, result: dict[str, Any]) -> None:
    """Record a write's outcome under its call's key, in the write's own transaction."""
    con.run(INSERT_OUTCOME, key=key, result=json.dumps(result))


def find_outcome(con: Connection, *, key: str) -> dict[str, Any] | None:
    """The outcome recorded under this key, None when no attempt committed one."""
    rows = con.run(SELECT_OUTCOME, key=key)
    return dict(rows[0][0]) if rows else None


def call_once(fn: Callable[..., R], /, *, replay: Callable[[Connection, dict[str, Any]], R], **kwargs: Any) -> R:
    """db.call for a write that must not run twice: fn(con, outcome_key=key, **kwargs), where fn
    records its outcome with record_outcome(con, key=outcome_key, ...) in its transaction.

    The key is made once, here, and carried through db.call's retry. A retry first looks the key up:
    when the first attempt committed, replay(con, outcome) answers for it and fn does not run again.
    If the first attempt's COMMIT lands while the retry runs (its reply was late, not lost), the
    retry's own record_outcome meets the key (unique violation): its transaction rolls back and the
    first attempt's outcome is answered all the same.
    """
    key = str(uuid.uuid4())
    attempts = 0

    def attempt(con: Connection) -> R:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            found = find_outcome(con, key=key)
            if found is not None:
                log.warning("a retried write had committed on its first attempt: answering that attempt's outcome")
                return replay(con, found)
        try:
            return fn(con, outcome_key=key, **kwargs)
        except DatabaseError as exc:
            detail = exc.args[0] if exc.args else None
            constraint = detail.get("n") if isinstance(detail, dict) else None
            if attempts > 1 and sqlstate(exc) == UNIQUE_VIOLATION and constraint == OUTCOME_KEY_CONSTRAINT:
                found = find_outcome(con, key=key)
                if found is not None:
                    return replay(con, found)
            raise

    return call(attempt)
