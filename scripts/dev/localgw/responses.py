"""What the gateway answers: an HTTP response as (status, headers, body), and the project's one JSON
error shape."""

from __future__ import annotations

import json

JSON_HEADERS = [("Content-Type", "application/json")]

HttpResponse = tuple[int, list[tuple[str, str]], bytes]


def error_body(code: str, message: str) -> bytes:
    """The project's one error shape: {"error": {"code", "message"}}."""
    return json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()


def error(status: int, code: str, message: str) -> HttpResponse:
    return status, list(JSON_HEADERS), error_body(code, message)
