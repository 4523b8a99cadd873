"""Accounts, as ops manage them (the admin function, make user): create a user, reset a password;
audited as admin actions, refusals too."""

from __future__ import annotations

from shared import db
from shared.auth.passwords import check_password_length, hash_password
from shared.core.errors import (
    DomainError,
    InvalidRequest,
    UserNotFound,
)
from shared.db import audit


def create_user(con: db.Connection, *, username: str, password: str, origin: audit.Origin = audit.NOWHERE) -> int:
    """Create a user (audited as an admin action, refusals too); UserExists when the name is taken."""
    try:
        return _create_user(con, username=username, password_hash=_new_password_hash(username, password), origin=origin)
    except DomainError:
        _record_refusal(con, action=audit.Action.admin_create_user, username=username, origin=origin)
        raise


def reset_password(con: db.Connection, *, username: str, password: str, origin: audit.Origin = audit.NOWHERE) -> int:
    """Set a user's password and end all their sessions (audited, refusals too); UserNotFound otherwise."""
    try:
        user_id = _reset_password(
            con, username=username, password_hash=_new_password_hash(username, password), origin=origin
        )
        if user_id is None:
            raise UserNotFound(f"no user {username!r}")
    except DomainError:
        _record_refusal(con, action=audit.Action.admin_reset_password, username=username, origin=origin)
        raise
    return user_id


def create_or_reset_user(
    con: db.Connection, *, username: str, password: str, origin: audit.Origin = audit.NOWHERE
) -> bool:
    """Create a user, or set the password of an existing one and end its sessions; True when created."""
    password_hash = _new_password_hash(username, password)
    if _reset_password(con, username=username, password_hash=password_hash, origin=origin) is not None:
        return False
    _create_user(con, username=username, password_hash=password_hash, origin=origin)
    return True


def _new_password_hash(username: str, password: str) -> str:
    if not 1 <= len(username) <= 64:
        raise InvalidRequest("username must be 1 to 64 characters")
    check_password_length(password)
    return hash_password(password)


def _create_user(con: db.Connection, *, username: str, password_hash: str, origin: audit.Origin) -> int:
    with db.transaction(con):
        user_id = db.create_user(con, username=username, password_hash=password_hash)
        audit.record(
            con, action=audit.Action.admin_create_user, status=200, origin=origin, user_id=user_id, via=audit.Via.admin
        )
    return user_id


def _reset_password(con: db.Connection, *, username: str, password_hash: str, origin: audit.Origin) -> int | None:
    with db.transaction(con):
        user_id = db.set_user_password(con, username=username, password_hash=password_hash)
        if user_id is not None:
            db.delete_user_sessions(con, user_id=user_id)
            audit.record(
                con,
                action=audit.Action.admin_reset_password,
                status=200,
                origin=origin,
                user_id=user_id,
                via=audit.Via.admin,
            )
    return user_id


def _record_refusal(con: db.Connection, *, action: audit.Action, username: str, origin: audit.Origin) -> None:
    user_id = db.get_user_id(con, username=username) if len(username) <= 64 else None
    audit.record(con, action=action, status=400, origin=origin, user_id=user_id, via=audit.Via.admin)
