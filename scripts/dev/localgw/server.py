"""The server: uvicorn (h11) around an ASGI app that only translates, on one listening socket or in
worker processes sharing it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from scripts.dev.localgw.cdn import ViewerCacheControl, load_viewer_cache_control, viewer_headers
from scripts.dev.localgw.containers import Gateway
from scripts.dev.localgw.cors import Cors, load_cors
from scripts.dev.localgw.events import build_event
from scripts.dev.localgw.hosts import AllowedHosts
from scripts.dev.localgw.responses import OWN_HEADERS, HttpResponse, error, error_body
from scripts.dev.localgw.routes import load_routes
from scripts.dev.localgw.static import Docs, WebApp

PROJECT_ROOT = Path(__file__).resolve().parents[3]

MAX_REQUEST_BODY = 10 * 1024 * 1024  # HTTP API payload quota: larger bodies never reach Lambda
# Past the quota the rest of a body is read and dropped, up to this much, so that the client reads
# the 413 instead of a reset (closing a socket with unread data sends RST); beyond it we just close.
DISCARD_LIMIT = 64 * 1024 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


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
    own = "".join(f"{name}: {value}\r\n" for name, value in OWN_HEADERS)
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"{own}Connection: close\r\n\r\n"
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
        viewer: list[ViewerCacheControl] | None = None,
    ) -> None:
        self.server, self.cors, self.allowed_hosts, self.docs, self.limits = server, cors, allowed_hosts, docs, limits
        self.web = web
        # The deployed CDN's Cache-Control for viewers, per path (infra/web.yml): what a browser gets.
        self.viewer = viewer or []

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
            print(access_line(method, raw_path, status, elapsed_ms), file=sys.stderr, flush=True)

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
        headers = [(n, self.allowed_hosts.completed(v) if n == "host" else v) for n, v in headers]
        origin = next((v for n, v in headers if n == "origin"), None)
        requested = next((v for n, v in headers if n == "access-control-request-method"), None)
        if self.cors is not None and method == "OPTIONS" and origin is not None and requested is not None:
            asked = ",".join(v for n, v in headers if n == "access-control-request-headers")
            return 204, [*self.cors.preflight(origin, requested, asked), *OWN_HEADERS], b""
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
        response = response[0], viewer_headers(self.viewer, raw_path, response[1]), response[2]
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


def access_line(method: str, path: str, status: int, elapsed_ms: float) -> str:
    """The gateway's line per request (never the query string, which may hold a signature or token):
    readable, or JSON with LOG_FORMAT=json, like every other line then."""
    if os.environ.get("LOG_FORMAT", "").strip().lower() == "json":
        fields = {"level": "INFO", "message": "access", "method": method, "path": path, "status_code": status}
        return json.dumps({**fields, "latency_ms": round(elapsed_ms, 1)}, separators=(",", ":"))
    return f"{method} {path} {status} {elapsed_ms:.1f}ms"


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
        app = GatewayApp(
            self,
            cors=cors,
            allowed_hosts=hosts,
            docs=Docs(docs_root),
            limits=limits,
            web=web,
            viewer=load_viewer_cache_control(docs_root),
        )
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


def serve(server: GatewayServer) -> None:
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
                serve(make(listener))
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


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))
