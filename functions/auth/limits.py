"""The auth function's paths and the JSON bodies it takes, with their limits: the handler checks them,
and openapi.json states them (shared/http/schemas.py's SessionCreate and PasswordChange; imported by
scripts/build/openapi.py without the handler, whose import builds the Lambda adapter)."""

from __future__ import annotations

from shared.auth.passwords import MIN_PASSWORD_LENGTH
from shared.http.plain import TextField

MAX_USERNAME_LENGTH = 64
MAX_PASSWORD_LENGTH = 1024
SESSIONS = "/api/v1/auth/sessions"
CURRENT_SESSION = SESSIONS + "/current"
PASSWORD = "/api/v1/auth/password"  # noqa: S105 - a path, not a password
VIEWER_TOKENS = "/api/v1/auth/viewer-tokens"

# Login credentials (SessionCreate), and a password change (PasswordChange): JSON objects of these
# strings and no other members.
LOGIN = (TextField("username", 1, MAX_USERNAME_LENGTH), TextField("password", 1, MAX_PASSWORD_LENGTH))
PASSWORD_CHANGE = (
    TextField("currentPassword", 1, MAX_PASSWORD_LENGTH),
    TextField("newPassword", MIN_PASSWORD_LENGTH, MAX_PASSWORD_LENGTH),
)
