"""Lambda entry points: Mangum around an ASGI app, the origin lock first, the invocation's database
budget around it, logs and metrics (shared.core.observability) around that. Starlette and Mangum
only: the images function's entry point must not import FastAPI."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import pybase64
from mangum import Mangum
from mangum.adapter import DEFAULT_TEXT_MIME_TYPES
from mangum.handlers import HTTPGateway
from mangum.types import Scope
from starlette.applications import Starlette

from shared import db
from shared.auth import origin
from shared.core import observability
from shared.http.image_responses import PRE_ENCODED_HEADER

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]
# Bodies Mangum sends as text (a substring of the Content-Type): its defaults, and DICOM JSON (STOW-RS
# answers), which none of them matches ("application/json" is not in "application/dicom+json").
TEXT_MIME_TYPES = [*DEFAULT_TEXT_MIME_TYPES, "application/dicom+json"]


class HttpApiEvents(HTTPGateway):
    """Mangum's HTTP API handler, reading a Host that names an IPv6 literal (`[::1]:3000`) as one.

    Mangum 0.22 splits Host on every ':' for the ASGI server tuple and raises on an IPv6 literal, so
    every route answered 502. API Gateway forwards only its own domain names, but the local gateway
    also serves http://[::1]:port/, and the functions copy Host into the URLs they answer with.
    """

    @property
    def body(self) -> bytes:
        """The request body, its base64 decoded by pybase64 (SIMD) where Mangum uses the standard
        library's: ~0.4 ms instead of ~2-4 ms for the 700 KB of base64 an uncompressed 512x512 CT
        slice arrives as, on every upload. Not validating, as Mangum's b64decode: API Gateway made it."""
        body = self.event.get("body") or b""
        if self.event.get("isBase64Encoded", False):
            return pybase64.b64decode(body)
        return body.encode() if isinstance(body, str) else bytes(body)

    @property
    def scope(self) -> Scope:
        event = self.event
        host = str((event.get("headers") or {}).get("host", ""))
        name, bracket, rest = host.partition("]")
        if not host.startswith("[") or not bracket or (rest and not rest[1:].isdigit()):
            return super().scope  # a name, or nothing Mangum would misread
        self.event = {**event, "headers": {k: v for k, v in event["headers"].items() if k != "host"}}
        try:
            scope = super().scope
        finally:
            self.event = event
        scope["headers"].append([b"host", host.encode()])
        port = rest[1:] if rest else str(event["headers"].get("x-forwarded-port", "80"))  # as Mangum does
        scope["server"] = (f"{name}]", int(port) if port.isdigit() else 80)
        scope["aws.event"] = event
        return scope


def without_slash_redirects(app: Starlette) -> Starlette:
    """The app, answering a path that no route matches with 404 instead of Starlette's 307 to the path
    with its trailing slash added or removed.

    A route's last segment ending in an encoded slash (`.../original%2F?exp=…&sig=…`, which Mangum
    decodes) would otherwise be redirected, query and all, before any route checked the signature.
    API Gateway routed the request already: a path none of our routes takes is unknown, as any other.
    """
    app.router.redirect_slashes = False
    return app


def lambda_handler(
    app: Starlette,
    *,
    status_metrics: Mapping[int, str] | None = None,
    status_metric_routes: Collection[str] | None = None,
) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """The Lambda entry point for an HTTP function's app (FastAPI): Mangum, minus the Content-Type it puts on 204s.

    Requests that did not come through the CDN are refused first (shared.auth.origin), before any database
    access. Logged and measured by shared.core.observability; status_metrics names a counter per response status.
    """
    adapter = Mangum(
        without_slash_redirects(app), lifespan="off", text_mime_types=TEXT_MIME_TYPES, custom_handlers=[HttpApiEvents]
    )

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        refused = origin.refuse(event)
        if refused is not None:
            return refused
        return without_content_type_when_empty(adapter(event, context))

    return observability.observed(
        within_time_limit(handler), status_metrics=status_metrics, status_metric_routes=status_metric_routes
    )


def within_time_limit(handler: LambdaHandler) -> LambdaHandler:
    """A Lambda entry point whose database waits end in time to answer before the function times out.

    Each invocation gets its own budget from the context's remaining time (db.invocation_budget),
    cleared when it returns: a database that stops answering is a JSON 503, not Lambda's timeout.
    """

    def bounded(event: dict[str, Any], context: Any) -> dict[str, Any]:
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        with db.invocation_budget(remaining() if callable(remaining) else None):
            return handler(event, context)

    return bounded


def lambda_handler_for_base64_bodies(app: Starlette) -> LambdaHandler:
    """Mangum, except that a body marked as already base64 goes to API Gateway as it is.

    Mangum base64-encodes every body whose content type is not in its text list. Here every type
    counts as text (the empty string is in every content type): Mangum then sends a body that is
    valid UTF-8 as text, which reaches the client as the very same bytes, and base64-encodes any
    other. So our base64 text passes through untouched, and the marker tells us to set
    isBase64Encoded: the image bytes are never decoded and encoded again in Python.

    It is the images function's entry point: shared.core.observability logs it and sums the image bytes served.
    Requests that did not come through the CDN are refused first, and behind the CDN an unsigned
    request gets a 401 that says why (shared.auth.origin), before any database access.
    """
    adapter = Mangum(
        without_slash_redirects(app), lifespan="off", text_mime_types=[""], custom_handlers=[HttpApiEvents]
    )

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        refused = origin.refuse(event) or origin.unsigned_image_read(event)
        if refused is not None:
            return refused
        result: dict[str, Any] = adapter(event, context)
        headers = result.get("headers") or {}
        if headers.pop(PRE_ENCODED_HEADER, None) is not None:
            result["isBase64Encoded"] = True
        return without_content_type_when_empty(result)

    return observability.observed(within_time_limit(handler), bytes_metric=observability.IMAGE_BYTES_SERVED)


def without_content_type_when_empty(result: dict[str, Any]) -> dict[str, Any]:
    """A 204 or 304 Lambda result without the Content-Type Mangum adds to every v2 response."""
    if result.get("statusCode") in (204, 304):
        headers = result.get("headers") or {}
        for name in [name for name in headers if name.lower() == "content-type"]:
            del headers[name]
    return result
