#!/usr/bin/env python3
"""Local API Gateway (HTTP API, payload format 2.0) for the Lambda handlers named in serverless.yml."""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import importlib
import json
import os
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, unquote

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

LAMBDA_PAYLOAD_LIMIT = 6_291_456  # synchronous Invoke: request and response, after base64
MAX_REQUEST_BODY = 10 * 1024 * 1024  # HTTP API payload quota: larger bodies never reach Lambda
TEXT_TYPES = frozenset({"application/json", "application/javascript", "application/xml"})
JSON_HEADERS = [("Content-Type", "application/json")]

Handler = Callable[[dict[str, Any], Any], Any]
HttpResponse = tuple[int, list[tuple[str, str]], bytes]


def error(status: int, message: str) -> HttpResponse:
    return status, list(JSON_HEADERS), json.dumps({"message": message}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Route:
    method: str
    path_template: str
    function_name: str
    handler_ref: str
    timeout_s: int
    memory_mb: int = 1024

    @property
    def route_key(self) -> str:
        return f"{self.method} {self.path_template}"

    def match(self, method: str, raw_path: str) -> dict[str, str] | None:
        """Path parameters (URL-decoded) when this route serves the request, else None."""
        if self.method not in (method, "ANY"):
            return None
        pattern, names = _compile(self.path_template)
        found = pattern.fullmatch(raw_path)
        return None if found is None else {n: unquote(v) for n, v in zip(names, found.groups(), strict=True)}


@functools.cache
def _compile(template: str) -> tuple[re.Pattern[str], list[str]]:
    names: list[str] = []
    parts: list[str] = []
    for piece in re.split(r"(\{[^}]+\})", template):
        if piece.startswith("{") and piece.endswith("}"):
            greedy = piece.endswith("+}")
            names.append(piece[1 : -2 if greedy else -1])
            parts.append("(.+)" if greedy else "([^/]+)")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts)), names


def _specificity(route: Route) -> tuple[int, int, bool]:
    return route.path_template.count("+}"), route.path_template.count("{"), route.method == "ANY"


def _as_int(value: Any, default: int) -> int:
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else default


class _CloudFormationLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type hints
    """SafeLoader that reads CloudFormation short forms (!Ref, !GetAtt, !Sub …) as plain values."""


def _cloudformation_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    # Only routes are read here; what a reference resolves to matters to CloudFormation, not to us.
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    return {suffix: loader.construct_mapping(node, deep=True)}


_CloudFormationLoader.add_multi_constructor("!", _cloudformation_tag)


def load_routes(serverless_yml: Path) -> list[Route]:
    """Every httpApi route of every function; `${...}` variables stay plain strings."""
    config = yaml.load(serverless_yml.read_text(encoding="utf-8"), Loader=_CloudFormationLoader) or {}
    provider = config.get("provider") or {}
    routes: list[Route] = []
    for name, spec in (config.get("functions") or {}).items():
        timeout = _as_int(spec.get("timeout"), _as_int(provider.get("timeout"), 29))
        memory = _as_int(spec.get("memorySize"), _as_int(provider.get("memorySize"), 1024))
        for event in spec.get("events") or []:
            http = event.get("httpApi") if isinstance(event, dict) else None
            if isinstance(http, str) and " " in http:
                method, path = http.split(" ", 1)
            elif isinstance(http, dict):
                method, path = str(http.get("method", "*")), str(http["path"])
            else:
                continue
            method = "ANY" if method == "*" else method.upper()
            routes.append(Route(method, path, str(name), str(spec["handler"]), timeout, memory))
    return routes


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
        event["body"] = base64.b64encode(body).decode("ascii") if text is None else text
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

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def to_http_response(result: Any) -> HttpResponse:
    """How HTTP API turns a payload 2.0 Lambda result into an HTTP response."""
    if not (isinstance(result, dict) and "statusCode" in result):
        text = result if isinstance(result, str) else json.dumps(result)
        return 200, list(JSON_HEADERS), text.encode()
    headers = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
    headers += [("Set-Cookie", str(c)) for c in result.get("cookies") or []]
    raw = result.get("body") or ""
    body = base64.b64decode(raw, validate=True) if result.get("isBase64Encoded") else str(raw).encode()
    return int(result["statusCode"]), headers, body


