"""Throughput clients: a queue of work taken in order by threads, each with a connection of its own.
Standard library only: the bench's client processes import it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

C = TypeVar("C")
T = TypeVar("T")


def drain(
    items: Iterable[T],
    connections: Iterable[Callable[[], C]],
    handle: Callable[[C, T], None],
    close: Callable[[C], None],
    *,
    name: str,
) -> float:
    """Hand out `items` in order to one thread per opener in `connections`: each opens its connection
    (in its thread, before the start), then takes the next item and `handle`s it until none is left,
    and closes. Seconds from the start, when every thread is connected, to the last answer;
    RuntimeError naming `name` with the first failure."""
    queue = iter(items)
    lock = threading.Lock()
    failures: list[BaseException] = []
    openers = list(connections)
    ready = threading.Barrier(len(openers) + 1)

    def work(opener: Callable[[], C]) -> None:
        try:
            connection = opener()
        except BaseException as exc:  # no start for anyone: the others stop at the barrier
            failures.append(exc)
            ready.abort()
            return
        try:
            ready.wait()
            while True:
                with lock:
                    item = next(queue, None)
                if item is None:
                    break
                handle(connection, item)
        except threading.BrokenBarrierError:
            pass  # another thread could not connect: its failure is reported
        except BaseException as exc:  # reported by the calling thread
            failures.append(exc)
        finally:
            close(connection)

    threads = [threading.Thread(target=work, args=(opener,)) for opener in openers]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a thread could not connect: reported below
        ready.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{name}: {failures[0]!r}")
    return elapsed
