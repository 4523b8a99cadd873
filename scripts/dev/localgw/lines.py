"""Whole lines on the gateway's stdout and stderr, whichever thread or worker process writes them.

The gateway's worker processes (LOCALGW_WORKERS) and each one's container threads share one stdout
and one stderr, often one pipe. A TextIOWrapper hands a line to the kernel in several writes when it
is longer than its buffer, and print() writes the text and its newline separately; a pipe keeps a
write whole only up to PIPE_BUF (4 KB). So lines fused: 509 of 77,816 in one run. Here each thread
collects its text until a newline, and each whole line goes out in one os.write loop under a lock
that the threads of a process (threading.Lock) and the worker processes (fcntl.lockf on a file the
first process opened before forking, released by the kernel when a holder dies) all take.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import sys
import tempfile
import threading
from typing import IO


class LineWriter(io.TextIOBase):
    """A text stream on a file descriptor that writes only whole lines, each in one locked os.write loop."""

    def __init__(self, fd: int, lock: IO[bytes], thread_lock: threading.Lock) -> None:
        super().__init__()
        self._fd = fd
        self._lock = lock
        self._thread_lock = thread_lock
        self._pending = threading.local()

    @property
    def encoding(self) -> str:
        return "utf-8"

    @property
    def errors(self) -> str:
        return "backslashreplace"

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, text: str) -> int:
        pending: str = getattr(self._pending, "text", "") + text
        end = pending.rfind("\n") + 1
        self._pending.text = pending[end:]
        if end:
            self._emit(pending[:end].encode("utf-8", "backslashreplace"))
        return len(text)

    def flush(self) -> None:
        """Nothing to do: whole lines are out already, and a partial one waits for its newline."""

    def close(self) -> None:
        rest: str = getattr(self._pending, "text", "")
        if rest:
            self._pending.text = ""
            self._emit((rest + "\n").encode("utf-8", "backslashreplace"))

    def _emit(self, data: bytes) -> None:
        with self._thread_lock:
            fcntl.lockf(self._lock, fcntl.LOCK_EX)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            finally:
                fcntl.lockf(self._lock, fcntl.LOCK_UN)


def install() -> None:
    """sys.stdout and sys.stderr become LineWriters sharing one lock (they often share one pipe too),
    and logging handlers that wrote to the old streams write to the new ones. Call before forking."""
    if isinstance(sys.stdout, LineWriter):
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    lock = tempfile.TemporaryFile()  # noqa: SIM115 - held open for the life of the process and its workers
    thread_lock = threading.Lock()
    replaced = {
        id(sys.stdout): LineWriter(sys.stdout.fileno(), lock, thread_lock),
        id(sys.stderr): LineWriter(sys.stderr.fileno(), lock, thread_lock),
    }
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    for handler in {id(h): h for log in loggers for h in log.handlers}.values():
        if isinstance(handler, logging.StreamHandler) and id(handler.stream) in replaced:
            handler.setStream(replaced[id(handler.stream)])
    sys.stdout, sys.stderr = replaced[id(sys.stdout)], replaced[id(sys.stderr)]
