"""Who may do what: accounts, sessions and their bearer tokens, the login throttle, signed image
URLs and the CloudFront origin lock.

    passwords  scrypt hashes
    tokens     bearer tokens (stored as SHA-256) and the Authorization header
    throttle   failed logins per username and source IP
    sessions   log in, change the password, log out, the owner of a token
    users      accounts as ops manage them (admin function, make user)
    signing    HMAC-signed image URLs (`from shared.auth import signing`)
    origin     only requests through CloudFront, deployed (`from shared.auth import origin`)
"""

from typing import TYPE_CHECKING

from shared.core.front_door import lazy_exports

if TYPE_CHECKING:
    from shared.auth.passwords import MIN_PASSWORD_LENGTH, hash_password, verify_password
    from shared.auth.sessions import (
        IssuedSession,
        authenticate,
        authenticate_upload,
        change_password,
        issue_session,
        issue_viewer_token,
        log_in,
        log_out,
        log_out_everywhere,
    )
    from shared.auth.throttle import LOGIN_LIMITS
    from shared.auth.tokens import hash_token, new_token, parse_bearer
    from shared.auth.users import create_or_reset_user, create_user, reset_password
else:  # each name loads with its module on first use (shared/core/front_door.py)
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "passwords": ("MIN_PASSWORD_LENGTH", "hash_password", "verify_password"),
            "sessions": (
                "IssuedSession",
                "authenticate",
                "authenticate_upload",
                "change_password",
                "issue_session",
                "issue_viewer_token",
                "log_in",
                "log_out",
                "log_out_everywhere",
            ),
            "throttle": ("LOGIN_LIMITS",),
            "tokens": ("hash_token", "new_token", "parse_bearer"),
            "users": ("create_or_reset_user", "create_user", "reset_password"),
        },
    )

__all__ = [
    "LOGIN_LIMITS",
    "MIN_PASSWORD_LENGTH",
    "IssuedSession",
    "authenticate",
    "authenticate_upload",
    "change_password",
    "create_or_reset_user",
    "create_user",
    "hash_password",
    "hash_token",
    "issue_session",
    "issue_viewer_token",
    "log_in",
    "log_out",
    "log_out_everywhere",
    "new_token",
    "parse_bearer",
    "reset_password",
    "verify_password",
]
