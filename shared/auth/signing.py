"""Signed image URLs: an HMAC-SHA256 over the path, expiry and key id, so `<img src>` works without a token.

Canonical string: "v1\\n{path}\\n{exp}\\n{kid}" (path as IMAGE_PATH formats it, exp in Unix seconds as
decimal text, kid the key id); the signature is its HMAC-SHA256, base64url without padding. Expiry
is rounded up to a multiple of the TTL, so the same scan lists with byte-identical URLs for a whole
window and browser caches keep working: a URL is valid for at least the TTL and at most twice it.

Keys are listed newest first: sign with the first, verify with all (rotation: put the new key in
front, drop the old one a window later). Their document, in the secret or the local file, is JSON:
{"keys": [{"kid": "...", "secret": "..."}, ...]} (kid optional), or the single key CloudFormation
generates, {"secret": "..."}. A missing kid is derived from the secret (8 hex characters).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.core.config import Settings, get_settings
from shared.core.errors import InvalidSignature, SigningUnavailable, UrlExpired

log = logging.getLogger(__name__)

CANONICAL_VERSION = "v1"
MIN_SECRET_BYTES = 32
MAX_EXP_DIGITS = 12
# An unknown kid may mean the keys were rotated since we cached them: look again, at most this often
# (a stream of forged kids must not become a stream of Secrets Manager calls).
RELOAD_AFTER_SECONDS = 60.0


@dataclass(frozen=True)
class SigningKey:
    """One HMAC key and its public id; repr hides the secret."""

    kid: str
    secret: bytes

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, secret='***')"


def key_id(secret: bytes) -> str:
    """A short public id for a key, derived from it without revealing it."""
    return hmac.new(secret, b"ctscan image url key id", hashlib.sha256).hexdigest()[:8]


def canonical_string(path: str, exp: str, kid: str) -> bytes:
    """What is signed: version, path, expiry and key id, one per line."""
    return f"{CANONICAL_VERSION}\n{path}\n{exp}\n{kid}".encode()


def expiry(now: float, ttl_seconds: int) -> int:
    """The expiry for a URL made now: the end of the next TTL bucket, so ttl < exp - now <= 2*ttl."""
    return (int(now) // ttl_seconds + 2) * ttl_seconds


def _signature(key: SigningKey, path: str, exp: str) -> str:
    digest = hmac.new(key.secret, canonical_string(path, exp, key.kid), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign_path(path: str, *, keys: tuple[SigningKey, ...], now: float, ttl_seconds: int) -> str:
    """The query string (exp, kid, sig) that makes `path` a signed URL, signed with the newest key."""
    key = keys[0]
    exp = str(expiry(now, ttl_seconds))
    return f"exp={exp}&kid={key.kid}&sig={_signature(key, path, exp)}"


def verify(path: str, query: Mapping[str, str], *, keys: tuple[SigningKey, ...], now: float) -> int:
    """Check a signed URL's query against its path; returns exp. InvalidSignature or UrlExpired otherwise."""
    exp, kid, sig = query.get("exp", ""), query.get("kid", ""), query.get("sig", "")
    if not (exp.isascii() and exp.isdigit() and len(exp) <= MAX_EXP_DIGITS) or not kid or not sig:
        raise InvalidSignature("The image URL's signature is missing or malformed.")
    key = next((k for k in keys if k.kid == kid), None)  # key ids are public: a plain compare is fine
    if key is None or not hmac.compare_digest(_signature(key, path, exp).encode(), sig.encode("utf-8", "replace")):
        raise InvalidSignature("The image URL's signature is not valid for this image.")
    # Only a genuine URL learns that it expired.
    if int(exp) <= now:
        raise UrlExpired("The image URL has expired; fetch the scan again for a fresh one.")
    return int(exp)


def parse_keys(document: str) -> tuple[SigningKey, ...]:
    """The keys in a key document (see the module docstring); ValueError when it is not one."""
    try:
        data = json.loads(document)
        entries = data.get("keys", [data])
        keys = []
        for entry in entries:
            secret = str(entry["secret"]).encode()
            if len(secret) < MIN_SECRET_BYTES:
                raise ValueError(f"a signing key must be at least {MIN_SECRET_BYTES} bytes")
            keys.append(SigningKey(str(entry.get("kid") or key_id(secret)), secret))
    except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a signing key document ({type(exc).__name__})") from None
    if not keys:
        raise ValueError("the signing key document lists no keys")
    return tuple(keys)


def ensure_key_file(path: Path) -> str:
    """The local key document at path, generated (one random key, mode 0600) when there is none."""
    with contextlib.suppress(FileNotFoundError):
        return path.read_text()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    document = json.dumps({"keys": [{"kid": key_id(secret.encode()), "secret": secret}]})
    # Written aside and linked into place: a concurrent process sees either no file or a whole one.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(document)
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path.read_text()


@dataclass(frozen=True)
class _Loaded:
    source: str
    keys: tuple[SigningKey, ...]
    at: float


_lock = threading.Lock()
_loaded: _Loaded | None = None


def _read_keys(settings: Settings) -> tuple[str, tuple[SigningKey, ...]]:
    if settings.image_url_secret_arn is None:
        source = str(settings.image_url_keys_file)
        return source, parse_keys(ensure_key_file(settings.image_url_keys_file))
    from shared.core.secrets import read_secret_string

    try:
        return settings.image_url_secret_arn, parse_keys(read_secret_string(settings.image_url_secret_arn))
    except Exception as exc:  # botocore errors, a malformed document: never log the value
        log.error("could not read the image URL signing keys: %s", type(exc).__name__)
        raise SigningUnavailable("Image URLs cannot be signed or checked right now; try again shortly.") from None


def current_keys(settings: Settings | None = None, *, reload: bool = False) -> tuple[SigningKey, ...]:
    """The signing keys, newest first, cached per container; reload=True reads them again (rate-limited)."""
    global _loaded
    settings = settings or get_settings()
    wanted = settings.image_url_secret_arn or str(settings.image_url_keys_file)
    with _lock:
        now = time.monotonic()
        loaded = _loaded
        stale = reload and (loaded is None or now - loaded.at >= RELOAD_AFTER_SECONDS)
        if loaded is None or loaded.source != wanted or stale:
            source, keys = _read_keys(settings)
            loaded = _loaded = _Loaded(source, keys, now)
        return loaded.keys


def signed_query(path: str, *, now: float | None = None) -> str:
    """sign_path with this container's keys and settings."""
    settings = get_settings()
    return sign_path(
        path,
        keys=current_keys(settings),
        now=time.time() if now is None else now,
        ttl_seconds=settings.image_url_ttl_seconds,
    )


def verify_query(path: str, query: Mapping[str, str], *, now: float | None = None) -> int:
    """verify with this container's keys; an unknown kid reloads them once (they may have been rotated)."""
    moment = time.time() if now is None else now
    keys = current_keys()
    if query.get("kid") and all(key.kid != query["kid"] for key in keys):
        keys = current_keys(reload=True)
    return verify(path, query, keys=keys, now=moment)


def clear_cache() -> None:
    """Forget the loaded keys (tests; a new container)."""
    global _loaded
    with _lock:
        _loaded = None
