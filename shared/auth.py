"""Passwords (scrypt) and bearer tokens (256 random bits, stored only as a SHA-256)."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from shared import db
from shared.errors import InvalidCredentials, InvalidRequest, InvalidToken, NotAuthenticated

# scrypt cost: about 16 MiB and tens of ms a hash, slow enough to make guessing expensive.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
TOKEN_BYTES = 32
MAX_TOKEN_LENGTH = 128


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
    """Create a session for a user and return its token."""
    token = new_token()
    expires_at = db.create_session(con, token_hash=hash_token(token), user_id=user_id, ttl_seconds=ttl_seconds)
    return IssuedSession(token, expires_at)


def log_in(con: db.Connection, *, username: str, password: str, ttl_seconds: int) -> IssuedSession:
    """Check a username and password and open a session; InvalidCredentials otherwise."""
    credentials = db.get_credentials(con, username=username)
    if credentials is None:
        verify_password(password, _dummy_hash())
        raise InvalidCredentials("Wrong username or password.")
    if not verify_password(password, credentials.password_hash):
        raise InvalidCredentials("Wrong username or password.")
    # Expired sessions would otherwise pile up forever; each login clears its user's (indexed by user_id).
    db.delete_expired_sessions(con, user_id=credentials.user_id)
    return issue_session(con, user_id=credentials.user_id, ttl_seconds=ttl_seconds)


def create_or_reset_user(con: db.Connection, *, username: str, password: str) -> bool:
    """Create a user, or set the password of an existing one; True when the user was created."""
    if not 1 <= len(username) <= 64:
        raise InvalidRequest("username must be 1 to 64 characters")
    if len(password) < 12:
        raise InvalidRequest("password must be at least 12 characters")
    password_hash = hash_password(password)
    if db.set_user_password(con, username=username, password_hash=password_hash):
        return False
    db.create_user(con, username=username, password_hash=password_hash)
    return True


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
    token: str,
    scan_id: str,
    image_type: db.ImageType,
    start: int = 0,
    stop: int | None = None,
    with_data: bool,
    known_sha256: str | None = None,
) -> db.ImagePart:
    """A span of the token owner's scan image, token and image resolved in one statement; InvalidToken otherwise."""
    part = db.get_session_image_part(
        con,
        token_hash=hash_token(token),
        scan_id=scan_id,
        image_type=image_type,
        start=start,
        stop=stop,
        with_data=with_data,
        known_sha256=known_sha256,
    )
    if part is None:
        raise InvalidToken("Invalid or expired token.")
    return part


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)
