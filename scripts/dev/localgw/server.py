#!/usr/bin/env python3
"""Local API Gateway (HTTP API, payload format 2.0) for the Lambda handlers named in serverless.yml."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import importlib
import json
import os
import queue
import re
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, unquote

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from scripts.build.serverless_yml import read_serverless_yml
from scripts.web import assets as web_assets

try:  # SIMD base64: a 4.5 MB image body is encoded and decoded on every request
    from pybase64 import b64decode as _b64decode
    from pybase64 import b64encode as _b64encode
except ImportError:  # pragma: no cover - binascii is the stdlib's own fast path
    from base64 import b64decode as _b64decode
    from base64 import b64encode as _b64encode

PROJECT_ROOT = Path(__file__).resolve().parents[3]

LAMBDA_PAYLOAD_LIMIT = 6_291_456  # synchronous Invoke: request and response, after base64
MAX_REQUEST_BODY = 10 * 1024 * 1024  # HTTP API payload quota: larger bodies never reach Lambda
# Past the quota the rest of a body is read and dropped, up to this much, so that the client reads
# the 413 instead of a reset (closing a socket with unread data sends RST); beyond it we just close.
DISCARD_LIMIT = 64 * 1024 * 1024
TEXT_TYPES = frozenset({"application/json", "application/javascript", "application/xml"})
JSON_HEADERS = [("Content-Type", "application/json")]
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
OPENAPI_FILE = "openapi.json"

Handler = Callable[[dict[str, Any], Any], Any]
HttpResponse = tuple[int, list[tuple[str, str]], bytes]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def error_body(code: str, message: str) -> bytes:
    """The project's one error shape: {"error": {"code", "message"}}."""
    return json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()


def error(status: int, code: str, message: str) -> HttpResponse:
    return status, list(JSON_HEADERS), error_body(code, message)


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


def load_routes(serverless_yml: Path) -> list[Route]:
    """Every httpApi route of every function; `${...}` variables stay plain strings."""
    config = read_serverless_yml(serverless_yml)
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


# --- Lambda's payload limits and the result's shape ---------------------------------------------


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def payload_size(payload: Any) -> int:
    """Bytes of a request event or a result as Lambda counts them (their JSON), without dumping and
    re-reading a multi-megabyte body: a base64 body is ASCII that JSON never escapes."""
    body = payload.get("body") if isinstance(payload, dict) else None
    if not isinstance(body, str):
        return _json_size(payload)
    rest = {k: v for k, v in payload.items() if k != "body"}
    body_size = len(body) + 2 if payload.get("isBase64Encoded") else _json_size(body)
    return _json_size(rest) + len(',"body":') + body_size


def to_http_response(result: Any) -> HttpResponse:
    """How HTTP API turns a payload 2.0 Lambda result into an HTTP response."""
    if not (isinstance(result, dict) and "statusCode" in result):
        text = result if isinstance(result, str) else json.dumps(result)
        return 200, list(JSON_HEADERS), text.encode()
    headers = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
    headers += [("Set-Cookie", str(c)) for c in result.get("cookies") or []]
    raw = result.get("body") or ""
    if not isinstance(raw, str):
        raise TypeError(f"a result's body must be a string, not {type(raw).__name__}")
    body = _b64decode(raw, validate=True) if result.get("isBase64Encoded") else raw.encode()
    return int(result["statusCode"]), headers, body


