"""The database time one invocation may spend: every wait (connect, each statement, a reconnect) comes
out of one budget, so that a database that stops answering costs a 503, never Lambda's timeout."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import time
from collections.abc import Iterator

from shared.core.config import get_settings
from shared.core.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

# What an invocation keeps back from the time Lambda gives it, to answer once the database has had
# the rest. Turning DatabaseUnavailable into the JSON 503 takes milliseconds; the margin covers what
# can stall it (a GC pause, a slow log write, the socket timeout firing late). That work does not
# grow with the function's timeout, so the margin is a fixed time rather than a share of it.
ANSWER_MARGIN_SECONDS = 0.5


class Budget:
    """The database time one invocation has left: DB_TIMEOUT_SECONDS of waiting, all before `deadline`."""

    __slots__ = ("deadline", "seconds_left")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.seconds_left: float | None = None  # read from the settings at the first wait

    def timeout(self) -> float:
        """The socket timeout for the next wait: all that is left; DatabaseUnavailable when nothing is."""
        if self.seconds_left is None:
            self.seconds_left = get_settings().db_timeout_seconds
        left = min(self.seconds_left, self.deadline - time.monotonic())
        if left <= 0:
            log.warning("the invocation's database time is spent: answering 503")
            raise DatabaseUnavailable("The database is unavailable; try again shortly.")
        return left

    def spend(self, started: float) -> None:
        """Charge the wait that began at `started` (time.monotonic())."""
        if self.seconds_left is not None:
            self.seconds_left -= time.monotonic() - started


# A contextvar, not a thread-local: Mangum runs the app in a task on the invoking thread, and
# Starlette runs sync code in a thread pool; both copy the context, so both see the budget.
_budget: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("database_budget", default=None)


@contextlib.contextmanager
def invocation_budget(remaining_ms: int | None) -> Iterator[None]:
    """Bound every database wait of one invocation (connect, each statement, the reconnect) together.

    In all they wait at most DB_TIMEOUT_SECONDS, and none goes on past the invocation's end less
    ANSWER_MARGIN_SECONDS: a database that stops answering costs a 503 with Retry-After, never the
    platform's timeout error. `remaining_ms` is the Lambda context's get_remaining_time_in_millis()
    (None: no end known). Outside this block, every wait gets DB_TIMEOUT_SECONDS, as scripts want.
    """
    deadline = math.inf if remaining_ms is None else time.monotonic() + remaining_ms / 1000 - ANSWER_MARGIN_SECONDS
    token = _budget.set(Budget(deadline))
    try:
        yield
    finally:
        _budget.reset(token)


def current_budget() -> Budget | None:
    """The budget of the invocation this code runs in; None outside one (scripts, jobs)."""
    return _budget.get()
