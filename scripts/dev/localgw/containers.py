"""Lambda's side of an invocation: each function's containers (threads started on demand, lost on a
timeout), the gateway that routes an event to them (Gateway), and Lambda's payload limits and the
result's shape on the way back."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import json
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from typing import Any, cast

from scripts.dev.localgw.events import LambdaContext, build_event
from scripts.dev.localgw.responses import JSON_HEADERS, HttpResponse, error
from scripts.dev.localgw.routes import Route, specificity

try:  # SIMD base64: a 4.5 MB image body is encoded and decoded on every request
    from pybase64 import b64decode as _b64decode
except ImportError:  # pragma: no cover - binascii is the stdlib's own fast path
    from base64 import b64decode as _b64decode

# --- Lambda's payload limits and the result's shape ---------------------------------------------

LAMBDA_PAYLOAD_LIMIT = 6_291_456  # synchronous Invoke: request and response, after base64


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


# --- each function's containers, and the gateway that invokes them --------------------------------

Handler = Callable[[dict[str, Any], Any], Any]


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
        self._by_specificity = sorted(routes, key=specificity)
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