class Containers:
    """One function's containers: threads that each run one invocation at a time, with an event loop
    (and a database connection) of their own, started on demand up to `size` as Lambda starts sandboxes.

    An invocation that outlives the function's timeout loses its container: Lambda stops it and
    discards the sandbox. A thread cannot be stopped, so it is left to finish on its own and then
    ends without serving again (its database connection closed); a new container takes its place
    at once, so a stuck handler never holds the function's capacity.
    """

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._live: set[threading.Thread] = set()  # containers that may still serve
        self._lost: set[threading.Thread] = set()  # still running an invocation that timed out
        self._running: dict[Future[Any], threading.Thread] = {}
        self._idle = 0  # live containers that no queued invocation has claimed
        self._unclaimed = 0  # queued invocations that no container has claimed
        self._started = 0
        self._closed = False

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run fn() in a free container, a new one while there are fewer than `size`, else the next free."""
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the containers of {self.name} are shut down")
            self._work.put((future, fn))
            if self._idle:
                self._idle -= 1
            elif len(self._live) < self.size:
                self._start()
            else:
                self._unclaimed += 1
        return future

    def lose(self, future: Future[Any]) -> bool:
        """The invocation of `future` timed out: its container never serves again and another takes
        its place. False if it has finished after all."""
        with self._lock:
            thread = self._running.get(future)
            if thread is None or future.done():
                return False
            self._lost.add(thread)
            self._live.discard(thread)
            if self._unclaimed and not self._closed:
                self._unclaimed -= 1
                self._start()
            return True

    def shutdown(self) -> None:
        """Cancel queued invocations and wait for running ones, except in lost containers."""
        with self._lock:
            self._closed = True
            live = list(self._live)
            with contextlib.suppress(queue.Empty):
                while True:
                    item = self._work.get_nowait()
                    if item is not None:
                        item[0].cancel()
            for _ in live:
                self._work.put(None)
        for thread in live:
            while thread.is_alive() and thread not in self._lost:
                thread.join(0.1)

    def _start(self) -> None:  # with the lock held: the new container claims one queued invocation
        self._started += 1
        thread = threading.Thread(target=self._serve, name=f"lambda-{self.name}-{self._started}", daemon=True)
        self._live.add(thread)
        thread.start()

    def _serve(self) -> None:
        me = threading.current_thread()
        # Mangum calls asyncio.get_event_loop(), which raises in a thread that has no loop.
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            while (item := self._work.get()) is not None:
                future, fn = item
                if future.set_running_or_notify_cancel():
                    with self._lock:
                        self._running[future] = me
                    try:
                        result = fn()
                    except BaseException as exc:
                        future.set_exception(exc)
                    else:
                        future.set_result(result)
                    with self._lock:
                        del self._running[future]
                with self._lock:
                    lost = me in self._lost
                    if lost:
                        self._lost.discard(me)
                    elif self._unclaimed:
                        self._unclaimed -= 1
                    else:
                        self._idle += 1
                if lost:  # Lambda discards the sandbox, and its database connection with it
                    database = sys.modules.get("shared.db")
                    if database is not None:
                        database.close_connection()
                    return
        finally:
            loop.close()


@dataclass(frozen=True)
class Invocation:
    """An event on its way through a function: its result, and its deadline once a container runs it."""

    result: Future[Any]
    deadline: Future[float]  # time.monotonic() seconds, set as the handler starts


class Gateway:
    """Routes requests to handlers, each function with its own containers (see Containers)."""

    def __init__(self, routes: list[Route], *, containers: int = 4) -> None:
        self.routes = routes
        self._by_specificity = sorted(routes, key=_specificity)
        self.containers = containers
        self._functions: dict[str, Containers] = {}
        self._handlers: dict[str, Handler] = {}
        self._lock = threading.Lock()

    def match(self, method: str, raw_path: str) -> tuple[Route, dict[str, str]] | None:
        for route in self._by_specificity:
            params = route.match(method, raw_path)
            if params is not None:
                return route, params
        return None

    def _function(self, function_name: str) -> Containers:
        with self._lock:
            if function_name not in self._functions:
                self._functions[function_name] = Containers(function_name, self.containers)
            return self._functions[function_name]

    def _handler(self, route: Route) -> Handler:
        with self._lock:  # the first request is the cold start: import the module then
            if route.handler_ref not in self._handlers:
                module, attribute = route.handler_ref.rsplit(".", 1)
                loaded = importlib.import_module(module.replace("/", "."))
                self._handlers[route.handler_ref] = cast(Handler, getattr(loaded, attribute))
            return self._handlers[route.handler_ref]

    def _run(self, route: Route, event: dict[str, Any], deadline: Future[float]) -> Any:
        # The import is Lambda's init phase, which the function's timeout does not cover.
        handler = self._handler(route)
        context = LambdaContext(route, event["requestContext"]["requestId"])
        deadline.set_result(context.deadline)
        return handler(event, context)

    def _submit(self, route: Route, event: dict[str, Any]) -> Invocation | HttpResponse:
        if payload_size(event) > LAMBDA_PAYLOAD_LIMIT:
            return error(413, "payload_too_large", "Request Entity Too Large")
        deadline: Future[float] = Future()
        result = self._function(route.function_name).submit(functools.partial(self._run, route, event, deadline))
        return Invocation(result, deadline)

    def _time_left(self, route: Route, invocation: Invocation) -> float | None:
        """Seconds the invocation may still run; None once the function's timeout has passed."""
        if not invocation.deadline.done():
            return float(route.timeout_s)  # waiting for a free container: its time has not begun
        left = invocation.deadline.result() - time.monotonic()
        return left if left > 0 else None

    def _finish(self, route: Route, invocation: Invocation) -> HttpResponse:
        if not invocation.result.done() and self._function(route.function_name).lose(invocation.result):
            print(
                f"{route.function_name}: timed out after {route.timeout_s} s; its container is lost",
                file=sys.stderr,
                flush=True,
            )
            # A timeout is a function error, and API Gateway answers a function error (or a malformed
            # result) with 502 and {"message": "Internal server error"} (AWS Lambda developer guide,
            # "Handling Lambda errors with an API Gateway API"); its 504 is for its own 30 s
            # integration timeout, which never comes first here (serverless.yml gives HTTP functions
            # at most 29 s). Same status as the handler errors below, our JSON shape.
            return error(502, "bad_gateway", "Internal Server Error")
        return self._shape(route, invocation.result)

    def _shape(self, route: Route, future: Future[Any]) -> HttpResponse:
        try:
            result = future.result()
            size = payload_size(result)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            return error(502, "bad_gateway", "Internal Server Error")
        if size > LAMBDA_PAYLOAD_LIMIT:
            print(f"{route.function_name}: response exceeds {LAMBDA_PAYLOAD_LIMIT} bytes", file=sys.stderr)
            return error(413, "payload_too_large", "Payload Too Large")
        try:
            return to_http_response(result)
        except (ValueError, TypeError, AttributeError):  # binascii.Error is a ValueError
            traceback.print_exc(file=sys.stderr)
            return error(502, "bad_gateway", "Internal Server Error")

    def invoke(self, route: Route, event: dict[str, Any]) -> HttpResponse:
        """Send one event through Lambda's payload limits and timeout to the function and shape its answer."""
        submitted = self._submit(route, event)
        if not isinstance(submitted, Invocation):
            return submitted
        left: float | None = route.timeout_s
        while left is not None and not wait_for([submitted.result], timeout=left).done:
            left = self._time_left(route, submitted)
        return self._finish(route, submitted)

    async def invoke_async(self, route: Route, event: dict[str, Any]) -> HttpResponse:
        """invoke() for an event loop: the loop waits for the container without blocking."""
        submitted = self._submit(route, event)
        if not isinstance(submitted, Invocation):
            return submitted
        result = asyncio.wrap_future(submitted.result)
        # The answer is read from the container's future: mark this copy's error as seen, so that
        # asyncio does not report it as never retrieved.
        result.add_done_callback(lambda done: done.cancelled() or done.exception())
        left: float | None = route.timeout_s
        while left is not None and not (await asyncio.wait({result}, timeout=left))[0]:
            left = self._time_left(route, submitted)
        return self._finish(route, submitted)

    def handle(
        self, *, method: str, raw_path: str, raw_query: str, headers: list[tuple[str, str]], body: bytes, source_ip: str
    ) -> HttpResponse:
        found = self.match(method, raw_path)
        if found is None:
            return error(404, "not_found", "Not Found")
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
        for function in self._functions.values():
            function.shutdown()
        # The containers' database connections outlive their threads: close them as Lambda would.
        database = sys.modules.get("shared.db")
        if database is not None:
            database.close_all_connections()


