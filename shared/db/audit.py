"""The audit trail: who did what to which scan, when, from where, and how it ended.

One row in `audit_events` (migration 005) per image read (200, 206, 304; 302 or 503 from S3), scan delete, login
(success, failure, throttled), logout, password change and admin action. A row holds ids, the
action, the outcome, the source IP as the gateway saw it and the request id: never a token, a
password, a file name or anything from a DICOM header. Image reads write their row in the same
statement that reads the image (shared.db.images); everything else calls record().
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from shared.db.protocol import Connection


class Action(StrEnum):
    image_read = "image.read"
    scan_delete = "scan.delete"
    login_success = "login.success"
    login_failure = "login.failure"
    login_throttled = "login.throttled"
    logout = "logout"
    logout_all = "logout.all"
    password_change = "password.change"  # noqa: S105
    admin_create_user = "admin.create_user"
    admin_reset_password = "admin.reset_password"  # noqa: S105
    admin_audit = "admin.audit"
    admin_audit_search = "admin.audit_search"
    dicomweb_store = "dicomweb.store"
    dicomweb_replace = "dicomweb.replace"
    dicomweb_retrieve = "dicomweb.retrieve"
    dicomweb_search = "dicomweb.search"
    dicomweb_delete = "dicomweb.delete"
    viewer_token_create = "viewer_token.create"  # noqa: S105


class Via(StrEnum):
    token = "token"  # noqa: S105 - how a request was authorised, not a secret
    signature = "signature"
    password = "password"  # noqa: S105
    admin = "admin"
    viewer_token = "viewer_token"  # noqa: S105


MAX_SOURCE_IP = 64
MAX_REQUEST_ID = 128


@dataclass(frozen=True)
class Origin:
    """Where a request came from, as API Gateway reports it: the source IP and its request id."""

    source_ip: str | None
    request_id: str | None

    @classmethod
    def of_scope(cls, scope: Any) -> Origin:
        """From an ASGI scope that Mangum built (it carries the Lambda event as `aws.event`)."""
        event = scope.get("aws.event") if isinstance(scope, dict) else None
        return cls.of_event(event)

    @classmethod
    def of_event(cls, event: Any) -> Origin:
        context = event.get("requestContext") if isinstance(event, dict) else None
        if not isinstance(context, dict):
            return cls(None, None)
        http = context.get("http")
        source_ip = http.get("sourceIp") if isinstance(http, dict) else None
        request_id = context.get("requestId")
        return cls(
            source_ip[:MAX_SOURCE_IP] if isinstance(source_ip, str) and source_ip else None,
            request_id[:MAX_REQUEST_ID] if isinstance(request_id, str) and request_id else None,
        )

    @classmethod
    def of_lambda_context(cls, context: Any) -> Origin:
        """An invocation with no HTTP request (ops): no source IP; the Lambda request id, if any."""
        request_id = getattr(context, "aws_request_id", None)
        return cls(None, request_id[:MAX_REQUEST_ID] if isinstance(request_id, str) and request_id else None)


NOWHERE = Origin(None, None)

INSERT_AUDIT_EVENT = """
    INSERT INTO audit_events (user_id, action, scan_id, image_type, via, status, source_ip, request_id, details)
    VALUES (:user_id, :action, :scan_id, :image_type, :via, :status, :source_ip, :request_id,
            CAST(:details AS jsonb))
"""


def record(
    con: Connection,
    *,
    action: Action,
    status: int,
    origin: Origin = NOWHERE,
    user_id: int | None = None,
    scan_id: str | None = None,
    image_type: str | None = None,
    via: Via | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one event to the trail (in the caller's transaction, if any). `details` holds ids and
    counts only (DICOMweb: which scans, how many objects, a search's keyed hashes), never patient data."""
    con.run(
        INSERT_AUDIT_EVENT,
        user_id=user_id,
        action=action.value,
        scan_id=scan_id,
        image_type=image_type,
        via=None if via is None else via.value,
        status=status,
        source_ip=origin.source_ip,
        request_id=origin.request_id,
        details=None if details is None else json.dumps(details),
    )


@dataclass(frozen=True)
class Event:
    """One row of the trail, for `make audit` and the admin function."""

    at: datetime
    user_id: int | None
    username: str | None
    action: str
    scan_id: str | None
    image_type: str | None
    via: str | None
    status: int
    source_ip: str | None
    request_id: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "userId": self.user_id,
            "username": self.username,
            "action": self.action,
            "scanId": self.scan_id,
            "imageType": self.image_type,
            "via": self.via,
            "status": self.status,
            "sourceIp": self.source_ip,
            "requestId": self.request_id,
        }


SELECT_RECENT_EVENTS = """
    SELECT e.at, e.user_id, u.username, e.action, e.scan_id, e.image_type, e.via, e.status, e.source_ip, e.request_id
    FROM audit_events e LEFT JOIN users u ON u.id = e.user_id
    WHERE (CAST(:username AS text) IS NULL OR u.username = CAST(:username AS text))
    ORDER BY e.at DESC, e.id DESC
    LIMIT :limit
"""


def recent(con: Connection, *, username: str | None = None, limit: int = 50) -> list[Event]:
    """The newest events first, of one user or of everyone."""
    rows = con.run(SELECT_RECENT_EVENTS, username=username, limit=limit)
    return [Event(*row) for row in rows]


@dataclass(frozen=True)
class SearchEvent:
    """A DICOMweb search found by one of its keyed hashes: who, when, what it asked and got, from where.
    `hash_index` is the position (from 0) of the (key id, digest) pair that matched it."""

    at: datetime
    user_id: int | None
    username: str | None
    level: str | None
    results: int | None
    via: str | None
    status: int
    source_ip: str | None
    request_id: str | None
    query_keys: list[str]
    hash_index: int


# One index probe per (key id, digest) pair: a search row holds one key id and one digest per
# keyword, so no row matches two pairs. audit_events_search_keys_idx (migration 010) serves the
# containment test, so the answer costs the matching rows, not a scan of the whole trail.
SELECT_SEARCHES_BY_HASH = """
    SELECT e.at, e.user_id, u.username, e.details ->> 'level', CAST(e.details ->> 'results' AS bigint),
           e.via, e.status, e.source_ip, e.request_id,
           ARRAY(SELECT jsonb_object_keys(e.details -> 'keys') ORDER BY 1), CAST(h.n AS integer) - 1
    FROM unnest(CAST(:kids AS text[]), CAST(:digests AS text[])) WITH ORDINALITY AS h (kid, digest, n)
    JOIN audit_events e
      ON e.action = 'dicomweb.search'
     AND e.details -> 'keys' @> jsonb_build_object(CAST(:keyword AS text), h.digest)
     AND e.details ->> 'kid' = h.kid
    LEFT JOIN users u ON u.id = e.user_id
    ORDER BY e.at DESC, e.id DESC
    LIMIT :limit
"""


def find_searches(con: Connection, *, keyword: str, hashes: Sequence[tuple[str, str]], limit: int) -> list[SearchEvent]:
    """The DICOMweb searches whose `keyword` value had one of these (key id, digest) hashes, newest first."""
    if not hashes:
        return []
    rows = con.run(
        SELECT_SEARCHES_BY_HASH,
        kids=[kid for kid, _ in hashes],
        digests=[digest for _, digest in hashes],
        keyword=keyword,
        limit=limit,
    )
    return [SearchEvent(*row) for row in rows]
