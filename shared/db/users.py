"""Users, their sessions (by token hash) and the login throttle's failures."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pg8000.exceptions import DatabaseError

from shared.core.errors import UserExists
from shared.db.connection import UNIQUE_VIOLATION, sqlstate
from shared.db.protocol import Connection


@dataclass(frozen=True)
class Owner:
    """The authenticated user a request acts for."""

    id: int
    username: str


@dataclass(frozen=True)
class Credentials:
    """A user's id and stored password hash, for login."""

    user_id: int
    password_hash: str


INSERT_USER = """
    INSERT INTO users (username, password_hash) VALUES (:username, :password_hash) RETURNING id
"""
UPDATE_USER_PASSWORD = "UPDATE users SET password_hash = :password_hash WHERE username = :username RETURNING id"  # noqa: S105
SELECT_USER_ID = "SELECT id FROM users WHERE username = :username"
# The new session, and in the same statement the end of the user's expired sessions and of the
# oldest live ones beyond :max_sessions - 1 others (the DELETE sees the table without the new row).
INSERT_SESSION = """
    WITH ended AS (
        DELETE FROM sessions
        WHERE user_id = CAST(:user_id AS bigint)
          AND (expires_at <= now() OR token_hash IN (
              SELECT token_hash FROM sessions
              WHERE user_id = CAST(:user_id AS bigint) AND expires_at > now()
              ORDER BY created_at DESC, token_hash DESC
              OFFSET CAST(:max_sessions AS integer) - 1))
    )
    INSERT INTO sessions (token_hash, user_id, expires_at)
    VALUES (:token_hash, CAST(:user_id AS bigint), now() + make_interval(secs => :ttl_seconds))
    RETURNING expires_at
"""
SELECT_SESSION_OWNER = """
    SELECT u.id, u.username FROM sessions s JOIN users u ON u.id = s.user_id
    WHERE s.token_hash = :token_hash AND s.expires_at > now()
"""
DELETE_SESSION = "DELETE FROM sessions WHERE token_hash = :token_hash"
# A viewer token lives as long as the session that mints it (migration 010: it ends with it).
INSERT_VIEWER_TOKEN = """
    INSERT INTO viewer_tokens (token_hash, user_id, session_token_hash, expires_at)
    SELECT :token_hash, s.user_id, s.token_hash, s.expires_at
    FROM sessions s WHERE s.token_hash = :session_token_hash AND s.expires_at > now()
    RETURNING expires_at
"""  # noqa: S105 - SQL, not a password
DELETE_USER_SESSIONS = "DELETE FROM sessions WHERE user_id = :user_id"


def create_user(con: Connection, *, username: str, password_hash: str) -> int:
    """Insert a user; UserExists when the name is taken."""
    try:
        rows = con.run(INSERT_USER, username=username, password_hash=password_hash)
    except DatabaseError as exc:
        if sqlstate(exc) == UNIQUE_VIOLATION:
            raise UserExists(f"user {username!r} already exists") from None
        raise
    return int(rows[0][0])


def set_user_password(con: Connection, *, username: str, password_hash: str) -> int | None:
    """Replace a user's password hash; the user's id, or None when there is no such user."""
    rows = con.run(UPDATE_USER_PASSWORD, username=username, password_hash=password_hash)
    return int(rows[0][0]) if rows else None


def get_user_id(con: Connection, *, username: str) -> int | None:
    """The id of a username, or None."""
    rows = con.run(SELECT_USER_ID, username=username)
    return int(rows[0][0]) if rows else None


def lock_user_forgetting_failures(con: Connection, *, user_id: int, password_hash: str, username_key: str) -> bool:
    """Lock a user's row until the transaction ends ; when its password hash is still
    `password_hash`, forget the username's failed logins too. Whether it still is."""
    rows = con.run(
        LOCK_USER_FORGETTING_FAILURES, user_id=user_id, password_hash=password_hash, username_key=username_key
    )
    return bool(rows) and rows[0][0] == password_hash


def create_session(con: Connection, *, token_hash: str, user_id: int, ttl_seconds: int, max_sessions: int) -> datetime:
    """Store a session by the hash of its token, ending the user's expired sessions and the oldest
    live ones beyond max_sessions; returns when the new one expires."""
    rows = con.run(
        INSERT_SESSION, token_hash=token_hash, user_id=user_id, ttl_seconds=ttl_seconds, max_sessions=max_sessions
    )
    expires_at: datetime = rows[0][0]
    return expires_at


def get_session_owner(con: Connection, *, token_hash: str) -> Owner | None:
    """The owner of an unexpired session, or None."""
    rows = con.run(SELECT_SESSION_OWNER, token_hash=token_hash)
    return Owner(int(rows[0][0]), str(rows[0][1])) if rows else None


def create_viewer_token(con: Connection, *, token_hash: str, session_token_hash: str) -> datetime | None:
    """Store a viewer token (by its hash) for an unexpired session; when it expires (with the
    session), or None when there is no such session."""
    rows = con.run(INSERT_VIEWER_TOKEN, token_hash=token_hash, session_token_hash=session_token_hash)
    return rows[0][0] if rows else None


def delete_session(con: Connection, *, token_hash: str) -> None:
    """End a session."""
    con.run(DELETE_SESSION, token_hash=token_hash)


