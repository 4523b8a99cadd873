"""Bearer tokens: 256 random bits, stored only as their SHA-256; read from the Authorization header."""

from __future__ import annotations

import hashlib
import secrets

from shared.core.errors import NotAuthenticated

TOKEN_BYTES = 32
MAX_TOKEN_LENGTH = 128


def new_token() -> str:
    """A fresh bearer token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """What we store for a token: its SHA-256 hex (a 256-bit random token needs no slow hash)."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_bearer(authorization: str | None) -> str:
    """The token from an `Authorization: Bearer <token>` header; NotAuthenticated otherwise."""
    if not authorization:
        raise NotAuthenticated("Missing Authorization: Bearer token.")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LENGTH:
        raise NotAuthenticated("Authorization header must be 'Bearer <token>'.")
    return token
