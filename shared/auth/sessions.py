"""Passwords (scrypt), bearer tokens (256 random bits, stored only as a SHA-256), sessions and their
ends, login throttling; each login, logout and password change leaves a row in the audit trail."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from shared import audit, db
from shared.errors import (
    DomainError,
    InvalidCredentials,
    InvalidRequest,
    InvalidToken,
    NotAuthenticated,
    TooManyAttempts,
    UserNotFound,
)

# scrypt cost: about 16 MiB and tens of ms a hash, slow enough to make guessing expensive.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
TOKEN_BYTES = 32
MAX_TOKEN_LENGTH = 128
MIN_PASSWORD_LENGTH = 12
# A user's live sessions: issuing one more ends the oldest.
MAX_SESSIONS_PER_USER = 20
# Failed logins (wrong passwords, unknown usernames, wrong current passwords on a change) allowed in
# a sliding window, per username and per source IP; past either, logins answer 429 until it passes.
LOGIN_LIMITS = db.LoginLimits(window_seconds=15 * 60, max_per_username=5, max_per_source=20)
# login_failures needs a source; only a call from outside API Gateway lacks one.
UNKNOWN_SOURCE = "unknown"
WRONG_CREDENTIALS = "Wrong username or password."


def hash_password(password: str) -> str:
    """An scrypt hash of the password with a fresh salt, self-describing: scrypt$n$r$p$salt$hash."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=SCRYPT_MAXMEM)
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)])


def verify_password(password: str, stored: str) -> bool:
    """Whether the password matches a hash made by hash_password (constant-time compare)."""
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), maxmem=SCRYPT_MAXMEM
        )
    except ValueError:
        return False
    return hmac.compare_digest(digest, _unb64(expected))


@functools.cache
def _dummy_hash() -> str:
    # Verified against when the username is unknown, so a login takes as long either way.
    # Made lazily: the images function never logs anyone in and must start fast.
    return hash_password(secrets.token_urlsafe(16))


def new_token() -> str:
    """A fresh bearer token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """What we store for a token: its SHA-256 hex (a 256-bit random token needs no slow hash)."""
    return hashlib.sha256(token.encode()).hexdigest()


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


def username_key(username: str) -> str:
    """How login_failures keeps a username: the SHA-256 hex of it lower-cased (it may be a mistyped password)."""
    return hashlib.sha256(username.lower().encode()).hexdigest()


def reserve_login_attempt(con: db.Connection, *, username: str, origin: audit.Origin) -> None:
    """Count an attempt as a failed login until it succeeds; TooManyAttempts (not counted) past a limit.

    Outside any transaction: the pending failure must be committed before the password is checked.
    """
    retry_after = db.reserve_login_attempt(
        con,
        username_key=username_key(username),
        source_ip=origin.source_ip or UNKNOWN_SOURCE,
        limits=LOGIN_LIMITS,
    )
    if retry_after is not None:
        raise TooManyAttempts("Too many failed logins; try again later.", retry_after=retry_after)


def log_in(
    con: db.Connection, *, username: str, password: str, ttl_seconds: int, origin: audit.Origin = audit.NOWHERE
) -> IssuedSession:
    """Check a username and password and open a session; InvalidCredentials or TooManyAttempts otherwise."""
    try:
        reserve_login_attempt(con, username=username, origin=origin)
    except TooManyAttempts:
        user_id = db.get_user_id(con, username=username)
        audit.record(
            con, action=audit.Action.login_throttled, status=429, origin=origin, user_id=user_id, via=audit.Via.password
        )
        raise
    credentials = db.get_credentials(con, username=username)
    # An unknown username costs a scrypt hash too, so the time taken does not tell whether it exists.
    valid = verify_password(password, credentials.password_hash if credentials else _dummy_hash())
    session = None
    with db.transaction(con):
        if credentials is not None and valid and _password_unchanged(con, credentials):
            db.delete_login_failures(con, username_key=username_key(username))
            session = issue_session(con, user_id=credentials.user_id, ttl_seconds=ttl_seconds)
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
    _check_password_length(new_password)
    try:
        reserve_login_attempt(con, username=owner.username, origin=origin)
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
    credentials = db.get_credentials(con, username=owner.username)
    valid = verify_password(current_password, credentials.password_hash if credentials else _dummy_hash())
    new_hash = hash_password(new_password) if valid else None
    session = None
    with db.transaction(con):
        if credentials is not None and new_hash is not None and _password_unchanged(con, credentials):
            db.set_user_password(con, username=owner.username, password_hash=new_hash)
            db.delete_user_sessions(con, user_id=owner.id)
            db.delete_login_failures(con, username_key=username_key(owner.username))
            session = issue_session(con, user_id=owner.id, ttl_seconds=ttl_seconds)
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


def log_out(con: db.Connection, *, owner: db.Owner, token: str, origin: audit.Origin = audit.NOWHERE) -> None:
    """End the session of this token."""
    with db.transaction(con):
        db.delete_session(con, token_hash=hash_token(token))
        audit.record(con, action=audit.Action.logout, status=204, origin=origin, user_id=owner.id, via=audit.Via.token)


def log_out_everywhere(con: db.Connection, *, owner: db.Owner, origin: audit.Origin = audit.NOWHERE) -> int:
    """End every session of the user; returns how many."""
    with db.transaction(con):
        ended = db.delete_user_sessions(con, user_id=owner.id)
        audit.record(
            con, action=audit.Action.logout_all, status=204, origin=origin, user_id=owner.id, via=audit.Via.token
        )
    return ended


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


def _check_password_length(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidRequest(f"password must be at least {MIN_PASSWORD_LENGTH} characters")


def _new_password_hash(username: str, password: str) -> str:
    if not 1 <= len(username) <= 64:
        raise InvalidRequest("username must be 1 to 64 characters")
    _check_password_length(password)
    return hash_password(password)


def _password_unchanged(con: db.Connection, credentials: db.Credentials) -> bool:
    # Locks the user's row for the rest of the transaction: a reset or change that committed after
    # the password was checked wins, and sessions of one user are issued one at a time.
    return db.lock_user(con, user_id=credentials.user_id) == credentials.password_hash


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


def parse_bearer(authorization: str | None) -> str:
    """The token from an `Authorization: Bearer <token>` header; NotAuthenticated otherwise."""
    if not authorization:
        raise NotAuthenticated("Missing Authorization: Bearer token.")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LENGTH:
        raise NotAuthenticated("Authorization header must be 'Bearer <token>'.")
    return token


def authenticate(con: db.Connection, *, token: str) -> db.Owner:
    """The owner of a valid, unexpired token; NotAuthenticated otherwise."""
    owner = db.get_session_owner(con, token_hash=hash_token(token))
    if owner is None:
        raise InvalidToken("Invalid or expired token.")
    return owner


def read_image_part(
    con: db.Connection,
    *,
    token: str | None,
    scan_id: str,
    image_type: db.ImageType,
    read: db.ImageRead = db.WHOLE_IMAGE,
    source_ip: str | None = None,
    request_id: str | None = None,
) -> db.ImagePart:
    """The token owner's scan image, token and image resolved (and the read audited) in one call;
    InvalidToken otherwise. token None: a valid URL signature already named this scan and type."""
    part = db.read_image(
        con,
        token_hash=None if token is None else hash_token(token),
        scan_id=scan_id,
        image_type=image_type,
        read=read,
        source_ip=source_ip,
        request_id=request_id,
    )
    if part is None:
        raise InvalidToken("Invalid or expired token.")
    return part


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)
