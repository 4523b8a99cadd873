"""A TCP proxy in front of the database that adds network latency and counts round trips.

Loopback has no round-trip time; the network between a Lambda and RDS Proxy (and between RDS Proxy
and the database) does. Each chunk the proxy reads is forwarded `delay_seconds` after it was read,
in order, by a writer thread per direction: a link with that one-way latency and no bandwidth
limit, so a burst of many chunks costs the delay once, not once per chunk or per byte.

A round trip, as counted here, is a client->server burst followed by a server->client one: each
change of direction from "client sending" to "server answering" counts one. It is what the client
waits for, whatever the bytes are (TLS records too). The TCP handshake (SYN, SYN-ACK) completes in
the proxy's kernel and is neither delayed nor counted: a new connection costs one round trip more
than the figures say.

With `idle_close_seconds`, it closes a connection whose client sent nothing for that long, as RDS
Proxy does past its IdleClientTimeout.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

from shared.core.config import DatabaseParams

_CLIENT_TO_SERVER, _SERVER_TO_CLIENT = 0, 1


@dataclass(frozen=True)
class Counts:
    """What went through the proxy so far (or between two snapshots, by subtraction)."""

    connections: int
    round_trips: int

    def __sub__(self, other: Counts) -> Counts:
        return Counts(self.connections - other.connections, self.round_trips - other.round_trips)


class _Link:
    """One client connection and its server connection."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client, self.server = client, server
        self.last_direction: int | None = None
        self.last_client_activity = time.monotonic()
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class DelayProxy:
    """A latency-adding, round-trip-counting TCP proxy to `upstream` (TCP or unix socket)."""

    def __init__(
        self, upstream: DatabaseParams, *, delay_seconds: float = 0.001, idle_close_seconds: float | None = None
    ) -> None:
        self.upstream = upstream
        self.delay = delay_seconds
        self.idle_close_seconds = idle_close_seconds
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port: int = self.listener.getsockname()[1]
        self.connections = 0
        self.round_trips = 0
        self.idle_closed = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._links: list[_Link] = []
        self._threads = [threading.Thread(target=self._accept, name="delayproxy-accept", daemon=True)]
        self._threads[0].start()

    def __enter__(self) -> DelayProxy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def url(self) -> str:
        """A DATABASE_URL that reaches the upstream database through this proxy, with its TLS settings."""
        up = self.upstream
        who = quote(up.user) + (f":{quote(up.password)}" if up.password else "")
        query = f"sslmode={up.sslmode}"
        if up.sslrootcert:
            query += f"&sslrootcert={quote(up.sslrootcert)}"
        return f"postgresql://{who}@127.0.0.1:{self.port}/{quote(up.database)}?{query}"

    def counts(self) -> Counts:
        with self._lock:
            return Counts(self.connections, self.round_trips)

    def close(self) -> None:
        self._stopping.set()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()
        self.listener.close()
        for thread in self._threads:
            thread.join(5)

    def _connect_upstream(self) -> socket.socket:
        if self.upstream.unix_sock:
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.upstream.unix_sock)
            return server
        server = socket.create_connection((self.upstream.host or "localhost", self.upstream.port))
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return server

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                server = self._connect_upstream()
            except OSError:
                client.close()
                continue
            link = _Link(client, server)
            with self._lock:
                self.connections += 1
                self._links.append(link)
            for direction, source, target in (
                (_CLIENT_TO_SERVER, client, server),
                (_SERVER_TO_CLIENT, server, client),
            ):
                pending: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
                for target_fn, args in (
                    (self._read, (link, direction, source, pending)),
                    (self._write, (link, target, pending)),
                ):
                    thread = threading.Thread(target=target_fn, args=args, daemon=True)
                    self._threads.append(thread)
                    thread.start()

    def _read(
        self, link: _Link, direction: int, source: socket.socket, pending: queue.Queue[tuple[float, bytes] | None]
    ) -> None:
        source.settimeout(0.05)
        try:
            while not link.closed.is_set():
                try:
                    data = source.recv(262144)
                except TimeoutError:
                    if (
                        direction == _CLIENT_TO_SERVER
                        and self.idle_close_seconds is not None
                        and time.monotonic() - link.last_client_activity > self.idle_close_seconds
                    ):
                        with self._lock:
                            self.idle_closed += 1
                        link.close()
                        return
                    continue
                except OSError:
                    return
                if not data:
                    return
                now = time.monotonic()
                with self._lock:
                    if direction == _SERVER_TO_CLIENT and link.last_direction == _CLIENT_TO_SERVER:
                        self.round_trips += 1
                    link.last_direction = direction
                if direction == _CLIENT_TO_SERVER:
                    link.last_client_activity = now
                pending.put((now + self.delay, data))
        finally:
            pending.put(None)

    def _write(self, link: _Link, target: socket.socket, pending: queue.Queue[tuple[float, bytes] | None]) -> None:
        while True:
            item = pending.get()
            if item is None:
                break
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                target.sendall(data)
            except OSError:
                break
        link.close()


class ProxyProcess:
    """A DelayProxy in a process of its own, so that its threads never compete for the GIL with the
    requests measured through it (in process, the proxy's threads stretched a 512x512 upload's p50
    by ~20 ms where 4 round trips account for 8). Same url() and counts()."""

    def __init__(self, upstream: DatabaseParams, *, delay_seconds: float = 0.001) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.upstream = upstream
        self._parent, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(upstream, delay_seconds, child), daemon=True)
        self._process.start()
        self.port: int = self._parent.recv()

    def url(self) -> str:
        return DelayProxy.url(self)  # type: ignore[arg-type]  # needs only upstream and port

    def counts(self) -> Counts:
        self._parent.send("counts")
        counts: Counts = self._parent.recv()
        return counts

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self._parent.send("close")
            self._parent.recv()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def _serve(upstream: DatabaseParams, delay_seconds: float, pipe: Any) -> None:
    with DelayProxy(upstream, delay_seconds=delay_seconds) as proxy:
        pipe.send(proxy.port)
        while True:
            try:
                command = pipe.recv()
            except EOFError:
                return
            if command == "counts":
                pipe.send(proxy.counts())
            else:
                break
    pipe.send("closed")
