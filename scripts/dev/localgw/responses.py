"""What the gateway answers: an HTTP response as (status, headers, body), the project's one JSON
error shape, and the security headers of everything the gateway answers itself."""

from __future__ import annotations

import json

from scripts.web.assets import SECURITY_HEADERS

JSON_HEADERS = [("Content-Type", "application/json")]
# What the deployed CDN adds to every response (infra/web.yml, WebSecurityHeadersPolicy): the gateway's
# own answers (its errors, preflights, /openapi.json and /docs) carry them too.
OWN_HEADERS = list(SECURITY_HEADERS)

HttpResponse = tuple[int, list[tuple[str, str]], bytes]


def error_body(code: str, message: str) -> bytes:
    """The project's one error shape: {"error": {"code", "message"}}."""
    return json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()


def error(status: int, code: str, message: str) -> HttpResponse:
    return status, [*JSON_HEADERS, *OWN_HEADERS], error_body(code, message)
