"""Ops-invoked function (no HTTP route): move existing images between PostgreSQL and S3; returns
the report of shared.jobs.tiering.

    npx osls invoke -f tiering --stage prod --data '{"direction": "to-s3", "olderThan": "30d"}'
    npx osls invoke -f tiering --stage prod --data '{"direction": "to-s3", "minBytes": 1000000, "limit": 500}'
    npx osls invoke -f tiering --stage prod --data '{"direction": "to-postgres"}'

It starts no new image 60 s before the Lambda's time limit and then reports "partial" with what is
"remaining": invoke it again until "done" (each run picks up where the last stopped).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from shared.core.config import get_settings
from shared.core.observability import configure_logging
from shared.jobs import tiering

configure_logging()  # JSON lines through Powertools, as the HTTP functions log
log = logging.getLogger(__name__)


def handler(event: dict[str, Any] | None, context: Any) -> dict[str, Any]:
    """Lambda entry point: {"direction": "to-s3" | "to-postgres", "olderThan"?, "minBytes"?, "limit"?}."""
    remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
    deadline = None if remaining_ms is None else time.monotonic() + remaining_ms() / 1000
    try:
        request = tiering.MoveRequest.from_event(event)
        report = tiering.run(get_settings(), request, deadline=deadline)
    except tiering.BadMoveRequest as exc:
        log.warning("tiering refused: %s", exc)
        return {"status": "error", "error": str(exc)}
    # Counts only: no S3 key (owner id and hash) reaches the log.
    log.info(
        "tiering %s %s moved=%d bytes=%d skipped=%d kept=%d remaining=%d seconds=%.1f",
        report["direction"],
        report["status"],
        report["moved"],
        report["bytesMoved"],
        report["skipped"]["count"],
        report["kept"]["count"],
        report["remaining"],
        report["seconds"],
    )
    return report
