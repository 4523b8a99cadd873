"""Sessions: log in, change the password, log out (here or everywhere), and the owner of a token;
each login, logout and password change leaves a row in the audit trail."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shared import db
from shared.auth.passwords import check_password_length, dummy_hash, hash_password, verify_password
from shared.auth.throttle import reserve_login_attempt, username_key
from shared.auth.tokens import hash_token, new_token
from shared.core.errors import (
    InvalidCredentials,
    InvalidToken,
    TooManyAttempts,
)
from shared.db import audit

# A user's live sessions: issuing one more ends the oldest.
MAX_SESSIONS_PER_USER = 20
WRONG_CREDENTIALS = "Wrong username or password."


@dataclass(frozen=True)
class IssuedSession:
    """A new session's token (shown once) and expiry."""

    token: str
    expires_at: datetime


def issue_session(con: db.Connection, *, user_id: int, ttl_seconds: int) -> IssuedSession:
    """Create a session for a user and return its token (the user's oldest goes beyond the maximum)."""
    token = new_token()
    expires_at = db.create_session(
        con, token_hash=hash_token(token), user_id=user_id, ttl_seconds=ttl_seconds, max_sessions=MAX_SESSIONS_PER_USER
    )
    return IssuedSession(token, expires_at)


def log_in(
    con: db.Connection, *, username: str, password: str, ttl_seconds: int, origin: audit.Origin = audit.NOWHERE
) -> IssuedSession:
    """Check a username and password and open a session; InvalidCredentials or TooManyAttempts otherwise."""
    try:
        credentials = reserve_login_attempt(con, username=username, origin=origin)
    except TooManyAttempts:
        user_id = db.get_user_id(con, username=username)
        audit.record(
            con, action=audit.Action.login_throttled, status=429, origin=origin, user_id=user_id, via=audit.Via.password
        )
        raise
    # An unknown username costs a scrypt hash too, so the time taken does not tell whether it exists.
    valid = verify_password(password, credentials.password_hash if credentials else dummy_hash())
    session = None
    with db.transaction(con):
        if credentials is not None and valid and _password_unchanged(con, credentials, username=username):
            session = issue_session(con, user_id=credentials.user_id, ttl_seconds=ttl_seconds)
        con.commit_with_next_statement()  # the audit row is the last: COMMIT goes with it
        audit.record(
            con,
            action=audit.Action.login_success if session else audit.Action.login_failure,
            status=201 if session else 401,
            origin=origin,
            user_id=credentials.user_id if credentials else None,
            via=audit.Via.password,
        )
    if session is None:
        raise InvalidCredentials(WRONG_CREDENTIALS)
    return session


def change_password(
    con: db.Connection,
    *,
    owner: db.Owner,
    current_password: str,
    new_password: str,
    ttl_seconds: int,
    origin: audit.Origin = audit.NOWHERE,
) -> IssuedSession:
    """Set a new password after checking the current one, end every session of the user and open a
    new one; a wrong current password counts as a failed login (InvalidCredentials, TooManyAttempts)."""
    check_password_length(new_password)
    try:
        credentials = reserve_login_attempt(con, username=owner.username, origin=origin)
    except TooManyAttempts:
        audit.record(
            con,
            action=audit.Action.password_change,
            status=429,
            origin=origin,
            user_id=owner.id,
            via=audit.Via.password,
        )
        raise
    valid = verify_password(current_password, credentials.password_hash if credentials else dummy_hash())
    new_hash = hash_password(new_password) if valid else None
    session = None
    with db.transaction(con):
        if (
            credentials is not None
            and new_hash is not None
            and _password_unchanged(con, credentials, username=owner.username)
        ):
            db.set_user_password(con, username=owner.username, password_hash=new_hash)
            db.delete_user_sessions(con, user_id=owner.id)
            session = issue_session(con, user_id=owner.id, ttl_seconds=ttl_seconds)
        con.commit_with_next_statement()
        audit.record(
            con,
            action=audit.Action.password_change,
            status=201 if session else 401,
            origin=origin,
            user_id=owner.id,
            via=audit.Via.password,
        )
    if session is None:
        raise InvalidCredentials("Wrong current password.")
    return session


def issue_viewer_token(
    con: db.Connection, *, owner: db.Owner, session_token: str, origin: audit.Origin = audit.NOWHERE
) -> IssuedSession:
    """A read-only token for a DICOMweb viewer (OHIF takes it from the address bar): it reads through
    DICOMweb GETs only and ends with the session that minted it; audited."""
    token = new_token()
    with db.transaction(con):
        expires_at = db.create_viewer_token(
            con, token_hash=hash_token(token), session_token_hash=hash_token(session_token)
        )
        if expires_at is None:  # the session ended between authentication and now
            raise InvalidToken("Invalid or expired token.")
        con.commit_with_next_statement()
        audit.record(
            con,
            action=audit.Action.viewer_token_create,
            status=201,
            origin=origin,
            user_id=owner.id,
            via=audit.Via.token,
        )
    return IssuedSession(token, expires_at)


def log_out(con: db.Connection, *, owner: db.Owner, token: str, origin: audit.Origin = audit.NOWHERE) -> None:
    """End the session of this token."""
    with db.transaction(con):
        db.delete_session(con, token_hash=hash_token(token))
        con.commit_with_next_statement()
        audit.record(con, action=audit.Action.logout, status=204, origin=origin, user_id=owner.id, via=audit.Via.token)


def log_out_everywhere(con: db.Connection, *, owner: db.Owner, origin: audit.Origin = audit.NOWHERE) -> int:
    """End every session of the user; returns how many."""
    with db.transaction(con):
        ended = db.delete_user_sessions(con, user_id=owner.id)
        con.commit_with_next_statement()
        audit.record(
            con, action=audit.Action.logout_all, status=204, origin=origin, user_id=owner.id, via=audit.Via.token
        )
    return ended


def _password_unchanged(con: db.Connection, credentials: db.Credentials, *, username: str) -> bool:
    # Locks the user's row for the rest of the transaction: a reset or change that committed after
    # the password was checked wins, and sessions of one user are issued one at a time. When it
    # still holds, the username's failed logins are forgotten in the same statement.
    return db.lock_user_forgetting_failures(
        con,
        user_id=credentials.user_id,
        password_hash=credentials.password_hash,
        username_key=username_key(username),
    )


def authenticate(con: db.Connection, *, token: str) -> db.Owner:
    """The owner of a valid, unexpired token; NotAuthenticated otherwise."""
    owner = db.get_session_owner(con, token_hash=hash_token(token))
    if owner is None:
        raise InvalidToken("Invalid or expired token.")
    return owner


def authenticate_upload(con: db.Connection, *, token: str, file_hash: str) -> tuple[db.Owner, db.Scan | None]:
    """authenticate(), and the owner's scan of a file with this SHA-256 (None: none) in the same
    round trip: an upload's two lookups as one. NotAuthenticated as authenticate() raises it."""
    owner, existing = db.find_owner_and_scan_by_hash(con, token_hash=hash_token(token), file_hash=file_hash)
    if owner is None:
        raise InvalidToken("Invalid or expired token.")
    return owner, existing
