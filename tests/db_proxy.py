"""A TCP proxy between the functions and the test database (or any TCP server: to_address) that can
freeze, or lose one reply.

Frozen, it stops moving bytes with every socket left open: to a client that is exactly a server
stopped with SIGSTOP, or a dead network. Connects complete in the kernel's backlog, sends fill
buffers, and nothing comes back.

Armed with lose_reply_to(marker), it lets the next client message holding `marker` (a bit of SQL,
say b"COMMIT") reach the server and reads the server's answers message by message from there: the
first CommandComplete (the statement ran; an implicit transaction, or a COMMIT, has committed) and
everything after it up to its ReadyForQuery are held back, and then both sockets close. The server
did the work and committed; the client never hears so and sees a network error, as when a
connection drops right after COMMIT is sent. (pg8000 sends a statement without parameters in three
round trips, Parse, Describe, then Bind and Execute: the answers before the CommandComplete pass.)
"""

from __future__ import annotations

import socket
import threading
from urllib.parse import quote

from shared.core.config import DatabaseParams

COMMAND_COMPLETE, READY_FOR_QUERY = ord("C"), ord("Z")


class FreezableProxy:
    """A TCP proxy to the test database that can be frozen and thawed, or lose one reply."""

    def __init__(self, upstream: DatabaseParams) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port: int = self.listener.getsockname()[1]
        self._thawed = threading.Event()
        self._thawed.set()
        self._stopping = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._marker: bytes | None = None
        self._after: bytes | None = None  # what a client must send before `_marker` counts
        self._losing: socket.socket | None = None  # the server socket whose answer is being held back
        self.replies_lost = 0
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @classmethod
    def to_address(cls, host: str, port: int) -> FreezableProxy:
        """The same proxy in front of any TCP server (moto's S3, say) instead of the database."""
        return cls(DatabaseParams(user="", database="", host=host, port=port))

    def url(self) -> str:
        """A DATABASE_URL that reaches the test database through this proxy."""
        who = quote(self.upstream.user) + (f":{quote(self.upstream.password)}" if self.upstream.password else "")
        url = f"postgresql://{who}@127.0.0.1:{self.port}/{self.upstream.database}?sslmode={self.upstream.sslmode}"
        if self.upstream.sslrootcert:  # the bench's own certificate authority (scripts/bench/tlspg.py)
            url += f"&sslrootcert={quote(self.upstream.sslrootcert)}"
        return url

    def freeze(self) -> None:
        self._thawed.clear()

    def thaw(self) -> None:
        self._thawed.set()

    def lose_reply_to(self, marker: bytes, *, after: bytes | None = None) -> None:
        """Drop the connection that next sends `marker` (once a client has sent `after`, if given),
        once the server has answered it in full."""
        with self._lock:
            self._marker, self._after = marker, after

    def close(self) -> None:
        self._stopping.set()
        self._thawed.set()
        for thread in self._threads:
            thread.join(5)
        for sock in [self.listener, *self._sockets]:
            sock.close()

    def _wait_until_thawed(self) -> bool:
        while not self._thawed.wait(0.05):
            pass
        return not self._stopping.is_set()

    def _accept(self) -> None:
        while self._wait_until_thawed():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            # Accepted just as it froze: hold the connection until it thaws.
            if not self._wait_until_thawed():
                client.close()
                return
            if self.upstream.unix_sock:
                server = socket.socket(socket.AF_UNIX)
                server.connect(self.upstream.unix_sock)
            else:
                server = socket.create_connection((self.upstream.host or "localhost", self.upstream.port))
            self._sockets += [client, server]
            for source, target, upstream in ((client, server, server), (server, client, server)):
                pump = threading.Thread(target=self._pump, args=(source, target, upstream), daemon=True)
                self._threads.append(pump)
                pump.start()

    def _pump(self, source: socket.socket, target: socket.socket, upstream: socket.socket) -> None:
        source.settimeout(0.05)
        pending, completed = b"", False  # the server's answer being read message by message
        while self._wait_until_thawed():
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            # Read just as it froze: hold the bytes until it thaws.
            if not data or not self._wait_until_thawed():
                break
            with self._lock:
                if source is not upstream and self._after is not None and self._after in data:
                    self._after = None
                elif (
                    source is not upstream and self._after is None and self._marker is not None and self._marker in data
                ):
                    # The client's message: mark its server connection before the server can answer.
                    # The server's answer to it starts at a message boundary: pg8000 sends only once
                    # it has read the answer before, up to its ReadyForQuery.
                    self._marker, self._losing = None, upstream
                losing = source is upstream and self._losing is upstream
            if losing:
                pending += data
                data, lost = b"", False
                while len(pending) >= 5:
                    end = 1 + int.from_bytes(pending[1:5], "big")
                    if len(pending) < end:
                        break
                    kind, message, pending = pending[0], pending[:end], pending[end:]
                    completed = completed or kind == COMMAND_COMPLETE
                    if not completed:
                        data += message
                    elif kind == READY_FOR_QUERY:
                        lost = True
                        break
                if lost:
                    with self._lock:
                        self._losing = None
                        self.replies_lost += 1
                    break
            try:
                if data:
                    target.sendall(data)
            except OSError:
                break
        for sock in (source, target):
            sock.close()
