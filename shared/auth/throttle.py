"""Login throttling: failed logins per username and per source IP in a sliding window (429 past either)."""

from __future__ import annotations

import hashlib

from shared import db
from shared.core.errors import TooManyAttempts
from shared.db import audit

# Failed logins (wrong passwords, unknown usernames, wrong current passwords on a change) allowed in
# a sliding window, per username and per source IP; past either, logins answer 429 until it passes.
LOGIN_LIMITS = db.LoginLimits(window_seconds=15 * 60, max_per_username=5, max_per_source=20)
# login_failures needs a source; only a call from outside API Gateway lacks one.
UNKNOWN_SOURCE = "unknown"


def username_key(username: str) -> str:
    """How login_failures keeps a username: the SHA-256 hex of it lower-cased (it may be a mistyped password)."""
    return hashlib.sha256(username.lower().encode()).hexdigest()


def reserve_login_attempt(con: db.Connection, *, username: str, origin: audit.Origin) -> db.Credentials | None:
    """Count an attempt as a failed login until it succeeds; TooManyAttempts (not counted) past a limit.
    The username's credentials (None: no such user), read in the same round trip.

    Outside any transaction: the pending failure must be committed before the password is checked.
    """
    attempt = db.reserve_login_attempt(
        con,
        username=username,
        username_key=username_key(username),
        source_ip=origin.source_ip or UNKNOWN_SOURCE,
        limits=LOGIN_LIMITS,
    )
    if attempt.retry_after is not None:
        raise TooManyAttempts("Too many failed logins; try again later.", retry_after=attempt.retry_after)
    return attempt.credentials
