"""Ops-invoked and scheduled function (no HTTP route): the nightly cleanup job; returns its report.

PostgreSQL purges, then (with IMAGES_BUCKET) S3 objects of deleted scans and of presigned uploads
never completed, then VACUUM: see shared.jobs.cleanup. It stops 60 s before the Lambda's time limit.

npx osls invoke -f cleanup --stage prod      # run it now; prints the report (shared.jobs.cleanup)
"""

from __future__ import annotations

import logging
import time
from typing import Any

from shared.core.config import get_settings
from shared.core.observability import configure_logging
from shared.jobs import cleanup

configure_logging()  # JSON lines through Powertools, as the HTTP functions log
log = logging.getLogger(__name__)


def handler(event: dict[str, Any] | None, context: Any) -> dict[str, Any]:
    """Lambda entry point (the EventBridge schedule's event is ignored): clean up and report."""
    remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
    deadline = None if remaining_ms is None else time.monotonic() + remaining_ms() / 1000
    report = cleanup.run_cleanup(get_settings(), deadline=deadline)
    # Counts only: no S3 key (owner id and hash) reaches the log.
    log.info(
        "cleanup %s removed=%s reclaimed=%d s3=%s took_ms=%d",
        report["status"],
        report["removed"],
        report["bytesReclaimed"],
        report["s3"],
        report["tookMs"],
    )
    return report
