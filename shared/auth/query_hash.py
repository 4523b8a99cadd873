"""Keyed hashes of DICOMweb search values, for the audit trail.

A QIDO-RS search by patient name must leave a trace that answers "who searched for this patient"
(IHE ATNA's Query event) without the audit trail holding the name. So a search's row keeps, per
query key, HMAC-SHA256(key, "<Keyword>=<value>") and the key's id: whoever holds the key (an ops
person, through the admin function's audit_search action or `make audit-search`) hashes the value in
question and finds the rows; without it the rows say nothing. Person names are hashed upper-cased,
as they are matched. The key document has the shape of the URL signing keys' (shared.auth.signing):
deployed a Secrets Manager secret (AUDIT_KEY_SECRET_ARN) the stack generates, locally a generated
file. Keys are never rotated away while the audit trail must answer for old searches: add a new key in
front (new searches use it), keep the old ones (audit searches try every key).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
from pathlib import Path

from shared.auth.signing import SigningKey, ensure_key_file, parse_keys
from shared.core.config import Settings, get_settings
from shared.core.errors import SigningUnavailable

log = logging.getLogger(__name__)


def _load(source: str, secret_arn: str | None) -> tuple[SigningKey, ...]:
    if secret_arn is None:
        return parse_keys(ensure_key_file(Path(source)))
    from shared.core.secrets import read_secret_string

    try:
        return parse_keys(read_secret_string(secret_arn))
    except Exception as exc:  # botocore errors, a malformed document: never log the value
        log.error("could not read the audit query key: %s", type(exc).__name__)
        raise SigningUnavailable("Searches cannot be audited right now; try again shortly.") from None


_keys = functools.cache(_load)


def audit_keys(settings: Settings | None = None) -> tuple[SigningKey, ...]:
    """The audit query keys, newest first, cached per container."""
    settings = settings or get_settings()
    return _keys(str(settings.audit_key_file), settings.audit_key_secret_arn)


def current_audit_keys(settings: Settings | None = None) -> tuple[SigningKey, ...]:
    """The audit query keys as the secret (or file) holds them now, newest first, never from the
    cache: an audit search in a container older than the last rotation would otherwise hash with
    the old keys only and miss every search made since."""
    settings = settings or get_settings()
    return _load(str(settings.audit_key_file), settings.audit_key_secret_arn)


def digest(key: SigningKey, keyword: str, value: str) -> str:
    """HMAC-SHA256 of "<keyword>=<value>" under one key, hex."""
    return hmac.new(key.secret, f"{keyword}={value}".encode(), hashlib.sha256).hexdigest()


def hashed_keys(values: dict[str, str]) -> dict[str, object]:
    """The audit details of a search's query values: the key id and one keyed hash per keyword."""
    key = audit_keys()[0]
    return {"kid": key.kid, "keys": {keyword: digest(key, keyword, value) for keyword, value in values.items()}}


def clear_cache() -> None:
    """Forget the loaded keys (tests; settings changed)."""
    _keys.cache_clear()
