"""Ops-invoked function: apply pending migrations and return the report (no HTTP route)."""

from __future__ import annotations

import logging
from typing import Any

from shared import db
from shared.core.config import get_settings
from shared.core.observability import configure_logging
from shared.db.migrations import run_migrations

configure_logging()  # JSON lines through Powertools, as the HTTP functions log
log = logging.getLogger(__name__)


def handler(event: dict[str, Any] | None, context: Any) -> dict[str, Any]:
    """Lambda entry point: run the migrations on a connection of its own and report."""
    settings = get_settings()
    # A fresh connection with a generous timeout: DDL may wait on locks held by live traffic.
    con = db.connect(settings.database, timeout=max(settings.db_timeout_seconds, 60.0))
    try:
        report = run_migrations(con)
    finally:
        con.close()
    log.info("migrations applied=%s already=%s", report["applied"], report["alreadyApplied"])
    return report
