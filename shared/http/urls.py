"""Absolute URLs of this API (Starlette only: the images function uses it too)."""

from __future__ import annotations

from starlette.requests import Request

from shared.core.config import get_settings


def base_url(request: Request) -> str:
    """Where the API lives, for absolute URLs: API_BASE_URL, else the request's own scheme and host."""
    configured = get_settings().api_base_url
    if configured:
        return configured
    scheme = request.headers.get("x-forwarded-proto", request.url.scheme).split(",")[0].strip()
    host = request.headers.get("host") or request.url.netloc
    return f"{scheme}://{host}"