def delete_user_sessions(con: Connection, *, user_id: int) -> int:
    """End every session of a user; returns how many."""
    con.run(DELETE_USER_SESSIONS, user_id=user_id)
    return int(con.row_count or 0)


# ---------------------------------------------------------------- login throttling


@dataclass(frozen=True)
class LoginLimits:
    """How many failed logins a window allows, per username and per source IP."""

    window_seconds: int
    max_per_username: int
    max_per_source: int


# Seconds until this username's and this source's failures in the window are back under their
# limits (the limit-th newest leaving the window lets the next attempt through), NULL while under
# both. :failure_id, the caller's own pending failure (or NULL), is not counted.
_LOGIN_WAIT = """
    SELECT CAST(ceil(extract(epoch FROM max(wait))) AS integer) AS seconds FROM (
        (SELECT at + make_interval(secs => CAST(:window_seconds AS integer)) - now() AS wait
         FROM login_failures
         WHERE username_key = CAST(:username_key AS char(64))
           AND at > now() - make_interval(secs => CAST(:window_seconds AS integer))
           AND id IS DISTINCT FROM CAST(:failure_id AS bigint)
         ORDER BY at DESC OFFSET CAST(:max_per_username AS integer) - 1 LIMIT 1)
        UNION ALL
        (SELECT at + make_interval(secs => CAST(:window_seconds AS integer)) - now() AS wait
         FROM login_failures
         WHERE source_ip = CAST(:source_ip AS text)
           AND at > now() - make_interval(secs => CAST(:window_seconds AS integer))
           AND id IS DISTINCT FROM CAST(:failure_id AS bigint)
         ORDER BY at DESC OFFSET CAST(:max_per_source AS integer) - 1 LIMIT 1)
    ) waits
"""
# Counts the window and records the attempt as a pending failure only when under both limits;
# clears this username's and this source's failures that have left the window.
RESERVE_LOGIN_ATTEMPT = f"""
    WITH wait AS ({_LOGIN_WAIT}),
    pruned AS (
        DELETE FROM login_failures
        WHERE (username_key = CAST(:username_key AS char(64)) OR source_ip = CAST(:source_ip AS text))
          AND at <= now() - make_interval(secs => CAST(:window_seconds AS integer))
    ),
    pending AS (
        INSERT INTO login_failures (username_key, source_ip)
        SELECT CAST(:username_key AS char(64)), CAST(:source_ip AS text) FROM wait WHERE seconds IS NULL
        RETURNING id
    )
    SELECT (SELECT id FROM pending), (SELECT seconds FROM wait)
"""
# Counts again once the pending failure is committed, now seeing every concurrent attempt that got
# as far, and withdraws it when they have passed a limit together. In the same round trip, the
# username's credentials, which the password check needs next.
CONFIRM_LOGIN_ATTEMPT = f"""
    WITH wait AS ({_LOGIN_WAIT}),
    withdrawn AS (
        DELETE FROM login_failures
        WHERE id = CAST(:failure_id AS bigint) AND (SELECT seconds FROM wait) IS NOT NULL
    )
    SELECT (SELECT seconds FROM wait), u.id, u.password_hash
    FROM (SELECT 1) AS one LEFT JOIN users u ON u.username = :username
"""
# The user's row locked until the transaction ends: a password change or reset waits for a login that
# verified the old password, or that login sees the new hash; and a user's sessions are created one
# at a time. When the password is still the one checked, the username's failed logins are forgotten
# in the same statement: one round trip where a successful login took two.
LOCK_USER_FORGETTING_FAILURES = """
    WITH locked AS (SELECT password_hash FROM users WHERE id = :user_id FOR UPDATE),
    forgotten AS (
        DELETE FROM login_failures
        WHERE username_key = :username_key AND (SELECT password_hash FROM locked) = :password_hash
    )
    SELECT password_hash FROM locked
"""


@dataclass(frozen=True)
class LoginAttempt:
    """A reserved login attempt: seconds to wait (None: it may go ahead), and the username's
    credentials when it may (None: no such user, or refused)."""

    retry_after: int | None
    credentials: Credentials | None


def reserve_login_attempt(
    con: Connection, *, username: str, username_key: str, source_ip: str, limits: LoginLimits
) -> LoginAttempt:
    """Count a login attempt as a failure in advance: whether it may go ahead (else seconds to wait),
    and, when it may, the username's credentials (read by the second statement, for the password check).

    Two statements, outside any transaction: the first records the pending failure only while the
    window is under both limits; the second, once that row is committed, counts again and withdraws
    it if concurrent attempts passed a limit meanwhile. A burst of parallel guesses thus never gets
    more than a limit's worth through (it may be refused a little early instead). An attempt that
    is refused is not recorded, so it does not extend the window.
    """
    params = {
        "username_key": username_key,
        "source_ip": source_ip,
        "window_seconds": limits.window_seconds,
        "max_per_username": limits.max_per_username,
        "max_per_source": limits.max_per_source,
    }
    failure_id, seconds = con.run(RESERVE_LOGIN_ATTEMPT, failure_id=None, **params)[0]
    credentials = None
    if failure_id is not None:
        seconds, user_id, password_hash = con.run(
            CONFIRM_LOGIN_ATTEMPT, failure_id=failure_id, username=username, **params
        )[0]
        if seconds is None and user_id is not None:
            credentials = Credentials(int(user_id), str(password_hash))
    return LoginAttempt(None if seconds is None else max(1, int(seconds)), credentials)
