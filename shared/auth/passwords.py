"""Passwords: scrypt hashes with a fresh salt, verified in constant time."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import secrets

from shared.core.errors import InvalidRequest

# scrypt cost: about 16 MiB and tens of ms a hash, slow enough to make guessing expensive.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
MIN_PASSWORD_LENGTH = 12

log = logging.getLogger(__name__)


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
            raise ValueError("unknown scheme")
        wanted = _unb64(expected)
        digest = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), maxmem=SCRYPT_MAXMEM
        )
    except ValueError as error:  # binascii.Error is one too
        # A stored hash this code did not write: the login is refused, and ops hear of it (never the
        # hash itself, nor the password).
        log.error("stored password hash is malformed, login refused: %s", type(error).__name__)
        return False
    return hmac.compare_digest(digest, wanted)


@functools.cache
def dummy_hash() -> str:
    """A hash of a random password, verified against when a username is unknown (same time either way)."""
    # Verified against when the username is unknown, so a login takes as long either way.
    # Made lazily: the images function never logs anyone in and must start fast.
    return hash_password(secrets.token_urlsafe(16))


def check_password_length(password: str) -> None:
    """InvalidRequest when a new password is shorter than MIN_PASSWORD_LENGTH."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidRequest(f"password must be at least {MIN_PASSWORD_LENGTH} characters")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)
