"""The time a job has left before its Lambda's end: the cleanup and tiering jobs stop starting work
some seconds before it, so that their report always gets out."""

from __future__ import annotations

import time


class Deadline:
    """A monotonic deadline (None: a local run without one) and how long before it a job stops."""

    def __init__(self, deadline: float | None, *, stop_before: float) -> None:
        self.deadline = deadline
        self.stop_before = stop_before

    def left(self) -> float | None:
        """Seconds left, or None without a deadline."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def stopping(self) -> bool:
        """Whether it is time to start nothing more."""
        left = self.left()
        return left is not None and left < self.stop_before