class Gateway:
    """Routes requests to handlers, each function with its own pool of single-request containers."""

    def __init__(self, routes: list[Route], *, containers: int = 4) -> None:
        self.routes = routes
        self._by_specificity = sorted(routes, key=_specificity)
        self.containers = containers
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._handlers: dict[str, Handler] = {}
        self._loops: list[asyncio.AbstractEventLoop] = []
        self._lock = threading.Lock()

    def match(self, method: str, raw_path: str) -> tuple[Route, dict[str, str]] | None:
        for route in self._by_specificity:
            params = route.match(method, raw_path)
            if params is not None:
                return route, params
        return None

    def _pool(self, function_name: str) -> ThreadPoolExecutor:
        with self._lock:
            if function_name not in self._pools:
                self._pools[function_name] = ThreadPoolExecutor(
                    self.containers, thread_name_prefix=f"lambda-{function_name}", initializer=self._start_container
                )
            return self._pools[function_name]

    def _start_container(self) -> None:
        # Mangum calls asyncio.get_event_loop(), which raises in a thread that has no loop.
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        with self._lock:
            self._loops.append(loop)

    def _handler(self, route: Route) -> Handler:
        with self._lock:  # the first request is the cold start: import the module then
            if route.handler_ref not in self._handlers:
                module, attribute = route.handler_ref.rsplit(".", 1)
                loaded = importlib.import_module(module.replace("/", "."))
                self._handlers[route.handler_ref] = cast(Handler, getattr(loaded, attribute))
            return self._handlers[route.handler_ref]

    def _run(self, route: Route, event: dict[str, Any]) -> Any:
        context = LambdaContext(route, event["requestContext"]["requestId"])
        return self._handler(route)(event, context)

    def invoke(self, route: Route, event: dict[str, Any]) -> HttpResponse:
        """Send one event through Lambda's payload limits to the function and shape its answer."""
        if len(json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()) > LAMBDA_PAYLOAD_LIMIT:
            return error(413, "Request Entity Too Large")
        try:
            result = self._pool(route.function_name).submit(self._run, route, event).result()
            encoded = json.dumps(result, separators=(",", ":"))
        except Exception:
            traceback.print_exc(file=sys.stderr)
            return error(502, "Internal Server Error")
        if len(encoded.encode()) > LAMBDA_PAYLOAD_LIMIT:
            print(f"{route.function_name}: response exceeds {LAMBDA_PAYLOAD_LIMIT} bytes", file=sys.stderr)
            return error(413, "Payload Too Large")
        try:
            return to_http_response(json.loads(encoded))
        except (ValueError, TypeError, AttributeError):
            traceback.print_exc(file=sys.stderr)
            return error(502, "Internal Server Error")

    def handle(
        self, *, method: str, raw_path: str, raw_query: str, headers: list[tuple[str, str]], body: bytes, source_ip: str
    ) -> HttpResponse:
        found = self.match(method, raw_path)
        if found is None:
            return error(404, "Not Found")
        route, params = found
        event = build_event(
            method=method,
            raw_path=raw_path,
            raw_query=raw_query,
            headers=headers,
            body=body,
            source_ip=source_ip,
            route=route,
            path_params=params,
        )
        return self.invoke(route, event)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        for loop in self._loops:
            loop.close()


class BodyTooLarge(Exception):
    """The request body is over the HTTP API payload quota."""


class GatewayServer(ThreadingHTTPServer):
    daemon_threads = True
    access_log = True
    # socketserver's default backlog is 5: a burst of browser connections stalled 1-3 s and reset.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], gateway: Gateway) -> None:
        super().__init__(address, RequestHandler)
        self.gateway = gateway

    def server_close(self) -> None:
        super().server_close()
        self.gateway.close()


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: headers and body go out in two writes; with Nagle on, the body of every response
    # under ~64 KB waited for the client's delayed ACK, ~40 ms on each kept-alive request.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the default lines carry the query string, which may hold tokens."""

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while (size := int(self.rfile.readline(1024).split(b";", 1)[0].strip() or b"0", 16)) > 0:
                total += size
                if total > MAX_REQUEST_BODY:
                    raise BodyTooLarge
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
            while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_REQUEST_BODY:
            raise BodyTooLarge
        return self.rfile.read(length) if length > 0 else b""

    def _forwarded_headers(self) -> list[tuple[str, str]]:
        forwarded = ("x-forwarded-for", "x-forwarded-port", "x-forwarded-proto")
        kept = [(n, v) for n, v in self.headers.items() if n.lower() not in forwarded]
        chain = [v for n, v in self.headers.items() if n.lower() == "x-forwarded-for"] + [self.client_address[0]]
        port = str(cast(GatewayServer, self.server).server_port)
        return [*kept, ("x-forwarded-for", ", ".join(chain)), ("x-forwarded-port", port), ("x-forwarded-proto", "http")]

    def _handle(self) -> None:
        started = time.monotonic()
        raw_path, _, raw_query = self.path.partition("?")
        try:
            body = self._read_body()
        except (BodyTooLarge, ValueError) as exc:
            self.close_connection = True  # the unread body must not be parsed as the next request
            response = (
                error(413, "Request Entity Too Large") if isinstance(exc, BodyTooLarge) else error(400, "Bad Request")
            )
        else:
            gateway = cast(GatewayServer, self.server).gateway
            response = gateway.handle(
                method=self.command,
                raw_path=raw_path,
                raw_query=raw_query,
                headers=self._forwarded_headers(),
                body=body,
                source_ip=self.client_address[0],
            )
        self._send(*response)
        elapsed_ms = (time.monotonic() - started) * 1000
        if cast(GatewayServer, self.server).access_log:
            print(f"{self.command} {raw_path} {response[0]} {elapsed_ms:.1f}ms", file=sys.stderr, flush=True)

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        declared = [v for n, v in headers if n.lower() == "content-length"]
        for name, value in headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        head = self.command == "HEAD"
        self.send_header("Content-Length", declared[0] if head and declared else str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle


def make_server(host: str, port: int, *, serverless_yml: Path, containers: int = 4) -> ThreadingHTTPServer:
    return GatewayServer((host, port), Gateway(load_routes(serverless_yml), containers=containers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    parser.add_argument("--containers", type=int, default=4, help="concurrent requests per function")
    parser.add_argument("--config", type=Path, default=PROJECT_ROOT / "serverless.yml")
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port, serverless_yml=args.config, containers=args.containers)
    print(f"Local gateway on http://{args.host}:{server.server_address[1]}")
    for route in cast(GatewayServer, server).gateway.routes:
        print(f"  {route.route_key:<56} -> {route.function_name}")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
