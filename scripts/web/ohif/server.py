"""OHIF at / and the API behind it on one origin: the browser makes no CORS preflight per frame.

Static files come from the prepared dist (dist.py) with the content types and cache rules of
scripts/web/assets.py, every path that names no file falls back to index.html (OHIF's client-side
routes: /viewer, /local, ...), and app-config.js is generated for the DICOMweb root. Requests under
the proxied prefixes (/api/ and the DICOMweb root's first segment) are forwarded to the upstream as
they came (method, path and query, headers with Authorization and Accept, body) and answered with
the upstream's status, headers and bytes. Development only: never deployed.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import select
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio.to_thread
import uvicorn

from scripts.web import assets
from scripts.web.ohif import dist

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Response = tuple[int, list[tuple[str, str]], bytes]

# Kinds OHIF's dist has beyond what web/ has (assets.CONTENT_TYPES). application/wasm lets the
# browser compile the codecs while they download (WebAssembly.instantiateStreaming insists on it).
CONTENT_TYPES = {
    **assets.CONTENT_TYPES,
    ".wasm": "application/wasm",
    ".woff2": "font/woff2",
    ".ico": "image/x-icon",
    ".xml": "application/xml",
    ".txt": "text/plain; charset=utf-8",
}
# webpack names its chunks by content hash (89.bundle.b327bf3664812958.js, 5130ccb17e3f3f5b.wasm):
# a new build is a new URL, so those are kept for a year; everything else is revalidated.
_HASHED = (".bundle.", ".wasm", ".woff2")

# Hop-by-hop headers (RFC 9110 7.6.1) are the connection's, not the message's: never forwarded.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding"}
    | {"upgrade", "proxy-connection"}
)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
UPSTREAM_TIMEOUT_S = 120


def content_security_policy(index_html: bytes) -> str:
    """The narrowest policy OHIF 3.13 runs under, found by taking each source away (tests/test_ohif.py
    fails on any violation): its two inline scripts by hash; 'unsafe-eval' because the JPEG-LS and
    JPEG 2000 decoders (emscripten, in the image loader's workers) evaluate strings, which
    'wasm-unsafe-eval' does not cover; inline <style> elements (Radix, React); data: images (the
    thumbnails). Workers, fonts, the codecs' .wasm and every request are this origin's."""
    scripts = " ".join(["'self'", *dist.inline_script_hashes(index_html), "'unsafe-eval'"])
    return (
        f"default-src 'self'; script-src {scripts}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


def security_headers(index_html: bytes) -> tuple[tuple[str, str], ...]:
    """What the viewer's own files are served with. Cross-origin isolation lets cornerstone use
    SharedArrayBuffer (OHIF warns without it); everything is same-origin, so require-corp costs nothing.
    no-referrer: the first page's URL holds ?token=, and its subresource requests would carry it."""
    return (
        ("X-Content-Type-Options", "nosniff"),
        ("Content-Security-Policy", content_security_policy(index_html)),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
        ("Cross-Origin-Embedder-Policy", "require-corp"),
        ("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
    )


def content_type(relative: str) -> str | None:
    return CONTENT_TYPES.get(PurePosixPath(relative).suffix.lower())


def cache_control(relative: str) -> str:
    name = PurePosixPath(relative).name
    return assets.IMMUTABLE if any(part in name for part in _HASHED) else assets.NO_CACHE


def proxied_prefixes(dicomweb_root: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """/api/, the DICOMweb root's first segment (/dicom-web/ for Orthanc) and any extra prefixes."""
    first = "/" + dicomweb_root.strip("/").split("/")[0] + "/"
    found: list[str] = []
    for prefix in ("/api/", first, *extra):
        normal = "/" + prefix.strip("/") + "/"
        if normal != "//" and normal not in found:
            found.append(normal)
    return tuple(found)


@dataclass
class Upstream:
    """Buffered HTTP/1.1 forwarding to one base URL, a kept-alive connection per worker thread."""

    base: str
    timeout: float = UPSTREAM_TIMEOUT_S
    _local: threading.local = field(default_factory=threading.local)
    _open: set[http.client.HTTPConnection] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        parts = urlsplit(self.base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the upstream is a base URL like http://127.0.0.1:3000, not {self.base!r}")
        self.scheme, self.netloc = parts.scheme, parts.netloc
        self.path_prefix = parts.path.rstrip("/")

    def request(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> Response:
        """One exchange. A kept-alive connection the upstream has closed is replaced before use; one it
        closes while an idempotent request is under way is retried once on a fresh one."""
        for attempt in (1, 2):
            connection, reused = self._connection()
            try:
                connection.putrequest(method, self.path_prefix + target, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    connection.putheader(name, value)
                if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
                    connection.putheader("Content-Length", str(len(body)))
                connection.endheaders(body or None)
                response = connection.getresponse()
                payload = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._drop()
                if reused and attempt == 1 and method in IDEMPOTENT:
                    continue
                raise
            except Exception:
                self._drop()
                raise
            if response.will_close:
                self._drop()
            return response.status, [(n, v) for n, v in response.getheaders()], payload
        raise AssertionError("unreachable")

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        existing: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if existing is not None and existing.sock is not None and not _readable(existing.sock):
            return existing, True
        if existing is not None:  # idle and readable: the upstream closed it (EOF waiting)
            self._drop()
        kind = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        made = kind(self.netloc, timeout=self.timeout)
        with self._lock:
            self._open.add(made)
        self._local.connection = made
        return made, False

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            with self._lock:
                self._open.discard(connection)
            connection.close()

    def close(self) -> None:
        """Close every kept-alive connection (the worker threads' too)."""
        with self._lock:
            connections, self._open = list(self._open), set()
        for connection in connections:
            connection.close()


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


class OhifApp:
    """The ASGI app: the viewer's files, its generated config, and the forwarded API."""

    def __init__(
        self,
        root: Path,
        *,
        dicomweb_root: str,
        upstream: str,
        prefixes: tuple[str, ...],
        token: str | None = None,
        access_log: bool = True,
    ) -> None:
        self.root = root.resolve()
        self.index = (self.root / "index.html").read_bytes()
        self.config = dist.app_config(dicomweb_root).encode()
        self.security_headers = security_headers(self.index)
        self.upstream = Upstream(upstream)
        self.prefixes = prefixes
        # OHIF sends a token only on viewer routes (?token=); with one here, the study list at / works
        # too: forwarded requests without an Authorization header get this one.
        self.authorization = f"Bearer {token}" if token else None
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = time.monotonic()
        method: str = scope["method"]
        raw_path = scope["raw_path"].decode("latin-1")
        headers = [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in scope["headers"]]
        if any(raw_path.startswith(prefix) or raw_path == prefix.rstrip("/") for prefix in self.prefixes):
            status, out, body = await self._forward(scope, receive, method, raw_path, headers)
        else:
            status, out, body = self._static(method, raw_path, headers)
        await send({"type": "http.response.start", "status": status, "headers": _encode(out)})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
        if self.access_log:  # never the query string: the viewer's first URL carries ?token=
            elapsed_ms = (time.monotonic() - started) * 1000
            print(f"{method} {raw_path} {status} {elapsed_ms:.1f}ms", file=sys.stderr, flush=True)

    async def _forward(
        self, scope: Scope, receive: Receive, method: str, raw_path: str, headers: list[tuple[str, str]]
    ) -> Response:
        chunks = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _error(400, "bad_request", "the client went away")
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        query = scope["query_string"].decode("latin-1")
        target = raw_path + (f"?{query}" if query else "")
        host = next((v for n, v in headers if n == "host"), "")
        client = scope.get("client") or ("", 0)
        forwarded = [(n, v) for n, v in headers if n not in HOP_BY_HOP and n not in ("host", "content-length")]
        if self.authorization and not any(n == "authorization" for n, _ in forwarded):
            forwarded.append(("Authorization", self.authorization))
        # The upstream sees its own Host (the local gateway answers only its own); where the browser
        # really was goes in Forwarded (RFC 7239: Orthanc's DICOMweb plugin builds its absolute URLs
        # from it, and keeps quotes as part of the value, so host is left unquoted) and X-Forwarded-*.
        forwarded += [
            ("Host", self.upstream.netloc),
            ("Forwarded", f"for={client[0]};host={host};proto=http"),
            ("X-Forwarded-For", client[0]),
            ("X-Forwarded-Host", host),
            ("X-Forwarded-Proto", "http"),
        ]
        try:
            status, answer, body = await anyio.to_thread.run_sync(
                self.upstream.request, method, target, forwarded, b"".join(chunks)
            )
        except (OSError, http.client.HTTPException) as failure:
            return _error(502, "bad_gateway", f"the upstream {self.upstream.base} did not answer: {failure!r}")
        out = [(n, v) for n, v in answer if n.lower() not in HOP_BY_HOP and n.lower() != "content-length"]
        length = next((v for n, v in answer if n.lower() == "content-length"), None) if method == "HEAD" else None
        out.append(("Content-Length", length if length is not None else str(len(body))))
        return status, out, body

    def _static(self, method: str, raw_path: str, headers: list[tuple[str, str]]) -> Response:
        if method not in ("GET", "HEAD"):
            return _error(405, "method_not_allowed", "the viewer's files are read with GET or HEAD")
        relative = _relative(raw_path)
        if relative is None:
            return _error(404, "not_found", "no such file")
        if relative == "app-config.js":
            body = self.config
        elif relative == "index.html" or content_type(relative) is None:
            relative, body = "index.html", self.index  # a client-side route: /viewer, /local, ...
        else:
            found = _read(self.root, relative)
            if found is None:
                return _error(404, "not_found", "no such file in the viewer")
            body = found
        etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        out = [
            ("Content-Type", content_type(relative) or "application/octet-stream"),
            ("Cache-Control", cache_control(relative)),
            ("ETag", etag),
            *self.security_headers,
        ]
        asked = [tag.strip() for n, v in headers if n == "if-none-match" for tag in v.split(",")]
        if etag in asked or f"W/{etag}" in asked:
            return 304, out, b""
        return 200, [*out, ("Content-Length", str(len(body)))], body


@lru_cache(maxsize=512)
def _read(root: Path, relative: str) -> bytes | None:
    """A file of the prepared dist (immutable once prepared, so read once)."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path.read_bytes()


def _relative(raw_path: str) -> str | None:
    """The file a path names relative to the dist; "index.html" for /; None for what is never served."""
    path = unquote(raw_path)
    if path == "/":
        return "index.html"
    parts = path.removeprefix("/").split("/")
    if any(part.startswith(".") or "\\" in part or "\x00" in part for part in parts):
        return None  # dotfiles (the stamp), . and .., backslashes, NUL
    return "/".join(part for part in parts if part)


def _error(status: int, code: str, message: str) -> Response:
    body = json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()
    return status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], body


def _encode(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers]


def listen(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 lets the system choose (atomically, at bind time)."""
    return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET, backlog=128)


def uvicorn_server(app: OhifApp) -> uvicorn.Server:
    """app under uvicorn (h11, as the local gateway): run(sockets=[...]); should_exit stops it."""
    config = uvicorn.Config(
        app,
        http="h11",
        ws="none",
        lifespan="off",
        proxy_headers=False,
        server_header=False,
        access_log=False,  # ours leaves out the query string
        log_config=None,
        log_level="warning",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


def serve(app: OhifApp, sock: socket.socket) -> None:
    """Serve app on sock until interrupted."""
    try:
        uvicorn_server(app).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        app.upstream.close()
