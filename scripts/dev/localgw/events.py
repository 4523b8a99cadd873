"""The API Gateway HTTP API payload format 2.0 event of a request, AWS-exact, and the Lambda context
a handler is called with: what the tests and benchmarks need to call a handler in process. Imports
no server (uvicorn, h11)."""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import parse_qsl

from scripts.dev.localgw.routes import Route

try:  # SIMD base64: a 4.5 MB image body is encoded and decoded on every request
    from pybase64 import b64encode as _b64encode
except ImportError:  # pragma: no cover - binascii is the stdlib's own fast path
    from base64 import b64encode as _b64encode

TEXT_TYPES = frozenset({"application/json", "application/javascript", "application/xml"})


def _is_text(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime.startswith("text/") or mime in TEXT_TYPES or mime.endswith(("+json", "+xml"))


def build_event(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: list[tuple[str, str]],
    body: bytes,
    source_ip: str,
    route: Route,
    path_params: dict[str, str],
) -> dict[str, Any]:
    """The API Gateway HTTP API payload format 2.0 event for one request."""
    merged: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        key = name.lower()
        if key == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
        else:
            merged[key] = f"{merged[key]},{value}" if key in merged else value
    query: dict[str, str] = {}
    for key, value in parse_qsl(raw_query, keep_blank_values=True):
        query[key] = f"{query[key]},{value}" if key in query else value
    now = time.time()
    domain = merged.get("host", "localhost")
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route.route_key,
        "rawPath": raw_path,
        "rawQueryString": raw_query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = merged
    if query:
        event["queryStringParameters"] = query
    event["requestContext"] = {
        "accountId": "000000000000",
        "apiId": "local",
        "domainName": domain,
        "domainPrefix": domain.split(":", 1)[0].split(".", 1)[0],
        "http": {
            "method": method,
            "path": raw_path,
            "protocol": "HTTP/1.1",
            "sourceIp": source_ip,
            "userAgent": merged.get("user-agent", ""),
        },
        "requestId": str(uuid.uuid4()),
        "routeKey": route.route_key,
        "stage": "$default",
        "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
        "timeEpoch": int(now * 1000),
    }
    is_base64 = False
    if body:
        text = None
        if _is_text(merged.get("content-type", "")):
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        is_base64 = text is None
        event["body"] = _b64encode(body).decode("ascii") if text is None else text
    if path_params:
        event["pathParameters"] = path_params
    event["isBase64Encoded"] = is_base64
    return event


class LambdaContext:
    """The attributes of the Python runtime's context object that handlers use."""

    def __init__(self, route: Route, request_id: str) -> None:
        self.function_name = route.function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{route.function_name}"
        self.memory_limit_in_mb = route.memory_mb
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{route.function_name}"
        self.log_stream_name = f"{time.strftime('%Y/%m/%d')}/[$LATEST]local"
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + route.timeout_s

    @property
    def deadline(self) -> float:
        """When the invocation times out, in time.monotonic() seconds."""
        return self._deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))
