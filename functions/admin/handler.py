"""Ops-invoked function (no HTTP route): create a user, reset a password, read the audit trail or
find who searched for a value (a patient's name, say) through DICOMweb.

    npx osls invoke -f admin --stage prod --data '{"action": "create_user", "username": "alice"}'
    npx osls invoke -f admin --stage prod --data '{"action": "audit", "username": "alice", "limit": 20}'
    npx osls invoke -f admin --stage prod \
        --data '{"action": "audit_search", "keyword": "PatientName", "value": "Doe^Jane", "limit": 20}'

The password is generated here and returned once in the invocation result; it is never logged,
nor is a value looked up. Every action is itself audited (admin.create_user, admin.reset_password,
admin.audit, admin.audit_search: the value looked up only as its keyed hash).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from shared import auth, db
from shared.core.errors import DomainError, UserExists
from shared.core.observability import configure_logging
from shared.db import audit
from shared.db.audit import Action, Origin, Via
from shared.dicomweb import audit_search

configure_logging()  # JSON lines through Powertools, as the HTTP functions log
log = logging.getLogger(__name__)
ACTIONS = ("create_user", "reset_password", "audit", "audit_search")
MAX_AUDIT_EVENTS = 1000


def handler(event: dict[str, Any] | None, context: Any) -> dict[str, Any]:
    """Lambda entry point: {"action": "create_user" | "reset_password", "username": "..."}, or
    {"action": "audit", "username": optional, "limit": optional, 1 to 1000, default 50}, or
    {"action": "audit_search", "keyword": "PatientName", "value": "...", "limit": optional, 1 to 1000, default 50}."""
    event = event or {}
    action, username = event.get("action"), event.get("username")
    if action == "audit":
        return recent_events(event, context)
    if action == "audit_search":
        return searches_for_value(event, context)
    if action not in ACTIONS or not isinstance(username, str):
        return {"ok": False, "error": f"send {{'action': one of {list(ACTIONS)}, 'username': '...'}}"}
    password = secrets.token_urlsafe(18)
    # Both are audited (admin.create_user, admin.reset_password), refusals too; a reset ends every session.
    change = auth.create_user if action == "create_user" else auth.reset_password
    try:
        db.call(change, username=username, password=password, origin=Origin.of_lambda_context(context))
    except UserExists:
        return {"ok": False, "error": f"user {username!r} exists; use reset_password"}
    except DomainError as exc:
        return {"ok": False, "error": exc.message}
    log.info("admin %s done", action)
    return {"ok": True, "username": username, "password": password, "note": "shown once; hand it over securely"}


def recent_events(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The newest audit events (of one user, when a username is given); the listing is audited too."""
    username, limit = event.get("username"), event.get("limit", 50)
    if username is not None and not isinstance(username, str):
        return {"ok": False, "error": "username must be a string"}
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_AUDIT_EVENTS:
        return {"ok": False, "error": f"limit must be a whole number from 1 to {MAX_AUDIT_EVENTS}"}

    def read(con: db.Connection) -> list[audit.Event]:
        with db.transaction(con):
            events = audit.recent(con, username=username, limit=limit)
            audit.record(
                con, action=Action.admin_audit, status=200, origin=Origin.of_lambda_context(context), via=Via.admin
            )
        return events

    events = db.call(read)
    return {"ok": True, "events": [e.as_json() for e in events]}


def searches_for_value(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The DICOMweb searches that sent a value for a keyword (by its keyed hash), newest first; audited."""
    keyword, value, limit = event.get("keyword"), event.get("value"), event.get("limit", 50)
    if not isinstance(keyword, str) or not isinstance(value, str):
        return {"ok": False, "error": "send {'action': 'audit_search', 'keyword': 'PatientName', 'value': '...'}"}
    try:
        found = audit_search.find_searches(
            keyword=keyword, value=value, limit=limit, origin=Origin.of_lambda_context(context)
        )
    except DomainError as exc:
        return {"ok": False, "error": exc.message}
    return {"ok": True, **found.as_json()}
