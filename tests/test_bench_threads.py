"""The bench's throughput clients (scripts/bench/threads.py): every item handled once, connections
opened in their threads and closed, and a failure reported, never a hang."""

from __future__ import annotations

import threading

import pytest

from scripts.bench import threads


def test_every_item_is_handled_once_and_every_connection_closed() -> None:
    handled: list[tuple[int, int]] = []
    opened: list[str] = []
    closed: list[int] = []
    lock = threading.Lock()

    def opener(number: int) -> int:
        opened.append(threading.current_thread().name)
        return number

    def handle(connection: int, item: int) -> None:
        with lock:
            handled.append((connection, item))

    seconds = threads.drain(range(100), [lambda n=n: opener(n) for n in range(4)], handle, closed.append, name="server")
    assert sorted(item for _, item in handled) == list(range(100))
    assert sorted(closed) == [0, 1, 2, 3] and len(set(opened)) == 4  # one thread each
    assert threading.current_thread().name not in opened
    assert seconds >= 0


def test_a_failure_names_the_server_and_stops_the_run() -> None:
    def handle(connection: int, item: int) -> None:
        if item == 7:
            raise ValueError("refused")

    with pytest.raises(RuntimeError, match=r"orthanc: ValueError\('refused'\)"):
        threads.drain(range(20), [lambda: 1, lambda: 2], handle, lambda connection: None, name="orthanc")


def test_a_connection_that_cannot_open_is_reported_not_a_hang() -> None:
    closed: list[int] = []

    def broken() -> int:
        raise ConnectionRefusedError("no server")

    with pytest.raises(RuntimeError, match="ours: ConnectionRefusedError"):
        threads.drain(range(5), [lambda: 1, broken, lambda: 3], lambda c, i: None, closed.append, name="ours")
    assert sorted(closed) == [1, 3]  # the ones that opened are closed