# --- CORS, as HTTP API applies provider.httpApi.cors ----------------------------------------------

# What the serverless framework configures for `httpApi: {cors: true}`.
DEFAULT_CORS_HEADERS = (
    "Content-Type",
    "X-Amz-Date",
    "Authorization",
    "X-Api-Key",
    "X-Amz-Security-Token",
    "X-Amz-User-Agent",
    "X-Amzn-Trace-Id",
)
DEFAULT_CORS_METHODS = ("OPTIONS", "GET", "POST", "PUT", "DELETE", "PATCH")


@dataclass(frozen=True)
class Cors:
    """provider.httpApi.cors: API Gateway answers preflights itself and sets the CORS headers of every
    response, replacing any the function sent."""

    allowed_origins: tuple[str, ...]
    allowed_headers: tuple[str, ...] = DEFAULT_CORS_HEADERS
    allowed_methods: tuple[str, ...] = DEFAULT_CORS_METHODS
    exposed_headers: tuple[str, ...] = ()
    max_age: int | None = None
    allow_credentials: bool = False

    def _allowed_origin(self, origin: str) -> str | None:
        if origin in self.allowed_origins:
            return origin
        if "*" in self.allowed_origins:
            return origin if self.allow_credentials else "*"
        return None

    def _common(self, allowed: str) -> list[tuple[str, str]]:
        headers = [("Access-Control-Allow-Origin", allowed)]
        if self.allow_credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        return headers

    def preflight(self, origin: str, method: str, requested_headers: str) -> list[tuple[str, str]]:
        """The headers of the 204 answering a preflight: none unless origin, method and headers are allowed."""
        allowed = self._allowed_origin(origin)
        methods = {m.upper() for m in self.allowed_methods}
        asked = {h.strip().lower() for h in requested_headers.split(",") if h.strip()}
        if (
            allowed is None
            or ("*" not in methods and method.upper() not in methods)
            or ("*" not in self.allowed_headers and not asked <= {h.lower() for h in self.allowed_headers})
        ):
            return []
        headers = self._common(allowed)
        headers.append(("Access-Control-Allow-Methods", ",".join(self.allowed_methods)))
        if self.allowed_headers:
            headers.append(("Access-Control-Allow-Headers", ",".join(self.allowed_headers)))
        if self.max_age is not None:
            headers.append(("Access-Control-Max-Age", str(self.max_age)))
        if allowed != "*":
            headers.append(("Vary", "Origin"))
        return headers

    def apply(self, origin: str | None, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """A response's headers: the function's own CORS headers dropped, the configured ones added."""
        kept = [(n, v) for n, v in headers if not n.lower().startswith("access-control-")]
        allowed = None if origin is None else self._allowed_origin(origin)
        if allowed is None:
            return kept
        kept += self._common(allowed)
        if self.exposed_headers:
            kept.append(("Access-Control-Expose-Headers", ",".join(self.exposed_headers)))
        if allowed != "*":
            vary = [i for i, (n, _) in enumerate(kept) if n.lower() == "vary"]
            if not vary:
                kept.append(("Vary", "Origin"))
            elif "origin" not in kept[vary[0]][1].lower() and kept[vary[0]][1].strip() != "*":
                kept[vary[0]] = (kept[vary[0]][0], f"{kept[vary[0]][1]}, Origin")
        return kept


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(str(v) for v in value) if isinstance(value, list) else (str(value),)


def load_cors(serverless_yml: Path, *, stage: str = "dev") -> Cors | None:
    """provider.httpApi.cors with `${param:...}` resolved for the stage (params.<stage> over params.default)."""
    config = read_serverless_yml(serverless_yml)
    spec = ((config.get("provider") or {}).get("httpApi") or {}).get("cors")
    if not spec:
        return None
    if spec is True:
        return Cors(allowed_origins=("*",))
    all_params = config.get("params") or {}
    params = {**(all_params.get("default") or {}), **(all_params.get(stage) or {})}

    def resolve(value: Any) -> Any:
        found = re.fullmatch(r"\$\{param:(\w+)\}", value) if isinstance(value, str) else None
        if found is None:
            return value
        if found.group(1) not in params:
            raise ValueError(f"{serverless_yml}: {value} has no value for stage {stage!r}")
        return params[found.group(1)]

    max_age = resolve(spec.get("maxAge"))
    return Cors(
        allowed_origins=_strings(resolve(spec.get("allowedOrigins"))) or ("*",),
        allowed_headers=_strings(resolve(spec.get("allowedHeaders"))) or DEFAULT_CORS_HEADERS,
        allowed_methods=_strings(resolve(spec.get("allowedMethods"))) or DEFAULT_CORS_METHODS,
        exposed_headers=_strings(resolve(spec.get("exposedResponseHeaders"))),
        max_age=None if max_age is None else int(max_age),
        allow_credentials=bool(resolve(spec.get("allowCredentials", False))),
    )


# --- Host: API Gateway forwards only its own domain -----------------------------------------------

_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?")


@dataclass(frozen=True)
class AllowedHosts:
    """Host values the gateway answers: its own names on its own port, plus LOCALGW_ALLOWED_HOSTS
    entries (`name` for any port, `name:port` for one). The functions copy Host into image URLs."""

    with_port: frozenset[str]
    any_port: frozenset[str]

    @classmethod
    def for_address(cls, host: str, port: int, extra: Iterable[str] = ()) -> AllowedHosts:
        names = {*LOCAL_HOSTS, f"[{host}]" if ":" in host else host}
        if host in ("0.0.0.0", "::", ""):
            names.add(socket.gethostname())
        with_port = {f"{name.lower()}:{port}" for name in names}
        if port == 80:
            with_port |= {name.lower() for name in names}
        entries = [e.strip().lower() for e in extra if e.strip()]
        with_port |= {e for e in entries if _HOST.fullmatch(e) and _HOST.fullmatch(e).group(2)}  # type: ignore[union-attr]
        any_port = {e for e in entries if e not in with_port}
        return cls(frozenset(with_port), frozenset(any_port))

    def problem(self, values: list[str]) -> str | None:
        """Why these Host header values are refused, or None."""
        if len(values) != 1:
            return "exactly one Host header is required"
        found = _HOST.fullmatch(values[0])
        if found is None or (found.group(2) is not None and not 0 < int(found.group(2)) < 65536):
            return "malformed Host header"
        host = values[0].lower()
        if host not in self.with_port and found.group(1).lower() not in self.any_port:
            return f"this gateway does not serve host {values[0]!r} (see LOCALGW_ALLOWED_HOSTS)"
        return None


# --- /openapi.json and /docs ----------------------------------------------------------------------

SWAGGER_ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
SWAGGER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>CT scan store API</title>
<link rel="icon" href="/docs/favicon-32x32.png"><link rel="stylesheet" href="/docs/swagger-ui.css"></head>
<body><div id="swagger-ui"></div><script src="/docs/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});</script>
</body></html>
"""
# Without the swagger-ui-bundle package: a page that lists the operations, with nothing to download.
PLAIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>CT scan store API</title>
<style>body{font:15px system-ui,sans-serif;margin:2em}code{font-weight:bold}li{margin:.3em 0}</style></head>
<body><h1 id="title">API</h1><ul id="ops"></ul><script>
fetch("/openapi.json").then(r => r.json()).then(spec => {
  document.getElementById("title").textContent = spec.info.title + " " + spec.info.version;
  const list = document.getElementById("ops");
  for (const [path, item] of Object.entries(spec.paths))
    for (const [method, op] of Object.entries(item)) {
      const li = document.createElement("li");
      li.innerHTML = "<code></code> ";
      li.firstChild.textContent = method.toUpperCase() + " " + path;
      li.append(op.summary || op.operationId || "");
      list.append(li);
    }
});
</script></body></html>
"""


def _swagger_dir() -> Path | None:
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return Path(str(swagger_ui_path))


class Docs:
    """The checked-in OpenAPI document and a page that renders it: local only, never deployed."""

    def __init__(self, root: Path) -> None:
        self.openapi = root / OPENAPI_FILE
        self.assets = _swagger_dir()

    def answer(self, method: str, raw_path: str) -> HttpResponse | None:
        if method not in ("GET", "HEAD"):
            return None
        if raw_path == "/openapi.json":
            try:
                return 200, [*JSON_HEADERS, ("Cache-Control", "no-cache")], self.openapi.read_bytes()
            except FileNotFoundError:
                return error(404, "not_found", f"{OPENAPI_FILE} is missing from the repository root")
        html = [("Content-Type", "text/html; charset=utf-8")]
        if raw_path in ("/docs", "/docs/"):
            return 200, html, (PLAIN_PAGE if self.assets is None else SWAGGER_PAGE).encode()
        name = raw_path.removeprefix("/docs/")
        if self.assets is not None and name in SWAGGER_ASSETS:
            return 200, [("Content-Type", SWAGGER_ASSETS[name])], (self.assets / name).read_bytes()
        return None


# --- the web app (web/) at /, on the API's origin ---------------------------------------------------

# Locally the page and the API share this origin; the deploy writes its own config.json.
LOCAL_WEB_CONFIG = b'{"apiBaseUrl": ""}\n'


class WebApp:
    """The files of web/ at /, served as the deployed CDN serves them (scripts/web/assets.py): their
    Content-Type and Cache-Control, a strong ETag and 304, and the page's security headers (CSP and
    the rest). Only GET and HEAD, never under /api/, never a dotfile or a kind of file not listed."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        # With IMAGES_BUCKET, the bucket's origin is in the CSP: the page posts large files there.
        self.security_headers = web_assets.security_headers(os.environ)

    def answer(self, method: str, raw_path: str, headers: list[tuple[str, str]]) -> HttpResponse | None:
        if method not in ("GET", "HEAD") or raw_path == "/api" or raw_path.startswith("/api/"):
            return None
        relative = self._relative(raw_path)
        if relative is None or not self.root.is_dir():
            return None
        if relative == web_assets.CONFIG:
            body = LOCAL_WEB_CONFIG
        else:
            path = (self.root / relative).resolve()
            if not path.is_relative_to(self.root) or not path.is_file():
                return None
            body = path.read_bytes()  # small files, read on every request: an edit shows on reload
        etag = f'"{hashlib.sha256(body).hexdigest()}"'
        out = [
            ("Content-Type", web_assets.content_type(relative) or "application/octet-stream"),
            ("Cache-Control", web_assets.cache_control(relative)),
            ("ETag", etag),
            *self.security_headers,
        ]
        asked = [tag.strip() for n, v in headers if n == "if-none-match" for tag in v.split(",")]
        if etag in asked or f"W/{etag}" in asked or "*" in asked:
            return 304, out, b""
        return 200, out, body

    @staticmethod
    def _relative(raw_path: str) -> str | None:
        """The file a request path names, relative to web/; None for anything we do not serve."""
        path = unquote(raw_path)
        if path == "/":
            return web_assets.INDEX
        parts = path.removeprefix("/").split("/")
        if any(not part or part.startswith(".") or "\\" in part or "\x00" in part for part in parts):
            return None  # empty segments, dotfiles, . and .., backslashes, NUL
        relative = "/".join(parts)
        return relative if web_assets.content_type(relative) is not None else None


# --- the server: uvicorn (h11) around an ASGI app that only translates ----------------------------


@dataclass(frozen=True)
class Limits:
    """How long a client may take and how many may connect, as API Gateway bounds them."""

    header_timeout: float = 10.0  # from connecting (or the last response) to a complete request head
    body_timeout: float = 60.0  # for the whole body
    keep_alive_timeout: int = 5  # idle kept-alive connection
    max_connections: int = 512
    max_header_bytes: int = 10_240  # HTTP API: request line and headers together


def raw_error(status: int, code: str, message: str) -> bytes:
    """A whole JSON error response that closes the connection, for answers given outside h11's cycle."""
    body = error_body(code, message)
    phrase = HTTPStatus(status).phrase
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class GatewayProtocol(H11Protocol):
    """uvicorn's h11 connection plus what it leaves out: a deadline for the request head (uvicorn's
    keep-alive timer restarts on every byte, so a slow head would hold a connection forever), a cap
    on connections, and JSON for the errors it answers itself."""

    limits = Limits()
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.transport = transport
            transport.write(raw_error(503, "service_unavailable", "Too many connections"))
            transport.close()
            return
        super().connection_made(transport)
        # TCP_NODELAY: asyncio sets it only on sockets whose proto is IPPROTO_TCP, and accepted ones
        # say 0. With Nagle on, a kept-alive response under ~64 KB waits ~40 ms for a delayed ACK.
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # part of a request head arrived: say why we hang up
            self.transport.write(raw_error(408, "request_timeout", "Request head not received in time"))
        self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        self._arm_head_timer()  # before a pipelined request, whose head is then already in
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        self._cancel_head_timer()
        if len(self.conn.trailing_data[0]) > self.limits.max_header_bytes:  # h11 gave up on a long head
            self.transport.write(raw_error(431, "headers_too_large", "Request Header Fields Too Large"))
        else:
            self.transport.write(raw_error(400, "bad_request", "Malformed HTTP request"))
        self.transport.close()


class _Refused(Exception):
    def __init__(self, response: HttpResponse, *, close: bool = True) -> None:
        self.response, self.close = response, close


class GatewayApp:
    """The ASGI app: route → v2 event → handler in the function's container → HTTP, with CORS,
    Host checks and the body limits as API Gateway applies them."""

    def __init__(
        self,
        server: GatewayServer,
        *,
        cors: Cors | None,
        allowed_hosts: AllowedHosts,
        docs: Docs,
        limits: Limits,
        web: WebApp | None = None,
    ) -> None:
        self.server, self.cors, self.allowed_hosts, self.docs, self.limits = server, cors, allowed_hosts, docs, limits
        self.web = web

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = time.monotonic()
        method: str = scope["method"]
        raw_path = scope["raw_path"].decode("latin-1")
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"]]
        close = False
        try:
            head_size = len(method) + len(scope["raw_path"]) + len(scope["query_string"]) + 12
            if head_size + sum(len(n) + len(v) + 4 for n, v in headers) > self.limits.max_header_bytes:
                raise _Refused(error(431, "headers_too_large", "Request Header Fields Too Large"))
            body = await self._read_body(receive, headers)
            status, out, payload = await self._respond(scope, method, raw_path, headers, body)
        except _Refused as refused:
            (status, out, payload), close = refused.response, refused.close
        except Exception:
            traceback.print_exc(file=sys.stderr)
            (status, out, payload), close = error(500, "internal_error", "Internal Server Error"), True
        await self._send(send, method, status, out, payload, close=close)
        if self.server.access_log:
            elapsed_ms = (time.monotonic() - started) * 1000
            print(f"{method} {raw_path} {status} {elapsed_ms:.1f}ms", file=sys.stderr, flush=True)

    async def _read_body(self, receive: Receive, headers: list[tuple[str, str]]) -> bytes:
        too_large = error(413, "payload_too_large", "Request Entity Too Large")
        declared = next((int(v) for n, v in headers if n == "content-length" and v.isdigit()), 0)
        waiting = any(n == "expect" and v.lower() == "100-continue" for n, v in headers)
        if declared > MAX_REQUEST_BODY and (waiting or declared > DISCARD_LIMIT):
            raise _Refused(too_large)  # nothing sent yet, or more than we are willing to drain
        deadline = time.monotonic() + self.limits.body_timeout
        chunks: list[bytes] = []
        total, more = 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise _Refused(error(408, "request_timeout", "Request body not received in time")) from None
            if message["type"] == "http.disconnect":
                raise _Refused(error(400, "bad_request", "Client disconnected"))
            data: bytes = message.get("body", b"")
            total += len(data)
            if total > DISCARD_LIMIT:
                raise _Refused(too_large)
            if total <= MAX_REQUEST_BODY:
                chunks.append(data)
            more = message.get("more_body", False)
        if total > MAX_REQUEST_BODY:
            raise _Refused(too_large, close=False)  # drained: the connection is clean
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _respond(
        self, scope: Scope, method: str, raw_path: str, headers: list[tuple[str, str]], body: bytes
    ) -> HttpResponse:
        problem = self.allowed_hosts.problem([v for n, v in headers if n == "host"])
        if problem is not None:
            raise _Refused(error(400, "invalid_host", problem), close=False)
        origin = next((v for n, v in headers if n == "origin"), None)
        requested = next((v for n, v in headers if n == "access-control-request-method"), None)
        if self.cors is not None and method == "OPTIONS" and origin is not None and requested is not None:
            asked = ",".join(v for n, v in headers if n == "access-control-request-headers")
            return 204, self.cors.preflight(origin, requested, asked), b""
        found = self.server.gateway.match(method, raw_path)
        if found is None:
            response = (
                self.docs.answer(method, raw_path)
                or (self.web and self.web.answer(method, raw_path, headers))
                or error(404, "not_found", "Not Found")
            )
        else:
            route, params = found
            client = scope.get("client") or ("127.0.0.1", 0)
            event = build_event(
                method=method,
                raw_path=raw_path,
                raw_query=scope["query_string"].decode("latin-1"),
                headers=self._forwarded(headers, client[0]),
                body=body,
                source_ip=client[0],
                route=route,
                path_params=params,
            )
            response = await self.server.gateway.invoke_async(route, event)
        if self.cors is None:
            return response
        return response[0], self.cors.apply(origin, response[1]), response[2]

    def _forwarded(self, headers: list[tuple[str, str]], client_ip: str) -> list[tuple[str, str]]:
        forwarded = ("x-forwarded-for", "x-forwarded-port", "x-forwarded-proto")
        kept = [(n, v) for n, v in headers if n not in forwarded]
        chain = [v for n, v in headers if n == "x-forwarded-for"] + [client_ip]
        port = str(self.server.server_address[1])
        return [*kept, ("x-forwarded-for", ", ".join(chain)), ("x-forwarded-port", port), ("x-forwarded-proto", "http")]

    async def _send(
        self, send: Send, method: str, status: int, headers: list[tuple[str, str]], body: bytes, *, close: bool
    ) -> None:
        out: list[tuple[bytes, bytes]] = []
        declared = None
        for name, value in headers:
            lower = name.lower()
            if lower == "content-length":
                declared = value
            elif lower not in ("transfer-encoding", "connection"):
                out.append((name.encode("latin-1"), value.encode("latin-1")))
        if method == "HEAD" or status == 304:
            length = declared if declared is not None else (None if status == 304 else str(len(body)))
        else:
            length = None if status == 204 or status < 200 else str(len(body))
        if length is not None:
            out.append((b"Content-Length", length.encode()))
        if close:
            out.append((b"Connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


def listening_socket(address: tuple[str, int], backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class GatewayServer:
    """The local gateway on one listening socket: serve_forever(), shutdown() and server_close() as
    socketserver has them, so scripts and tests can run it in a thread."""

    access_log = True
    # socketserver's default backlog was 5: a burst of browser connections stalled 1-3 s and reset.
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        gateway: Gateway,
        *,
        cors: Cors | None = None,
        limits: Limits = Limits(),
        allowed_hosts: Iterable[str] = (),
        docs_root: Path = PROJECT_ROOT,
        web_root: Path | None = None,
        listener: socket.socket | None = None,
    ) -> None:
        self.gateway = gateway
        self.socket = listening_socket(address, self.request_queue_size) if listener is None else listener
        self.server_address: tuple[str, int] = self.socket.getsockname()[:2]
        hosts = AllowedHosts.for_address(address[0], self.server_address[1], allowed_hosts)
        web = WebApp(docs_root / "web" if web_root is None else web_root)
        app = GatewayApp(self, cors=cors, allowed_hosts=hosts, docs=Docs(docs_root), limits=limits, web=web)
        protocol = type("GatewayConnection", (GatewayProtocol,), {"limits": limits})
        config = uvicorn.Config(
            app,
            http=protocol,
            ws="none",
            lifespan="off",
            proxy_headers=False,  # X-Forwarded-* are the client's; the event says who connected
            server_header=False,
            date_header=True,
            access_log=False,  # ours leaves out the query string, which may hold tokens
            log_config=None,
            log_level="warning",
            backlog=self.request_queue_size,
            timeout_keep_alive=limits.keep_alive_timeout,
            timeout_graceful_shutdown=5,
            # h11 refuses a head this large only while it is incomplete; the app checks whole ones.
            h11_max_incomplete_event_size=limits.max_header_bytes + 1024,
        )
        self._server = uvicorn.Server(config)
        self._started = threading.Event()
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        self._started.set()
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serve_forever() (from another thread) and wait until it has returned."""
        self._server.should_exit = True
        if self._started.is_set():
            self._stopped.wait()

    def server_close(self) -> None:
        self.socket.close()
        self.gateway.close()


def make_server(
    host: str,
    port: int,
    *,
    serverless_yml: Path,
    containers: int = 4,
    stage: str = "dev",
    limits: Limits = Limits(),
    allowed_hosts: Iterable[str] | None = None,
    listener: socket.socket | None = None,
) -> GatewayServer:
    """The gateway for serverless.yml's routes and CORS; extra Host names from LOCALGW_ALLOWED_HOSTS."""
    if allowed_hosts is None:
        allowed_hosts = os.environ.get("LOCALGW_ALLOWED_HOSTS", "").split(",")
    return GatewayServer(
        (host, port),
        Gateway(load_routes(serverless_yml), containers=containers),
        cors=load_cors(serverless_yml, stage=stage),
        limits=limits,
        allowed_hosts=allowed_hosts,
        docs_root=serverless_yml.parent,
        listener=listener,
    )


def _serve(server: GatewayServer) -> None:
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _die_with(parent: int) -> None:
    """End this worker when the watching process is gone, even by SIGKILL: an orphan would hold the
    port and the next `make run` would find it in use."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    else:  # pragma: no cover - no prctl: look for the parent twice a second

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, name="localgw-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # it died before we asked
        os._exit(1)


def serve_in_workers(make: Callable[[socket.socket], GatewayServer], listener: socket.socket, workers: int) -> int:
    """Pre-fork: `workers` processes accept on one listening socket, each a whole gateway with its
    own function containers, as Lambda runs each container in a process of its own (one gateway
    process is bound by one GIL). This process only watches them: a worker that dies is replaced,
    and SIGINT or SIGTERM stops them all."""
    children: set[int] = set()
    stopping = False
    parent = os.getpid()

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:  # the worker: a fresh gateway on the inherited socket
            code = 0
            try:
                _die_with(parent)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                _serve(make(listener))
            except BaseException:  # a worker must never return into the parent's code
                traceback.print_exc(file=sys.stderr)
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children.add(pid)

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    # Nothing that a worker must not share may be open now: no threads, no database connections.
    database = sys.modules.get("shared.db")
    if database is not None:
        database.close_all_connections()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(workers):
        spawn()
    status = 0
    while children:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        children.discard(pid)
        if not stopping:
            print(f"local gateway: worker {pid} exited ({code}); starting another", file=sys.stderr, flush=True)
            status = 1
            spawn()
    listener.close()
    return 0 if stopping else status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    parser.add_argument("--containers", type=int, default=4, help="concurrent requests per function and worker")
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("LOCALGW_WORKERS", "0")) or default_workers(),
        help="gateway processes sharing the port (default: LOCALGW_WORKERS, else up to 2 by CPU count)",
    )
    parser.add_argument("--config", type=Path, default=PROJECT_ROOT / "serverless.yml")
    parser.add_argument("--stage", default="dev", help="whose params (CORS origins) to use")
    parser.add_argument("--no-access-log", action="store_true", help="no line per request on stderr")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    # Lambda sends a function's output to CloudWatch line by line; so do we, into a pipe too: the
    # functions' JSON log lines and EMF metrics (shared.core.observability) appear as each request ends.
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(line_buffering=True)
    listener = listening_socket((args.host, args.port), GatewayServer.request_queue_size)

    def make(sock: socket.socket) -> GatewayServer:
        made = make_server(
            args.host,
            args.port,
            serverless_yml=args.config,
            containers=args.containers,
            stage=args.stage,
            listener=sock,
        )
        made.access_log = not args.no_access_log
        return made

    server = make(listener)
    workers = f", {args.workers} worker processes" if args.workers > 1 else ""
    print(f"Local gateway on http://{args.host}:{server.server_address[1]}{workers}")
    for route in server.gateway.routes:
        print(f"  {route.route_key:<56} -> {route.function_name}")
    print(f"  {'GET /openapi.json, GET /docs':<56} -> the gateway (local only)")
    print(f"  {'GET /, GET /config.json and the files of web/':<56} -> the web app: http://{args.host}:{args.port}/")
    sys.stdout.flush()
    if args.workers == 1:
        _serve(server)
        return 0
    return serve_in_workers(make, listener, args.workers)


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


if __name__ == "__main__":
    sys.exit(main())
