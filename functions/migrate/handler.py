"""Ops-invoked function (no HTTP route): apply pending migrations, then give DICOMweb the DICOM scans
stored before migration 010 (shared.jobs.dicomweb_backfill) until its time runs out; return the report.

    npx osls invoke -f migrate --stage prod                                # migrations, then the backfill
    npx osls invoke -f migrate --stage prod --data '{"backfill": false}'   # migrations only

The backfill starts no scan 60 s before the Lambda's time limit; invoke again until the report's
"dicomweb_backfill" says "done": true (each run picks up what is left).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from shared import db
from shared.core.config import get_settings
from shared.core.observability import configure_logging
from shared.db.migrations import run_migrations
from shared.jobs.dicomweb_backfill import run_backfill

configure_logging()  # JSON lines through Powertools, as the HTTP functions log
log = logging.getLogger(__name__)


def handler(event: dict[str, Any] | None, context: Any) -> dict[str, Any]:
    """Lambda entry point: {"backfill"?: true | false} (default true); the migrations' report, with the
    backfill's under "dicomweb_backfill" (null when it was not run)."""
    backfill = event.get("backfill", True) if isinstance(event, dict) else True
    if not isinstance(backfill, bool):
        # Refused before anything runs: a typo must not silently skip (or run) the backfill.
        return {"status": "error", "error": 'backfill: true or false (default true); send {"backfill": false}'}
    settings = get_settings()
    # A fresh connection with a generous timeout: DDL may wait on locks held by live traffic.
    con = db.connect(settings.database, timeout=max(settings.db_timeout_seconds, 60.0))
    try:
        report = run_migrations(con)
        report["dicomweb_backfill"] = run_backfill(con, deadline=_deadline(context)) if backfill else None
    finally:
        con.close()
    log.info("migrations applied=%s already=%s", report["applied"], report["alreadyApplied"])
    if backfill:
        summary = report["dicomweb_backfill"]
        # Counts only: no scan id, UID or patient data reaches the log (the report names the scans).
        log.info(
            "dicomweb backfill described=%d remaining=%d conflicts=%d failed=%d done=%s seconds=%.1f",
            summary["described"],
            summary["remaining"],
            summary["conflictCount"],
            summary["failedCount"],
            summary["done"],
            summary["seconds"],
        )
    return report


def _deadline(context: Any) -> float | None:
    """time.monotonic() at the Lambda's time limit; None without a context (make migrate, tests)."""
    remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
    return None if remaining_ms is None else time.monotonic() + remaining_ms() / 1000
