"""Ops-invoked function (no HTTP route): create a user or reset a password in a deployed stack.

    npx osls invoke -f admin --stage prod --data '{"action": "create_user", "username": "alice"}'

The password is generated here and returned once in the invocation result; it is never logged.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from shared import auth, db
from shared.errors import DomainError

log = logging.getLogger(__name__)
ACTIONS = ("create_user", "reset_password")


def handler(event: dict[str, Any] | None, context: Any) -> dict[str, Any]:
    """Lambda entry point: {"action": "create_user" | "reset_password", "username": "..."}."""
    event = event or {}
    action, username = event.get("action"), event.get("username")
    if action not in ACTIONS or not isinstance(username, str):
        return {"ok": False, "error": f"send {{'action': one of {list(ACTIONS)}, 'username': '...'}}"}
    exists = db.call(db.get_user_id, username=username) is not None
    if action == "reset_password" and not exists:
        return {"ok": False, "error": f"no user {username!r}"}
    if action == "create_user" and exists:
        return {"ok": False, "error": f"user {username!r} exists; use reset_password"}
    password = secrets.token_urlsafe(18)
    try:
        db.call(auth.create_or_reset_user, username=username, password=password)
    except DomainError as exc:
        return {"ok": False, "error": exc.message}
    log.info("admin %s done", action)
    return {"ok": True, "username": username, "password": password, "note": "shown once; hand it over securely"}
